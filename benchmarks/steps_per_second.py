"""Training steps per second of each method on Colored MNIST at the paper's batch size (256).

Runs the real ``debiaslab train`` code path (in-memory data, evaluation on valid + test every
``--valid_freq`` steps, checkpoints, JSON log) on a reference-layout CMNIST, e.g. one built with
``debiaslab data build cmnist --mnist ../shared/data/mnist.npz``. DisEnt runs with the feature swap
on from the start (``--curr_step 0``), its most expensive step. Not a test: it prints numbers.

    python benchmarks/steps_per_second.py --data_dir dataset --num_steps 3000
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data_dir", default="dataset", help="folder holding cmnist/ (default: dataset)")
    p.add_argument("--percent", default="0.5pct")
    p.add_argument("--num_steps", type=int, default=3000, help="steps per method (default: 3000)")
    p.add_argument("--methods", nargs="+", default=["vanilla", "lff", "disent"])
    p.add_argument("--device", default="auto")
    args = p.parse_args()
    import torch

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}, batch 256, "
          f"CMNIST {args.percent}, {args.num_steps} steps, eval every 500 steps")
    print(f"{'method':8s} {'train loop steps/s':>19s} {'incl. start-up steps/s':>23s}")
    with tempfile.TemporaryDirectory() as logs:
        for m in args.methods:
            extra = ["--curr_step", "0", "--lambda_dis_align", "10", "--lambda_swap_align", "10"] if m == "disent" else []
            cmd = [sys.executable, "-m", "debiaslab", "train", "--method", m, "--dataset", "cmnist",
                   "--percent", args.percent, "--data_dir", args.data_dir, "--log_dir", logs, "--exp", m,
                   "--num_steps", str(args.num_steps), "--batch_size", "256", "--lr", "0.01", "--device", args.device,
                   "--no_progress", *extra]
            t0 = time.time()
            subprocess.run(cmd, check=True, capture_output=True, cwd=ROOT)
            wall = time.time() - t0
            res = json.loads((Path(logs) / "cmnist" / m / "results.json").read_text())
            print(f"{m:8s} {res['steps_per_second']:19.1f} {args.num_steps / wall:23.1f}", flush=True)


if __name__ == "__main__":
    main()
