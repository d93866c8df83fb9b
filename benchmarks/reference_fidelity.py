"""Fidelity check: the paper's own code against debiaslab on the same Colored MNIST build.

``run`` trains the paper's code (a clone of kakaoenterprise/Learning-Debiased-Disentangled, which
is never copied into this project) with its DisEnt CMNIST command, unchanged but for what a CPU
needs: its two hard-coded ``.cuda()`` calls (util.py, the EMA) become device-agnostic in a
temporary copy, and ``wandb`` is replaced by a stand-in that writes its ``wandb.log`` calls to a
JSON-lines file, the only place that code reports its test accuracy. Python, numpy and torch are
seeded before its train.py starts (it sets no seed itself); it runs on one thread.

``compare`` prints, for each seed of each side, the test accuracy at the last evaluation, the
mean over the last 20 evaluations and the best (the paper's oracle: it read test labels, ◊, and
bias labels too, †, where it maximises the group-balanced accuracy), then mean ± std. The paper's
code reports plain test accuracy, so debiaslab's plain test accuracy is compared with it
(debiaslab's tables report the group-balanced ``unbiased`` accuracy, also printed). The paper's
code evaluates before each step 0, 500, ..., 49,500; debiaslab after steps 500, ..., 50,000.
With ``--window STEPS`` it also prints the mean test accuracy over each window of STEPS steps
(the evaluations after more than k * STEPS and at most (k + 1) * STEPS steps), per seed.

    python benchmarks/reference_fidelity.py run --reference ../Learning-Debiased-Disentangled \\
        --data_dir dataset --seeds 1 2 --out ref_runs
    python benchmarks/reference_fidelity.py compare --reference_logs ref_runs \\
        --ours docs/results/cmnist_runs --method disent --percent 0.5pct --window 10000
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

WANDB_STANDIN = """import json, os, types
run = types.SimpleNamespace(name=None)
def init(**kwargs):
    return run
def log(values, step=None):
    with open(os.environ["WANDB_STUB_LOG"], "a") as f:
        f.write(json.dumps({"step": step, **{k: float(v) for k, v in values.items()}}) + "\\n")
"""
SEEDED_LAUNCHER = """import os, random, runpy, sys
import numpy as np, torch
seed = int(os.environ["REF_SEED"])
random.seed(seed); np.random.seed(seed); torch.manual_seed(seed); torch.set_num_threads(1)
sys.path.insert(0, os.getcwd())
sys.argv = ["train.py"] + sys.argv[1:]
runpy.run_path("train.py", run_name="__main__")
"""
# The paper's DisEnt commands (its scripts/run_cmnist_ours.sh), minus --tensorboard / --wandb.
DISENT_CMNIST = [
    "--dataset",
    "cmnist",
    "--lr=0.01",
    "--curr_step=10000",
    "--lambda_swap=1",
    "--lambda_dis_align=10",
    "--lambda_swap_align=10",
    "--use_lr_decay",
    "--lr_decay_step=10000",
    "--lr_gamma=0.5",
    "--train_ours",
]
CUDA_CALLS = {
    "self.label = label.cuda()": "self.label = label",
    "self.max = torch.zeros(self.num_classes).cuda()": "self.max = torch.zeros(self.num_classes, device=label.device)",
}


def prepared_copy(reference: Path, into: Path) -> Path:
    """A copy of the paper's code with device-agnostic EMA tensors and the wandb stand-in beside it."""
    code = into / "code"
    shutil.copytree(reference, code, ignore=shutil.ignore_patterns(".git"))
    util = code / "util.py"
    text = util.read_text()
    for old, new in CUDA_CALLS.items():
        if old not in text:
            sys.exit(f"{util} has no '{old}': not the expected version of the paper's code")
        text = text.replace(old, new)
    util.write_text(text)
    (into / "stub" / "wandb").mkdir(parents=True)
    (into / "stub" / "wandb" / "__init__.py").write_text(WANDB_STANDIN)
    (into / "stub" / "seeded_train.py").write_text(SEEDED_LAUNCHER)
    return code


