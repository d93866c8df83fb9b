"""Run-steps per second of K fused runs against the same runs as lone processes, on the CPU.

One script, one machine, one session (docs/speed.md, "Fused runs"). For each method and K:

- ``lone``: lone runs as processes, as a sweep with ``--fuse off --jobs J`` runs them: J
  processes at once (J = the cores), each with 1 thread and its own run;
- ``fused 1xT``: the K runs fused in one process with every core's thread;
- ``fused JxT/J``: the K runs split into J fused groups, one process each, 1 thread each (what
  ``sweep --fuse auto --jobs J`` does).

Each figure is training steps of every run over wall seconds (run-steps/s), timed over
``--seconds`` after a warm-up, with the paper's preset of the cell (batch 256) and DisEnt's swap on
from the first step (``curr_step`` 0, its dearer step, 80% of a 50,000-step run). The matmul rate
of the first layer's product (256 x 2352 x 100) in fp32 and bf16 is printed beside it: what bounds
a CPU step. ``--dataset cifar10c`` times ResNet18 steps on random images of Corrupted CIFAR-10's
shape (45,000 x 3 x 32 x 32, 10 classes; a step's cost does not depend on the pixels).
Not a test: it prints numbers (and ``--json`` writes them).

    python benchmarks/fused_speed.py --data_dir dataset --methods vanilla lff disent --K 1 3 12 36
    python benchmarks/fused_speed.py --dataset cifar10c --methods vanilla disent --K 1 3 --seconds 20
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def matmul_rate(dtype, threads: int, seconds: float = 2.0) -> float:
    """GFLOP/s of a 256x2352 @ 2352x100 product in ``dtype`` on ``threads`` threads."""
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(256, 2352).to(dtype), torch.randn(2352, 100).to(dtype)
    for _ in range(20):
        a @ b
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        n += 1
    return 2 * 256 * 2352 * 100 * n / (time.perf_counter() - t0) / 1e9


def build_loops(args, seeds: list[int], log_dir: str):
    """A ``TrainingLoop`` per seed, built and restored as ``train`` builds them."""
    from debiaslab.config import TrainConfig
    from debiaslab.presets import find_preset
    from debiaslab.train import TrainingLoop, open_run

    preset = find_preset(args.dataset, args.percent, args.method)
    own = dict(curr_step=0, num_steps=10**6, valid_freq=10**6, progress=False, device=args.device)
    base = {**preset.config, "data_dir": args.data_dir, **own, "cpu_amp": args.bf16 or None}
    bundle = synthetic_cifar10c() if args.dataset == "cifar10c" else None
    loops = []
    for seed in seeds:
        cfg = TrainConfig(**{**base, "seed": seed, "exp": f"s{seed}", "log_dir": log_dir})
        opened = open_run(cfg, bundle)
        loop = TrainingLoop(opened.cfg, opened.bundle, opened.device, opened.run_dir)
        loop.restore(None, accelerate=False)
        loop.method.train()
        loop.open_bar(None)
        loops.append(loop)
    return loops


def synthetic_cifar10c():
    import torch

    from debiaslab.data.splits import DatasetBundle, Split

    g = torch.Generator().manual_seed(0)

    def split(n):
        images = torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8)
        targets = torch.randint(0, 10, (n,), generator=g)
        return Split(images, targets, torch.randint(0, 10, (n,), generator=g))

    return DatasetBundle("cifar10c", split(45_000), split(512), split(512), 10)


def worker(args) -> None:
    """Time ``args.runs`` runs (fused, or one lone run) and print run-steps/s as JSON."""
    import torch

    from debiaslab.group import FusedLoop

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        loops = build_loops(args, list(range(args.runs)), tmp)
        if args.worker == "fused" and len(loops) > 1:
            group = FusedLoop(loops)

            def step(i):
                group.step(i, 0)
        else:

            def step(i):
                for loop in loops:
                    loop.step(i, 0)

        for i in range(args.warmup):
            step(i)
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < args.seconds or n < 2:
            step(args.warmup + n)
            n += 1
        seconds = time.perf_counter() - t0
    print(json.dumps({"run_steps_per_second": len(loops) * n / seconds, "steps": n}))


def measure(args, mode: str, runs_per_process: list[int], threads: int) -> float:
    """Start one worker per entry of ``runs_per_process`` at once; their summed run-steps/s."""
    procs = []
    for runs in runs_per_process:
        cmd = [
            sys.executable,
            __file__,
            *("--worker", mode, "--runs", str(runs), "--threads", str(threads)),
            *("--method", args.method, "--dataset", args.dataset, "--percent", args.percent),
            *("--data_dir", args.data_dir, "--seconds", str(args.seconds)),
            *("--warmup", str(args.warmup), *(["--bf16"] if args.bf16 else [])),
            *("--device", args.device),
        ]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env))
    total = 0.0
    for proc in procs:
        out, _ = proc.communicate()
        if proc.returncode != 0:
            raise SystemExit(f"worker failed: {' '.join(proc.args)}")
        total += json.loads(out.strip().splitlines()[-1])["run_steps_per_second"]
    return total


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--data_dir", default="dataset", help="folder holding cmnist/")
    p.add_argument("--dataset", default="cmnist", choices=("cmnist", "cifar10c"))
    p.add_argument("--percent", default="0.5pct")
    p.add_argument("--methods", nargs="+", default=["vanilla", "lff", "disent"])
    p.add_argument("--K", nargs="+", type=int, default=[1, 3, 12, 36])
    p.add_argument("--seconds", type=float, default=10.0, help="timed seconds per figure")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--bf16", action="store_true", help="every run with --cpu_amp (bf16)")
    p.add_argument("--cores", type=int, default=os.cpu_count() or 1)
    p.add_argument(
        "--device",
        default="cpu",
        help="cpu, or cuda: then lone runs are K processes packed on the GPU (at most 8 at "
        "once) and the fused group one process, its step captured as a CUDA graph",
    )
    p.add_argument("--json", default=None, help="also write the figures to this file")
    p.add_argument("--worker", choices=("lone", "fused"), help=argparse.SUPPRESS)
    p.add_argument("--runs", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--method", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)
    import torch

    cores = args.cores
    rates = {
        f"{name} GFLOP/s, {t} thread(s)": round(matmul_rate(dtype, t), 1)
        for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16))
        for t in sorted({1, cores})
    }
    print(f"{args.dataset}, {'bf16' if args.bf16 else 'fp32'}, {cores} cores")
    print("first-layer matmul (256x2352x100): " + ", ".join(f"{k} {v}" for k, v in rates.items()))
    rows = []
    if args.device.startswith("cuda"):
        return gpu_rows(args)
    for method in args.methods:
        args.method = method
        lone = measure(args, "lone", [1] * cores, 1)
        print(f"{method}: lone processes ({cores} at once, 1 thread each): {lone:.1f} run-steps/s")
        for k in args.K:
            one = measure(args, "fused", [k], cores)
            split = [k // cores + (i < k % cores) for i in range(cores)]
            split = [n for n in split if n]
            many = measure(args, "fused", split, 1) if len(split) > 1 else one
            row = {
                "method": method,
                "K": k,
                "lone_processes": round(lone, 1),
                f"fused_1x{cores}": round(one, 1),
                f"fused_{len(split)}x1": round(many, 1),
                "best_over_lone": round(max(one, many) / lone, 2),
            }
            rows.append(row)
            print(
                f"  K={k:3d}: fused 1 process x {cores} threads {one:7.1f}, "
                f"{len(split)} processes x 1 thread {many:7.1f} run-steps/s: "
                f"{row['best_over_lone']:.2f}x lone"
            )
    if args.json:
        Path(args.json).write_text(
            json.dumps({"matmul": rates, "rows": rows, "bf16": args.bf16}, indent=2) + "\n"
        )


def gpu_rows(args) -> None:
    """On a GPU: K runs fused in one process against the same K runs as packed processes."""
    rows = []
    for method in args.methods:
        args.method = method
        for k in args.K:
            packed = measure(args, "lone", [1] * min(k, 8), 2)
            fused = measure(args, "fused", [k], 2)
            rows.append(
                {
                    "method": method,
                    "K": k,
                    "packed_processes": round(packed, 1),
                    "fused": round(fused, 1),
                    "fused_over_packed": round(fused / packed, 2),
                }
            )
            print(
                f"{method} K={k:3d}: {min(k, 8)} packed processes {packed:8.1f}, "
                f"fused {fused:8.1f} run-steps/s ({fused / packed:.2f}x)"
            )
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "device": args.device}, indent=2))


if __name__ == "__main__":
    main()
