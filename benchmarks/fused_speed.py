"""Run-steps per second of fused groups of K runs against lone runs, on the CPU.

One invocation measures every figure it prints the same way (docs/speed.md, "Fused runs"): the
worker processes of a figure start together, each builds its runs and takes ``--warmup`` steps,
then all of them time ``--seconds`` of steps from one signal; a figure is the training steps of
every run over that window's wall seconds, summed over the processes (run-steps/s). Each row
says how it ran, in one of two arrangements (J = the cores), and how many cores other processes
kept busy during its window (the machine's busy time, from /proc/stat, less the workers' own):

- ``J processes x 1 thread``, each a fused group of K runs (J*K runs in all): what
  ``sweep --fuse auto --fuse_max K --jobs J`` runs for J*K compatible runs. K = 1 is the lone runs,
  one run per process, as ``sweep --fuse off --jobs J`` runs them; the "x lone" ratios are to it.
- ``1 process x J threads``, one fused group of K runs (K = 1: one run alone).

Runs are the paper's preset of the cell (batch 256), DisEnt's swap on from the first step
(``curr_step`` 0). The first layer's product (256 x 2352 x 100) is timed in fp32 and bf16 beside
them. ``--dataset cifar10c`` times ResNet18 steps on random images of Corrupted CIFAR-10's shape
(45,000 x 3 x 32 x 32, 10 classes; a step's cost does not depend on the pixels). The output
starts with the commit, machine, torch and load average it ran with. Not a test: it prints
numbers (and ``--json`` writes them).

    python benchmarks/fused_speed.py --data_dir dataset --methods vanilla lff disent --K 1 3 12 36
    python benchmarks/fused_speed.py --data_dir dataset --bf16 --K 12
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


def header(note: str | None = None) -> list[str]:
    """The lines a raw output starts with: what ran, on which code, machine and load."""
    import torch

    import debiaslab

    def git(*cmd: str) -> str:
        return subprocess.run(["git", "-C", str(ROOT), *cmd], capture_output=True, text=True).stdout

    dirty = git("status", "--porcelain", "--", "src", "benchmarks").strip()
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    models = [ln.split(":", 1)[1].strip() for ln in cpuinfo.splitlines() if "model name" in ln]
    lines = [
        "command: python " + " ".join(sys.argv),
        f"commit: {git('rev-parse', 'HEAD').strip()}"
        + (" dirty (uncommitted changes under src/ or benchmarks/)" if dirty else ""),
        f"machine: {models[0] if models else 'unknown CPU'}, {len(os.sched_getaffinity(0))} cores",
        f"torch {torch.__version__}; debiaslab from {Path(debiaslab.__file__).parent}",
        f"date: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}",
        f"load average at start: {load_average()}",
    ]
    return lines + ([f"note: {note}"] if note else [])


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f} (1, 5, 15 min)"


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
    """A ``TrainingLoop`` per seed, built and restored as a fused group builds them."""
    from debiaslab.config import TrainConfig
    from debiaslab.prepare import cached_loader
    from debiaslab.presets import find_preset
    from debiaslab.train import TrainingLoop, open_run

    preset = find_preset(args.dataset, args.percent, args.method)
    own = dict(curr_step=0, num_steps=10**6, valid_freq=10**5, progress=False, device=args.device)
    base = {**preset.config, "data_dir": args.data_dir, **own, "cpu_amp": args.bf16 or None}
    bundle = synthetic_cifar10c() if args.dataset == "cifar10c" else None
    load, loops = cached_loader(), []
    for seed in seeds:
        cfg = TrainConfig(**{**base, "seed": seed, "exp": f"s{seed}", "log_dir": log_dir})
        opened = open_run(cfg, bundle, load)
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
    """Build ``args.runs`` runs (a fused group; one run: its own step), warm up, say "ready",
    wait for "go" on stdin, time ``args.seconds`` of steps and print run-steps/s as JSON."""
    import torch

    from debiaslab.group import FusedLoop

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        seeds = range(args.first_seed, args.first_seed + args.runs)
        group = FusedLoop(build_loops(args, list(seeds), tmp))
        for i in range(args.warmup):
            group.step(i, 0)
        print("ready", flush=True)
        sys.stdin.readline()
        n, t0, cpu0 = 0, time.perf_counter(), time.process_time()
        while time.perf_counter() - t0 < args.seconds or n < 2:
            group.step(args.warmup + n, 0)
            n += 1
        seconds, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        out = {"run_steps_per_second": args.runs * n / seconds, "seconds": seconds, "cpu": cpu}
        print(json.dumps(out), flush=True)  # before the clean-up, which is not timed


def busy_seconds() -> float:
    """CPU seconds the whole machine has been busy (every process), from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")  # less idle, iowait


