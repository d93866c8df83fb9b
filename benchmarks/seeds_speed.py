"""The README's ``--seeds`` path against the same runs one after another. Not a test: it prints
numbers.

Times, in wall seconds from the command's start to its end (start-up, data loading, evaluations
and checkpoints included: what a user waits), the paper's Colored MNIST DisEnt command of the
README (``python train.py ... --train_ours``) with ``--seeds 0 1 ... N-1`` and its default layout
(``group.default_processes``), then the same N runs one after another, one command per
``--seed``, each with the machine's default threads. Both sides train the same settings on the
same data (``--data_dir``; a build of its own, e.g. ``data build cmnist --seed 7``, keeps the
figure off the committed runs' data), into fresh folders; the ratio is sequential over fused.
The output starts with the commit, machine, torch and load average it ran with.

    python benchmarks/seeds_speed.py --data_dir /tmp/heldout --seeds 6 --num_steps 2000
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fused_speed import header, load_average  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def paper_command(data_dir: str, log_dir: Path, num_steps: int) -> list[str]:
    """The README's DisEnt command at 0.5pct, shortened to ``num_steps`` with its shape kept:
    the swap and the first LR decay at a fifth of the steps, evaluations every quarter."""
    fifth = str(num_steps // 5)
    return [
        *(sys.executable, "train.py", "--dataset", "cmnist", "--exp", "cmnist_0.5_ours"),
        *("--lr", "0.01", "--percent", "0.5pct", "--curr_step", fifth, "--lambda_swap", "1"),
        *("--lambda_dis_align", "10", "--lambda_swap_align", "10", "--use_lr_decay"),
        *("--lr_decay_step", fifth, "--lr_gamma", "0.5", "--train_ours"),
        *("--data_dir", data_dir, "--log_dir", str(log_dir), "--num_steps", str(num_steps)),
        *("--valid_freq", str(num_steps // 4), "--no_progress"),
    ]


def timed(command: list[str]) -> float:
    t0 = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"failed ({done.returncode}): {' '.join(command)}\n{done.stderr[-2000:]}")
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data_dir", required=True, help="folder holding cmnist/ (a build of its own)")
    p.add_argument("--seeds", type=int, default=6, help="runs on each side (default: 6)")
    p.add_argument("--num_steps", type=int, default=2000)
    p.add_argument("--json", default=None, help="also write the figures to this file")
    args = p.parse_args()
    print("\n".join(header()), flush=True)
    seeds = [str(s) for s in range(args.seeds)]
    with tempfile.TemporaryDirectory() as tmp:
        command = paper_command(args.data_dir, Path(tmp) / "fused", args.num_steps)
        fused = timed([*command, "--seeds", *seeds])
        sequential = sum(
            timed([*paper_command(args.data_dir, Path(tmp) / f"s{s}", args.num_steps), "--seed", s])
            for s in seeds
        )
    runs = f"{args.seeds} runs of {args.num_steps:,} steps"
    print(f"--seeds {' '.join(seeds)}, default layout: {fused:.1f} s for {runs}")
    print(f"one after another, one command per --seed: {sequential:.1f} s for {runs}")
    print(f"--seeds speed-up over one after another: {sequential / fused:.2f}x")
    print(f"load average at end: {load_average()}")
    if args.json:
        figures = {"fused_seconds": fused, "sequential_seconds": sequential, "runs": args.seeds}
        Path(args.json).write_text(json.dumps({**figures, "num_steps": args.num_steps}, indent=1))


if __name__ == "__main__":
    main()
