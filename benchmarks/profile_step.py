"""What bounds a training step on a GPU: wall time per step against the GPU's busy time per step,
and the number of kernels a step launches, eager and captured. Not a test: it prints numbers.

Trains a preset through ``train`` (in process) and, between steps ``--skip`` and
``--skip + --steps``, times each ``Method.update`` on the host (``torch.cuda.synchronize`` on both
sides, so one step's wall time) and profiles the same window with ``torch.profiler`` for the
kernels and their summed device time. A step whose wall time is far above its kernel time waits on
the host (launch overhead); one close to it is bound by the kernels themselves.

    python benchmarks/profile_step.py --preset cifar10c-0.5pct-disent --data_dir dataset
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch


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


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--preset", default="cifar10c-0.5pct-disent")
    p.add_argument("--data_dir", default="dataset")
    p.add_argument(
        "--skip", type=int, default=30, help="steps before the window (warm-up, capture)"
    )
    p.add_argument("--steps", type=int, default=50, help="steps in the window")
    args = p.parse_args()
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
