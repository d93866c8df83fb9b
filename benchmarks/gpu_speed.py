"""Steps per second on a GPU through the real ``train`` code path. Run by benchmarks/gpu_suite.sh
(which builds the data); not a test: it prints numbers and writes them to ``<out>/speed.json``.
The C-CIFAR10 table and the fused groups' figures are benchmarks/gpu_table.sh's.

Sections, in this order, each skipped (saying so) when the time left is shorter than it needs:
  single    the paper's C-CIFAR10 0.5pct commands (--preset cifar10c-0.5pct-<method>) and CMNIST's,
            eager (--no-compile --no-cuda_graph) vs captured (--cuda_graph): steps over the
            training loop's seconds, evaluation every 500 steps and checkpoints included
  reference the paper's own code (a clone of kakaoenterprise/Learning-Debiased-Disentangled,
            never part of this project; wandb replaced by a stand-in) with its C-CIFAR10 DisEnt
            command on the same data: steady steps/s = (400 - 100) / (wall(400) - wall(100))
  packed    K = 2, 4, 8 captured DisEnt runs at once in separate processes (and under CUDA MPS
            where it starts): run-steps/s = the sum of each run's steps over its loop seconds
  compiled  DisEnt C-CIFAR10 through torch.compile, with and without the graph

    python benchmarks/gpu_speed.py --data_dir dataset --out /tmp/gpu --budget 3600 \\
        --reference ../Learning-Debiased-Disentangled
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODES = {
    "eager": ["--no-compile", "--no-cuda_graph"],
    "graph": ["--no-compile", "--cuda_graph"],
    "graph+compile": ["--compile", "--cuda_graph"],
    "compile": ["--compile", "--no-cuda_graph"],
}
WANDB_STANDIN = (
    "run = type('Run', (), {'name': None})()\ndef init(**kw):\n    return run\n"
    "def log(*a, **kw):\n    pass\n"
)
REFERENCE_DISENT = [
    "--dataset",
    "cifar10c",
    "--lr=0.0005",
    "--percent=0.5pct",
    "--curr_step=10000",
    "--lambda_swap=1",
    "--lambda_dis_align=1",
    "--lambda_swap_align=1",
    "--use_lr_decay",
    "--lr_decay_step=10000",
    "--lr_gamma",
    "0.5",
    "--train_ours",
]


class Clock:
    def __init__(self, budget: float | None):
        start = float(os.environ.get("SUITE_START", time.time()))
        self.deadline = start + budget if budget else float("inf")

    def left(self) -> float:
        return self.deadline - time.time()

    def allows(self, section: str, needs: float) -> bool:
        if self.left() >= needs:
            return True
        print(
            f"-- {section}: skipped, {self.left():.0f} s left and it needs ~{needs:.0f} s",
            flush=True,
        )
        return False


def train(
    args,
    dataset: str,
    method: str,
    mode: str,
    steps: int,
    log_dir: Path,
    seed: int = 0,
    env: dict | None = None,
) -> subprocess.Popen:
    preset = f"{dataset}-0.5pct-{method}"
    cmd = [
        sys.executable,
        "-m",
        "debiaslab",
        "train",
        "--preset",
        preset,
        "--data_dir",
        args.data_dir,
        "--log_dir",
        str(log_dir),
        "--exp",
        f"{method}-{mode}-{seed}",
        "--seed",
        str(seed),
        "--num_steps",
        str(steps),
        "--no_progress",
        "--overwrite",
        *MODES[mode],
    ]
    return subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def finish(proc: subprocess.Popen, log_dir: Path, dataset: str, exp: str) -> dict | None:
    out, _ = proc.communicate()
    path = log_dir / dataset / exp / "results.json"
    if proc.returncode != 0 or not path.exists():
        print(
            f"   FAILED ({exp}): {out.strip().splitlines()[-3:] if out.strip() else 'no output'}",
            flush=True,
        )
        return None
    return json.loads(path.read_text())


def single(args, clock: Clock, tmp: Path, summary: dict) -> None:
    plan = [
        ("cifar10c", m, mode, n)
        for m in args.methods
        for mode, n in (("graph", args.steps), ("eager", max(300, args.steps // 5)))
    ]
    plan += [
        ("cmnist", "disent", mode, n)
        for mode, n in (("graph", 4 * args.steps), ("eager", args.steps))
    ]
    print(
        f"{'dataset':9s} {'method':8s} {'mode':14s} {'steps':>6s} {'steps/s':>8s}  (loop, evaluations and "
        "checkpoints included)",
        flush=True,
    )
    for dataset, method, mode, n in plan:
        if mode not in args.modes:
            continue
        if not (Path(args.data_dir) / dataset).exists() or not clock.allows(
            f"{dataset} {method} {mode}", 25
        ):
            continue
        measure_one(args, tmp, summary, dataset, method, mode, n)


def measure_one(
    args, tmp: Path, summary: dict, dataset: str, method: str, mode: str, n: int
) -> None:
    """One run of ``n`` steps; its steps over the loop's seconds go to ``summary["single"]``."""
    res = finish(train(args, dataset, method, mode, n, tmp), tmp, dataset, f"{method}-{mode}-0")
    if res:
        rate, parts = n / res["train_seconds"], res.get("boundary_seconds", {})
        summary.setdefault("single", []).append(
            dict(
                dataset=dataset,
                method=method,
                mode=mode,
                steps=n,
                steps_per_second=round(rate, 1),
                cuda_graph=res["cuda_graph"],
                compiled=res["compiled"],
                boundary_seconds=parts,
            )
        )
        steps_only = res["train_seconds"] - sum(parts.values())
        print(
            f"{dataset:9s} {method:8s} {mode:14s} {n:6d} {rate:8.1f}  compiled: {res['compiled']}"
            f"  seconds: steps {steps_only:.1f}, "
            + ", ".join(f"{k} {v:.1f}" for k, v in parts.items()),
            flush=True,
        )