def run(args) -> None:
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        code = prepared_copy(Path(args.reference), Path(tmp))
        for seed in args.seeds:
            log = out / f"disent_{args.percent}_seed{seed}.jsonl"
            log.unlink(missing_ok=True)
            env = {
                **os.environ,
                "WANDB_STUB_LOG": str(log),
                "REF_SEED": str(seed),
                "PYTHONPATH": str(Path(tmp) / "stub"),
            }
            cmd = [
                sys.executable,
                str(Path(tmp) / "stub" / "seeded_train.py"),
                *DISENT_CMNIST,
                f"--percent={args.percent}",
                f"--exp=disent_{args.percent}_seed{seed}",
                "--wandb",
                "--device",
                "cpu",
                "--num_workers",
                "0",
                "--num_steps",
                str(args.num_steps),
                "--data_dir",
                str(Path(args.data_dir).resolve()),
                "--log_dir",
                str(out / "log"),
            ]
            print(f"seed {seed}: {' '.join(cmd[2:])}", flush=True)
            with open(out / f"disent_{args.percent}_seed{seed}.log", "w") as console:
                subprocess.run(
                    cmd, cwd=code, env=env, stdout=console, stderr=subprocess.STDOUT, check=True
                )


def summary(curve: list[float]) -> tuple[float, float, float]:
    """(last, mean of the last 20, best) of one run's test accuracy curve, in %."""
    return 100 * curve[-1], 100 * statistics.fmean(curve[-20:]), 100 * max(curve)


def reference_curves(folder: Path, percent: str) -> dict[str, list[tuple[int, float]]]:
    """(step, test accuracy) of each seed's run of the paper's code."""
    curves = {}
    for log in sorted(folder.glob(f"disent_{percent}_seed*.jsonl")):
        rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
        curve = [
            (r["step"], r["acc_d_test"])
            for r in sorted(rows, key=lambda r: r["step"])
            if "acc_d_test" in r
        ]
        curves[log.stem.rsplit("_", 1)[1]] = curve
    return curves


def our_curves(
    folder: Path, method: str, percent: str, metric: str
) -> dict[str, list[tuple[int, float]]]:
    """(step, test ``metric``) of each seed's debiaslab run."""
    curves = {}
    for results in sorted(folder.rglob("results.json")):
        res = json.loads(results.read_text())
        if res["method"] != method or res["percent"] != percent:
            continue
        rows = [
            json.loads(line) for line in (results.parent / "metrics.jsonl").read_text().splitlines()
        ]
        curves[f"seed{res['seed']}"] = [
            (r["step"], r["test"][metric]) for r in rows if r.get("kind") == "eval"
        ]
    return curves


def values(curves: dict[str, list[tuple[int, float]]]) -> dict[str, list[float]]:
    return {seed: [acc for _, acc in curve] for seed, curve in curves.items()}


def table(name: str, curves: dict[str, list[float]], oracle_mark: str) -> list[str]:
    """Rows of one side: each seed, then mean ± std; the oracle's figures carry ``oracle_mark``
    (◊: the best test score read test labels; †: its score read bias labels)."""
    lines = []
    stats = [summary(c) for c in curves.values()]
    for seed, s in zip(curves, stats):
        lines.append(
            f"| {name} | {seed} | {len(curves[seed])} | {s[0]:.2f} | {s[1]:.2f} "
            f"| {s[2]:.2f} {oracle_mark} |"
        )
    if len(stats) > 1:
        cols = [f"{statistics.fmean(c):.2f} ± {statistics.stdev(c):.2f}" for c in zip(*stats)]
        cols[2] += f" {oracle_mark}"
        lines.append(f"| {name} | mean ± std | | {' | '.join(cols)} |")
    return lines


