"""Training steps per second of each method on Colored MNIST at the paper's batch size (256).

Runs the real ``debiaslab train`` code path (in-memory data, evaluation on valid + test every
``--valid_freq`` steps, checkpoints, JSON log) on a reference-layout CMNIST, e.g. one built with
``debiaslab data build cmnist --mnist ../shared/data/mnist.npz``. DisEnt runs with the feature swap
on from the start (``--curr_step 0``), its most expensive step. Each method runs eagerly
(``--no-compile``) and through ``torch.compile`` (``--compile``), one after the other in the same
session, for ``--num_steps`` and for twice that: the steady speed is the extra steps over the extra
training seconds, so start-up (a compiled step's tracing, the first evaluation) cancels out
(a short run before them fills Inductor's on-disk cache, so both start alike); the last column is
the long run's steps over its whole wall time.
Not a test: it prints numbers.

    python benchmarks/steps_per_second.py --data_dir dataset --num_steps 3000
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--data_dir", default="dataset", help="folder holding cmnist/ (default: dataset)"
    )
    p.add_argument("--percent", default="0.5pct")
    p.add_argument("--num_steps", type=int, default=3000, help="steps per method (default: 3000)")
    p.add_argument("--methods", nargs="+", default=["vanilla", "lff", "disent"])
    p.add_argument("--device", default="auto")
    p.add_argument(
        "--modes", nargs="+", choices=["eager", "compiled"], default=["eager", "compiled"]
    )
    p.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="runs of each (method, mode), interleaved; the median is printed (default: 1)",
    )
    args = p.parse_args()
    import torch

    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}, batch 256, "
        f"CMNIST {args.percent}, {args.num_steps} steps, eval every 500 steps"
    )
    print(f"{'method':8s} {'mode':9s} {'steady steps/s':>15s} {'incl. start-up steps/s':>23s}")
    n = args.num_steps
    with tempfile.TemporaryDirectory() as logs:
        for m in args.methods:
            speeds = {mode: [] for mode in args.modes}
            for i in range(args.repeats):
                for mode in args.modes:
                    # a short run first fills Inductor's on-disk cache, so the two timed runs start alike
                    run(args, m, mode, Path(logs) / f"{m}-{mode}-{i}-warm", 50)
                    (t1, _), (t2, wall2) = (
                        run(args, m, mode, Path(logs) / f"{m}-{mode}-{i}-{k}", k * n)
                        for k in (1, 2)
                    )
                    speeds[mode].append((n / (t2 - t1), 2 * n / wall2))
            for mode, runs in speeds.items():
                steady, wall = (statistics.median(v) for v in zip(*runs))
                print(f"{m:8s} {mode:9s} {steady:15.1f} {wall:23.1f}", flush=True)


def run(args, method: str, mode: str, log_dir: Path, steps: int) -> tuple[float, float]:
    """(training seconds, wall seconds) of one ``debiaslab train`` run of ``steps`` steps."""
    extra = (
        ["--curr_step", "0", "--lambda_dis_align", "10", "--lambda_swap_align", "10"]
        if method == "disent"
        else []
    )
    cmd = [
        sys.executable,
        "-m",
        "debiaslab",
        "train",
        "--method",
        method,
        "--dataset",
        "cmnist",
        "--percent",
        args.percent,
        "--data_dir",
        args.data_dir,
        "--log_dir",
        str(log_dir),
        "--exp",
        method,
        "--num_steps",
        str(steps),
        "--batch_size",
        "256",
        "--lr",
        "0.01",
        "--device",
        args.device,
        "--no_progress",
        "--compile" if mode == "compiled" else "--no-compile",
        *extra,
    ]
    t0 = time.time()
    subprocess.run(cmd, check=True, capture_output=True, cwd=ROOT)
    wall = time.time() - t0
    res = json.loads((log_dir / "cmnist" / method / "results.json").read_text())
    if (mode == "compiled") != bool(res.get("compiled")):
        raise SystemExit(
            f"{method}: asked for {mode}, but the run reports compiled={res.get('compiled')}"
        )
    return res["train_seconds"], wall


if __name__ == "__main__":
    main()