def compiled(args, clock: Clock, tmp: Path, summary: dict) -> None:
    for mode in ("graph+compile", "compile"):
        if not clock.allows(f"cifar10c disent {mode}", 150):
            return
        measure_one(args, tmp, summary, "cifar10c", "disent", mode, args.steps)


def packed(
    args, clock: Clock, tmp: Path, summary: dict, dataset="cifar10c", ks=(2, 4, 8), mps=False
) -> None:
    """K runs at once; K = 1 is the single section's captured run."""
    label = f"{dataset} disent graph{' + MPS' if mps else ''}"
    steps = args.steps if dataset == "cifar10c" else 4 * args.steps
    for k in ks:
        if not clock.allows(f"packed {label} K={k}", 20 + 6 * k):
            return
        env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 2) // k))}
        t0 = time.time()
        procs = [
            train(args, dataset, "disent", "graph", steps, tmp / f"k{k}{mps}", seed=i, env=env)
            for i in range(k)
        ]
        results = [
            finish(p, tmp / f"k{k}{mps}", dataset, f"disent-graph-{i}") for i, p in enumerate(procs)
        ]
        wall = time.time() - t0
        if all(results):
            rate = sum(steps / r["train_seconds"] for r in results)
            summary.setdefault("packed", []).append(
                dict(
                    dataset=dataset,
                    mps=mps,
                    k=k,
                    steps=steps,
                    run_steps_per_second=round(rate, 1),
                    incl_startup=round(k * steps / wall, 1),
                )
            )
            print(
                f"packed {label:28s} K={k}: {rate:8.1f} run-steps/s ({k * steps / wall:.1f} with start-up)",
                flush=True,
            )