def window_means(curve: list[tuple[int, float]], window: int, end: int) -> list[float | None]:
    """Mean test accuracy (%) over the evaluations after more than k * window and at most
    (k + 1) * window steps, for each k up to ``end``; None where a window holds none."""
    out = []
    for lo in range(0, end, window):
        inside = [acc for step, acc in curve if lo < step <= lo + window]
        out.append(100 * statistics.fmean(inside) if inside else None)
    return out


def window_table(
    ref: dict[str, list[tuple[int, float]]], ours: dict[str, list[tuple[int, float]]], window: int
) -> list[str]:
    end = max(step for curves in (ref, ours) for c in curves.values() for step, _ in c)
    spans = [f"{lo:,}-{lo + window:,}" for lo in range(0, end, window)]
    lines = [
        f"\nMean test accuracy (%) over each window of {window:,} steps (the evaluations after "
        "more than its first and at most its last step):\n",
        "| code | seed | " + " | ".join(spans) + " |",
        "|---|---|" + "---|" * len(spans),
    ]
    means = {}
    for name, curves in (("paper's code", ref), ("debiaslab", ours)):
        rows = [window_means(c, window, end) for c in curves.values()]
        for seed, row in zip(curves, rows):
            lines.append(f"| {name} | {seed} | " + " | ".join(fmt(v) for v in row) + " |")
        means[name] = [statistics.fmean(col) if None not in col else None for col in zip(*rows)]
        lines.append(f"| {name} | mean | " + " | ".join(fmt(v) for v in means[name]) + " |")
    diff = [
        None if a is None or b is None else a - b
        for a, b in zip(means["debiaslab"], means["paper's code"])
    ]
    lines.append(
        "| debiaslab − paper's code | mean | " + " | ".join(fmt(v, "+") for v in diff) + " |"
    )
    return lines


def fmt(value: float | None, sign: str = "") -> str:
    return "—" if value is None else f"{value:{sign}.2f}"


def compare(args) -> None:
    ref = reference_curves(Path(args.reference_logs), args.percent)
    if not ref:
        sys.exit(
            f"no disent_{args.percent}_seed*.jsonl under {args.reference_logs}; run the 'run' step first"
        )
    ours = our_curves(Path(args.ours), args.method, args.percent, "accuracy")
    print(
        f"Test accuracy (%) of DisEnt on cmnist {args.percent}: last evaluation, mean of the last "
        "20, best (oracle; ◊ it read test labels, † bias labels)\n"
    )
    print("| code | seed | evaluations | last | last 20 | oracle |\n|---|---|---|---|---|---|")
    print("\n".join(table("paper's code, accuracy", values(ref), "◊")))
    print("\n".join(table("debiaslab, accuracy", values(ours), "◊")))
    unbiased = our_curves(Path(args.ours), args.method, args.percent, "unbiased")
    print("\n".join(table("debiaslab, unbiased", values(unbiased), "◊†")))
    if args.window:
        print("\n".join(window_table(ref, ours, args.window)))


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="train the paper's code (DisEnt, CMNIST) for some seeds")
    r.add_argument(
        "--reference",
        required=True,
        help="a clone of kakaoenterprise/Learning-Debiased-Disentangled",
    )
    r.add_argument(
        "--data_dir", default="dataset", help="folder holding cmnist/ (default: dataset)"
    )
    r.add_argument("--percent", default="0.5pct")
    r.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    r.add_argument("--num_steps", type=int, default=50_000)
    r.add_argument("--out", default="ref_runs", help="where its logs go (default: ref_runs)")
    c = sub.add_parser("compare", help="compare its logs with debiaslab runs")
    c.add_argument("--reference_logs", default="ref_runs")
    c.add_argument("--ours", default="docs/results/cmnist_runs")
    c.add_argument("--method", default="disent")
    c.add_argument("--percent", default="0.5pct")
    c.add_argument(
        "--window",
        type=int,
        default=0,
        metavar="STEPS",
        help="also print the mean test accuracy over each window of STEPS steps",
    )
    args = p.parse_args()
    run(args) if args.cmd == "run" else compare(args)


if __name__ == "__main__":
    main()
