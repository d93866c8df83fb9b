"""What bounds a training step. Not a test: it prints numbers.

On a GPU (the default): wall time per step against the GPU's busy time per step, and the number
of kernels a step launches, eager and captured.

Trains a preset through ``train`` (in process) and, between steps ``--skip`` and
``--skip + --steps``, times each ``Method.update`` on the host (``torch.cuda.synchronize`` on both
sides, so one step's wall time) and profiles the same window with ``torch.profiler`` for the
kernels and their summed device time. A step whose wall time is far above its kernel time waits on
the host (launch overhead); one close to it is bound by the kernels themselves.

    python benchmarks/profile_step.py --preset cifar10c-0.5pct-disent --data_dir dataset

``--cpu``: one run's step on one CPU thread (``TrainingLoop.step``: batch, update, weight average;
DisEnt's swap on from the first step, as in ``fused_speed.py``), ``--steps`` steps timed, then as
many profiled with ``torch.profiler``; the step's time is split into the matmul kernels' own time,
every other tensor operation's own time (ops with no op under them), the optimizer (fused Adam
and zero_grad, whole) and the rest: dispatch, autograd and Python (composite ops' own time,
autograd's engine, the method's Python). The shares are of the unprofiled step; the profiled
step's extra time is the profiler's. The output starts with commit, machine, torch and load.

    python benchmarks/profile_step.py --cpu --preset cmnist-0.5pct-disent --data_dir dataset
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fused_speed import build_loops, busy_seconds, header, load_average, matmul_rate  # noqa: E402

# the ops whose own time is a matrix product's kernel (the CMNIST MLP's: mm and addmm)
MATMUL = {
    "aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::addbmm",
    "aten::mkldnn_convolution", "aten::convolution_backward",
}  # fmt: skip


def profile(preset: str, data_dir: str, graphed: bool, skip: int, steps: int) -> dict:
    from debiaslab.config import TrainConfig
    from debiaslab.methods.base import Method
    from debiaslab.presets import get_preset
    from debiaslab.train import train

    walls, window = [], {}
    original = Method.update
    prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA])

    def timed(self, x, y, idx, step):
        if step == skip:
            prof.start()
        if skip <= step < skip + steps:
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            out = original(self, x, y, idx, step)
            torch.cuda.synchronize()
            walls.append(time.perf_counter() - t0)
            if step == skip + steps - 1:
                prof.stop()
                events = [
                    e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA
                ]
                window.update(
                    kernels=len(events),
                    kernel_seconds=sum(e.device_time_total for e in events) / 1e6,
                )
            return out
        return original(self, x, y, idx, step)

    Method.update = timed
    try:
        with tempfile.TemporaryDirectory() as logs:
            cfg = TrainConfig(
                **{
                    **get_preset(preset).config,
                    "data_dir": data_dir,
                    "log_dir": logs,
                    "num_steps": skip + steps + 1,
                    "valid_freq": 10**6,
                    "progress": False,
                    "cuda_graph": graphed,
                    "compile": False,
                    "best_checkpoints": False,
                }
            )
            train(cfg)
    finally:
        Method.update = original
    wall = statistics.median(walls)
    return dict(
        wall_ms=1e3 * wall,
        kernel_ms=1e3 * window["kernel_seconds"] / steps,
        kernels_per_step=window["kernels"] / steps,
    )


def cpu_profile(preset: str, data_dir: str, skip: int, steps: int) -> None:
    """Print where one run's CPU step goes, on one thread (``--cpu``)."""
    from debiaslab.methods.base import Method
    from debiaslab.presets import get_preset

    torch.set_num_threads(1)
    cfg = get_preset(preset).config
    args = argparse.Namespace(data_dir=data_dir, device="cpu", bf16=False, **{
        k: cfg[k] for k in ("dataset", "percent", "method")
    })  # fmt: skip
    original = Method.optimizer_step

    def optimizer_step(self, applied):
        with torch.profiler.record_function("optimizer"):
            return original(self, applied)

    Method.optimizer_step = optimizer_step
    try:
        with tempfile.TemporaryDirectory() as tmp:
            (loop,) = build_loops(args, [0], tmp)
            for i in range(skip):
                loop.step(i, 0)
            t0, cpu0, busy0 = time.perf_counter(), time.process_time(), busy_seconds()
            for i in range(skip, skip + steps):
                loop.step(i, 0)
            seconds = time.perf_counter() - t0
            others = (busy_seconds() - busy0 - (time.process_time() - cpu0)) / seconds
            wall = seconds / steps
            activities = [torch.profiler.ProfilerActivity.CPU]
            with torch.profiler.profile(activities=activities, with_flops=True) as prof:
                t0 = time.perf_counter()
                for i in range(skip + steps, skip + 2 * steps):
                    loop.step(i, 0)
                profiled = (time.perf_counter() - t0) / steps
    finally:
        Method.optimizer_step = original
    parts = dict.fromkeys(("matmul", "other", "optimizer"), 0.0)
    flops, flop_us, seen = 0, 0.0, set()
    for e in prof.events():
        if any(is_optimizer(a) for a in ancestors(e)):
            continue  # counted with the optimizer
        if is_optimizer(e):
            parts["optimizer"] += e.cpu_time_total  # whole, its ops included
        elif e.name in MATMUL:
            parts["matmul"] += e.self_cpu_time_total
            seen.add(e.name)
            if e.flops:  # torch counts the FLOPs of mm, addmm, bmm, baddbmm; not of convolutions
                flops, flop_us = flops + e.flops, flop_us + e.self_cpu_time_total
        elif e.name.startswith("aten::") and not e.cpu_children:
            parts["other"] += e.self_cpu_time_total
    ms = {k: v / 1e3 / steps for k, v in parts.items()}  # profiler times are microseconds
    ms["rest"] = 1e3 * wall - sum(ms.values())
    rate = flops / flop_us / 1e3 if flop_us else 0.0  # GFLOP/s
    lone_rate = matmul_rate(torch.float32, 1)
    print(
        f"{preset}, one run, 1 thread, swap on from step 0: {steps} steps after {skip} timed, "
        f"then {steps} profiled (profiled: {1e3 * profiled:.2f} ms a step, "
        f"the profiler's own cost included); others: {others:.2f} cores during the timed steps"
    )
    names = {
        "matmul": "matmul kernels (own time of " + ", ".join(sorted(seen)) + ")",
        "other": "other tensor operations (own time of ops with no op under them)",
        "optimizer": "optimizer (fused Adam, its step count, zero_grad)",
        "rest": "dispatch, autograd and Python (the rest)",
    }
    print("| part of the step | ms per step | share |\n|---|---|---|")
    for k, name in names.items():
        print(f"| {name} | {ms[k]:.2f} | {100 * ms[k] / (1e3 * wall):.1f}% |")
    print(f"| the whole step (unprofiled) | {1e3 * wall:.2f} | 100% |")
    print(
        f"matmul kernels with a FLOP count ran at {rate:.1f} GFLOP/s; the first layer's product "
        f"alone (256x2352x100) on 1 thread: {lone_rate:.1f} GFLOP/s ({100 * rate / lone_rate:.0f}%)"
    )
    print(f"load average at end: {load_average()}")


