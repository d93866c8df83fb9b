"""The figures of docs/results/gpu_h200.md, from the raw output of the H200 suite committed under
docs/results/gpu_h200/ (call1/, call2/). Reads nothing else and measures nothing: it prints
markdown tables of what those files recorded and of the ratios between them, each headed by the
files it read.

    python scripts/gpu_h200_figures.py machines   # the two calls: GPU, torch, data builds, tests
    python scripts/gpu_h200_figures.py single     # one run through `train`, eager vs captured
    python scripts/gpu_h200_figures.py profile    # what bounds the step (profile_step.py)
    python scripts/gpu_h200_figures.py packed     # K runs at once against one run
    python scripts/gpu_h200_figures.py goals      # the goals of issue 13 against the above
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RAW = Path("docs/results/gpu_h200")
CALLS = ("call1", "call2")
NAMES = {
    "cifar10c": "C-CIFAR10",
    "cmnist": "CMNIST",
    "disent": "DisEnt",
    "lff": "LfF",
    "vanilla": "Vanilla",
}
# settings, not measurements: issue 13's goals, and the 36-run table of Table 1 (Vanilla, LfF,
# DisEnt x 4 ratios x 3 seeds, each preset `num_steps=50_000`)
TABLE_RUNS, TABLE_STEPS = 36, 50_000
GOAL_STEPS_PER_S, GOAL_PACKED, GOAL_TIMES_PAPER, GOAL_CMNIST_MIN = 500, 2000, 10, 5


class Reader:
    """Reads raw files under RAW and remembers which, for the 'Read:' line."""

    def __init__(self) -> None:
        self.read: list[str] = []

    def text(self, call: str, name: str) -> str:
        path = RAW / call / name
        self.read.append(f"`{path}`")
        return (ROOT / path).read_text()

    def json(self, call: str, name: str) -> dict:
        return json.loads(self.text(call, name))

    def header(self) -> str:
        return "Read: " + ", ".join(dict.fromkeys(self.read)) + ".\n\n"


def one(pattern: str, text: str) -> re.Match:
    m = re.search(pattern, text, re.M)
    if m is None:
        raise SystemExit(f"no line matching {pattern!r}")
    return m


def speeds(r: Reader) -> dict:
    """Steps/s of one run by (dataset, method, mode) -> (rate, steps, call), and the packed rates
    by (dataset, K) -> (run-steps/s, with start-up, call). Call 1's captured DisEnt and LfF runs
    failed (no entry); call 2 ran captured modes only."""
    single, packed, reference = {}, {}, None
    for call in CALLS:
        s = r.json(call, "speed.json")
        for e in s.get("single", []):
            key = (e["dataset"], e["method"], e["mode"])
            if key in single:  # never pick one of two measurements silently
                raise SystemExit(f"{key} is in both calls' speed.json")
            single[key] = (e["steps_per_second"], e["steps"], call)
        for e in s.get("packed", []):
            packed[(e["dataset"], e["k"])] = (e["run_steps_per_second"], e["incl_startup"], call)
        if "reference" in s:
            reference = (s["reference"], call)
    return {"single": single, "packed": packed, "reference": reference}


def profiles(r: Reader) -> list[tuple[str, str, float, float, float]]:
    """(call, step, median wall ms, mean kernel ms, kernels per step) per line of profile.log."""
    line = (
        r"^\s+(eager|captured)\s+wall\s+([\d.]+) ms\s+kernels\s+([\d.]+) ms\s+([\d.]+) kernels/step"
    )
    rows = []
    for call in ("call2", "call1"):
        for m in re.finditer(line, r.text(call, "profile.log"), re.M):
            rows.append((call, m[1], float(m[2]), float(m[3]), float(m[4])))
    return rows


def machines() -> str:
    r = Reader()
    out = [
        "| call | GPU (`nvidia-smi -L`) | torch, torchvision, device | C-CIFAR10 built "
        "(0.5pct, 5pct) | CMNIST built (0.5pct) | CUDA tests | suite done at |",
        "|---|---|---|---|---|---|---|",
    ]
    uuids = []
    for call in CALLS:
        suite = r.text(call, "suite.log")
        gpu = one(r"^GPU 0: (.+) \(UUID: (.+)\)$", suite)
        uuids.append(gpu[2])
        torch = one(r"^torch (\S+) torchvision (\S+) (.+) (\d+) SMs$", suite)
        built = [
            one(r"written to \S+ in ([\d.]+ s)", r.text(call, f"build_{d}.log"))[1]
            for d in ("cifar10c", "cmnist")
        ]
        tests = one(r"^(\d+ failed, \d+ passed|\d+ passed).*$", r.text(call, "cuda_tests.log"))[0]
        done = one(r"^suite done at \+(\d+) s$", suite)[1]
        out.append(
            f"| {call} | {gpu[1]}, {gpu[2]} | torch {torch[1]}, torchvision {torch[2]}, {torch[3]},"
            f" {torch[4]} SMs | {built[0]} | {built[1]} | {tests} | +{done} s |"
        )
    same = "the same GPU" if uuids[0] == uuids[1] else "two different GPUs (their UUIDs differ)"
    return r.header() + "\n".join(out) + f"\n\nThe two calls ran on {same}.\n"


def single() -> str:
    r = Reader()
    sp = speeds(r)
    s = sp["single"]
    out = [
        "| run | eager (`--no-compile --no-cuda_graph`) | CUDA graph (default on CUDA) "
        "| graph / eager |",
        "|---|---|---|---|",
    ]
    for dataset, method in (
        ("cifar10c", "disent"),
        ("cifar10c", "lff"),
        ("cifar10c", "vanilla"),
        ("cmnist", "disent"),
    ):
        eager, graph = s[(dataset, method, "eager")], s[(dataset, method, "graph")]
        out.append(
            f"| {NAMES[method]}, {NAMES[dataset]}{' (MLP)' if dataset == 'cmnist' else ''} "
            f"| {eager[0]} steps/s ({eager[1]} steps, {eager[2]}) "
            f"| {graph[0]} steps/s ({graph[1]} steps, {graph[2]}) "
            f"| {graph[0] / eager[0]:.2f}x |"
        )
    ref, call = sp["reference"]
    out.append(
        f"| the paper's own code, DisEnt C-CIFAR10 | {ref['steps_per_second']} steps/s "
        f"(steps 100 to 400: walls {ref['wall_100']} s and {ref['wall_400']} s, {call}) | | |"
    )
    rate = ref["steps_per_second"]
    eager, graph = s[("cifar10c", "disent", "eager")][0], s[("cifar10c", "disent", "graph")][0]
    return (
        r.header()
        + "\n".join(out)
        + f"\n\nThe paper's code ran `{ref['command']}`.\n\n"
        + f"DisEnt C-CIFAR10 through `train` over the paper's code: eager {eager / rate:.2f}x"
        + f" ({eager} / {rate}), captured {graph / rate:.2f}x ({graph} / {rate}).\n"
    )


def profile() -> str:
    r = Reader()
    out = [
        "| call | step | wall per step (median) | kernel time per step (mean) | kernels per step "
        "| kernel time / wall | wall - kernel time | 1000 / wall |",
        "|---|---|---|---|---|---|---|---|",
    ]
    rows = profiles(r)
    for call, step, wall, kernels, count in rows:
        out.append(
            f"| {call} | {step} | {wall:.2f} ms | {kernels:.2f} ms | {count:.1f} "
            f"| {100 * kernels / wall:.1f}% | {wall - kernels:.2f} ms | {1000 / wall:.1f} steps/s |"
        )
    missing = [c for c in CALLS if c not in {row[0] for row in rows if row[1] == "captured"}]
    failed = [c for c in missing if "Traceback" in r.text(c, "profile.log")]
    note = "".join(
        f"\n{c}: no captured line; its profile.log ends in a traceback.\n" for c in failed
    )
    return r.header() + "\n".join(out) + "\n" + note


def packed() -> str:
    r = Reader()
    sp = speeds(r)
    out = [
        "| dataset | runs at once | run-steps/s | counting start-up | per run | over one run |",
        "|---|---|---|---|---|---|",
    ]
    for (dataset, k), (rate, startup, call) in sorted(sp["packed"].items()):
        alone, _, alone_call = sp["single"][(dataset, "disent", "graph")]
        out.append(f"| DisEnt {NAMES[dataset]} | 1 ({alone_call}) | {alone} | | {alone} | |")
        out.append(
            f"| DisEnt {NAMES[dataset]} | {k} ({call}) | {rate} | {startup} | {rate / k:.1f} "
            f"| {rate / alone:.2f}x |"
        )
    measured = ", ".join(f"K = {k} ({NAMES[d]})" for d, k in sorted(sp["packed"]))
    return r.header() + "\n".join(out) + f"\n\nPacked runs measured: {measured}; no other K.\n"


def goals() -> str:
    r = Reader()
    sp = speeds(r)
    s, p = sp["single"], sp["packed"]
    one_run = s[("cifar10c", "disent", "graph")][0]
    step_alone = next(1000 / w for call, step, w, _, _ in profiles(r) if step == "captured")
    c_rate, c_startup, _ = p[("cifar10c", 4)]
    paper = one_run / sp["reference"][0]["steps_per_second"]
    m_rate, m_startup, _ = p[("cmnist", 8)]
    run_steps = TABLE_RUNS * TABLE_STEPS
    minutes, minutes_startup = run_steps / m_rate / 60, run_steps / m_startup / 60

    def met(ok: bool) -> str:
        return "yes" if ok else "no"

    out = [
        "| goal (issue 13) | measured | met |",
        "|---|---|---|",
        f"| DisEnt C-CIFAR10, one run, >= {GOAL_STEPS_PER_S} steps/s | {one_run} through `train`; "
        f"{step_alone:.1f} for `Method.update` alone (1000 / median wall) "
        f"| {met(one_run >= GOAL_STEPS_PER_S)} |",
        f"| DisEnt C-CIFAR10 packed, >= {GOAL_PACKED:,} run-steps/s | {c_rate} (K = 4; {c_startup} "
        f"counting start-up); {TABLE_RUNS} runs x {TABLE_STEPS:,} steps at {c_rate}/s: "
        f"{TABLE_RUNS * TABLE_STEPS / c_rate / 60:.1f} min | {met(c_rate >= GOAL_PACKED)} |",
        f"| >= {GOAL_TIMES_PAPER}x the paper's code | {paper:.2f}x through `train` "
        f"| {met(paper >= GOAL_TIMES_PAPER)} |",
        f"| CMNIST, the {TABLE_RUNS}-run table in < {GOAL_CMNIST_MIN} min | {TABLE_RUNS} runs x "
        f"{TABLE_STEPS:,} steps at {m_rate}/s (K = 8): {minutes:.1f} min; {minutes_startup:.1f} min "
        f"at {m_startup}/s counting start-up | {met(minutes < GOAL_CMNIST_MIN)} |",
    ]
    note = (
        "\n\nThe table times assume every run of the table goes at packed DisEnt's rate "
        "(Vanilla and LfF were not measured packed).\n"
    )
    return r.header() + "\n".join(out) + note


SECTIONS = {
    "machines": machines,
    "single": single,
    "profile": profile,
    "packed": packed,
    "goals": goals,
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("section", choices=SECTIONS)
    print(SECTIONS[p.parse_args().section](), end="")


if __name__ == "__main__":
    main()