def measure(args, processes: int, runs: int, threads: int) -> tuple[list[float], float]:
    """``processes`` workers of ``runs`` runs and ``threads`` threads each, timed over one
    window; each worker's run-steps/s, and the cores that other processes kept busy meanwhile
    (the machine's busy time less the workers' own, over the window)."""
    procs = []
    for p in range(processes):
        cmd = [
            sys.executable,
            __file__,
            *("--worker", "--runs", str(runs), "--threads", str(threads)),
            *("--first_seed", str(p * runs), "--method", args.method),
            *("--dataset", args.dataset, "--percent", args.percent, "--data_dir", args.data_dir),
            *("--seconds", str(args.seconds), "--warmup", str(args.warmup)),
            *(["--bf16"] if args.bf16 else []),
            *("--device", args.device),
        ]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        procs.append(
            subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        )
    for proc in procs:  # every worker built and warmed up: start the window at once
        if proc.stdout.readline().strip() != "ready":
            raise SystemExit(f"worker failed: {' '.join(proc.args)}")
    busy = busy_seconds()
    for proc in procs:
        proc.stdin.write("go\n")
        proc.stdin.flush()
    results = [json.loads(proc.stdout.readline() or "{}") for proc in procs]
    others = busy_seconds() - busy - sum(r.get("cpu", 0) for r in results)
    for proc in procs:
        proc.communicate()
        if proc.returncode != 0:
            raise SystemExit(f"worker failed: {' '.join(proc.args)}")
    return [r["run_steps_per_second"] for r in results], others / max(r["seconds"] for r in results)


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--data_dir", default="dataset", help="folder holding cmnist/")
    p.add_argument("--dataset", default="cmnist", choices=("cmnist", "cifar10c"))
    p.add_argument("--percent", default="0.5pct")
    p.add_argument("--methods", nargs="+", default=["vanilla", "lff", "disent"])
    p.add_argument("--K", nargs="+", type=int, default=[1, 3, 12, 36], help="runs per group")
    p.add_argument("--seconds", type=float, default=10.0, help="timed seconds per figure")
    p.add_argument("--warmup", type=int, default=5, help="steps before the timed window")
    p.add_argument("--bf16", action="store_true", help="every run with --cpu_amp (bf16)")
    p.add_argument("--cores", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--note", default=None, help="a line to print in the header")
    p.add_argument(
        "--device",
        default="cpu",
        help="cpu, or cuda: then lone runs are K processes packed on the GPU (at most 8 at "
        "once) and the fused group one process, its step captured as a CUDA graph",
    )
    p.add_argument("--json", default=None, help="also write the figures to this file")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--runs", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--first_seed", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--method", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)
    import torch

    head = header(args.note)
    print("\n".join(head), flush=True)
    if args.device.startswith("cuda"):
        return gpu_rows(args)
    J = args.cores
    rates = {
        f"{name} GFLOP/s, {t} thread(s)": round(matmul_rate(dtype, t), 1)
        for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16))
        for t in sorted({1, J})
    }
    print("first-layer matmul (256x2352x100): " + ", ".join(f"{k} {v}" for k, v in rates.items()))
    print(
        f"{args.dataset} {args.percent}, {'bf16' if args.bf16 else 'fp32'}, run-steps/s over "
        f"{args.seconds:g} s after {args.warmup} warm-up steps (per process in brackets)",
        flush=True,
    )
    rows = []
    for method in args.methods:
        args.method = method
        print(f"{method}:", flush=True)
        lone = None
        for k in sorted({1, *args.K}):
            for processes, threads in ((J, 1), (1, J)):
                if k == 1 and processes == 1 and 1 not in args.K:
                    continue
                each, others = measure(args, processes, k, threads)
                total = sum(each)
                lone = lone or total  # the first figure: J lone processes
                what = (
                    f"{processes} process{'es' if processes > 1 else ''} x {threads} "
                    f"thread{'s' if threads > 1 else ''}, "
                    + ("1 run" if k == 1 else f"a fused group of {k} runs")
                    + (" each" if processes > 1 else "")
                    + (" (lone)" if k == 1 and processes > 1 else "")
                    + (f" ({processes * k} runs)" if processes > 1 and k > 1 else "")
                )
                rows.append(
                    dict(method=method, processes=processes, threads=threads, K=k, runs=processes * k,
                         run_steps_per_second=round(total, 1), per_process=[round(r, 1) for r in each],
                         over_lone=round(total / lone, 2), other_processes_cores=round(others, 2))
                )  # fmt: skip
                detail = f"({' + '.join(f'{r:.1f}' for r in each)})" if processes > 1 else ""
                label = "lone" if k == 1 and processes == J else f"{total / lone:.2f}x lone"
                print(
                    f"  {what:64s} {total:7.1f} {detail:15s} {label:10s} (others: {others:.2f} cores)",
                    flush=True,
                )
    print("\n".join(markdown(rows, J)))
    print(f"load average at end: {load_average()}")
    if args.json:
        out = {"header": head, "matmul": rates, "rows": rows, "bf16": args.bf16}
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")


def markdown(rows: list[dict], J: int) -> list[str]:
    """The rows again as one table (run-steps/s, and the ratio to the lone processes)."""
    ks = sorted({r["K"] for r in rows})
    lines = [
        "| method | how, run-steps/s | " + " | ".join(f"K = {k}" for k in ks) + " |",
        "|---|---|" + "---|" * len(ks),
    ]
    for method in dict.fromkeys(r["method"] for r in rows):
        for processes, how in (
            (J, f"{J} processes x 1 thread, each a fused group of K runs (K = 1: lone)"),
            (1, f"1 process x {J} threads, a fused group of K runs (K = 1: 1 run)"),
        ):
            got = {r["K"]: r for r in rows if r["method"] == method and r["processes"] == processes}
            cells = [
                "-"
                if k not in got
                else f"{got[k]['run_steps_per_second']:.1f}"
                + (" (lone)" if k == 1 and processes == J else f" ({got[k]['over_lone']:.2f}x)")
                for k in ks
            ]
            lines.append(f"| {method} | {how} | " + " | ".join(cells) + " |")
    return lines


def gpu_rows(args) -> None:
    """On a GPU: K runs fused in one process against the same K runs as packed processes."""
    rows = []
    for method in args.methods:
        args.method = method
        for k in args.K:
            packed = sum(measure(args, min(k, 8), 1, 2)[0])
            fused = sum(measure(args, 1, k, 2)[0])
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
    print(f"load average at end: {load_average()}")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "device": args.device}, indent=2))


if __name__ == "__main__":
    main()