def start_mps() -> bool:
    if not shutil.which("nvidia-cuda-mps-control"):
        print("-- MPS: nvidia-cuda-mps-control is not installed", flush=True)
        return False
    ok = subprocess.run(["nvidia-cuda-mps-control", "-d"], capture_output=True, text=True)
    print(
        f"-- MPS daemon: {'started' if ok.returncode == 0 else 'failed: ' + ok.stderr.strip()}",
        flush=True,
    )
    return ok.returncode == 0


def stop_mps() -> None:
    subprocess.run(["nvidia-cuda-mps-control"], input="quit\n", text=True, capture_output=True)
    time.sleep(1)


def reference(args, clock: Clock, tmp: Path, summary: dict) -> None:
    if not args.reference or not clock.allows("reference code", 90):
        return
    copy = tmp / "reference"
    shutil.copytree(args.reference, copy, ignore=shutil.ignore_patterns(".git", "assets"))
    (copy / "wandb.py").write_text(WANDB_STANDIN)
    walls = {}
    for n in (100, 400):
        cmd = [
            sys.executable,
            "train.py",
            *REFERENCE_DISENT,
            "--exp",
            f"ref{n}",
            "--num_steps",
            str(n),
            "--data_dir",
            str(Path(args.data_dir).resolve()),
            "--log_dir",
            str(tmp / "reflog"),
        ]
        t0 = time.time()
        proc = subprocess.run(
            cmd, cwd=copy, capture_output=True, text=True, timeout=max(30, clock.left())
        )
        walls[n] = time.time() - t0
        if proc.returncode != 0:
            print(
                f"-- reference code failed: {(proc.stderr or proc.stdout).strip().splitlines()[-3:]}",
                flush=True,
            )
            return
    rate = 300 / (walls[400] - walls[100])
    summary["reference"] = dict(
        command="train.py " + " ".join(REFERENCE_DISENT),
        steps_per_second=round(rate, 1),
        wall_100=round(walls[100], 1),
        wall_400=round(walls[400], 1),
    )
    print(
        f"reference code, C-CIFAR10 DisEnt 0.5pct: {rate:.1f} steps/s (wall 100 steps {walls[100]:.1f} s, "
        f"400 steps {walls[400]:.1f} s)",
        flush=True,
    )


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--data_dir", default="dataset", help="holds cifar10c/ (and cmnist/)")
    p.add_argument("--out", required=True, help="speed.json goes here")
    p.add_argument("--reference", help="a clone of the paper's code (optional)")
    p.add_argument(
        "--steps", type=int, default=2000, help="steps of a captured C-CIFAR10 speed run"
    )
    p.add_argument(
        "--budget", type=float, default=None, help="seconds from $SUITE_START to stop at"
    )
    p.add_argument(
        "--methods",
        nargs="+",
        default=["disent", "lff", "vanilla"],
        help="single section's methods",
    )
    p.add_argument("--modes", nargs="+", default=["graph", "eager"], help="single section's modes")
    p.add_argument("--packed", nargs="*", type=int, default=[2, 4, 8], help="K runs at once, plain")
    p.add_argument("--mps", nargs="*", type=int, default=[4, 8], help="K runs at once under MPS")
    p.add_argument("--no_cmnist_packed", dest="cmnist_packed", action="store_false")
    p.add_argument("--sections", nargs="+", default=["single", "reference", "packed", "compiled"])
    args = p.parse_args()
    clock, summary = Clock(args.budget), {}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for section in args.sections:
            if section == "single":
                single(args, clock, tmp, summary)
            elif section == "reference":
                reference(args, clock, tmp, summary)
            elif section == "packed":
                packed(args, clock, tmp, summary, ks=args.packed)
                if (Path(args.data_dir) / "cmnist").exists() and args.cmnist_packed:
                    packed(args, clock, tmp, summary, dataset="cmnist", ks=(8,))
                if args.mps and clock.left() > 60 and start_mps():
                    packed(args, clock, tmp, summary, ks=args.mps, mps=True)
                    stop_mps()
            elif section == "compiled":
                compiled(args, clock, tmp, summary)
            (out / "speed.json").write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