def is_optimizer(e) -> bool:
    """Our range around ``Method.optimizer_step`` or torch's around ``zero_grad``."""
    return e.name == "optimizer" or e.name.startswith("Optimizer.")


def ancestors(e):
    while e.cpu_parent is not None:
        e = e.cpu_parent
        yield e


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--preset", default=None, help="default: cifar10c-0.5pct-disent (--cpu: cmnist)")
    p.add_argument("--data_dir", default="dataset")
    p.add_argument(
        "--skip", type=int, default=30, help="steps before the window (warm-up, capture)"
    )
    p.add_argument("--steps", type=int, default=50, help="steps in the window")
    p.add_argument("--cpu", action="store_true", help="profile one run's step on 1 CPU thread")
    p.add_argument("--note", default=None, help="--cpu: a line to print in the header")
    args = p.parse_args()
    args.preset = args.preset or f"{'cmnist' if args.cpu else 'cifar10c'}-0.5pct-disent"
    if args.cpu:
        print("\n".join(header(args.note)), flush=True)
        return cpu_profile(args.preset, args.data_dir, args.skip, args.steps)
    print(
        f"{args.preset}: per step, median wall (synchronised) / summed kernel time / kernels",
        flush=True,
    )
    for graphed in (False, True):
        r = profile(args.preset, args.data_dir, graphed, args.skip, args.steps)
        print(
            f"  {'captured' if graphed else 'eager':9s} wall {r['wall_ms']:7.2f} ms   kernels {r['kernel_ms']:7.2f} ms"
            f"   {r['kernels_per_step']:7.1f} kernels/step",
            flush=True,
        )


if __name__ == "__main__":
    main()
