"""Run-steps per second of fused groups of K runs against lone runs, on the CPU or a GPU.

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

``--arrangement packed`` (the default on a GPU) measures what a GPU runs instead, for each K:
K lone runs as packed processes (at most 8 at once, one run each) against one process holding a
fused group of K runs, every run accelerated alike (captured where the device captures, bf16
where the config says: a lone run captures its own step as a fused group captures the group's),
with each side's wall time per step against its kernel time per step (a GPU's, from
``torch.profiler``) and each process's peak memory (a GPU's peak reserved by PyTorch's allocator;
on the CPU, the process's peak resident set). K is sized to the memory: a K whose fused process
would need more than ``--memory_fraction`` of the GPU (extrapolated from the K below it) is
skipped, as is one that runs out of memory, with every larger K of that method.

Runs are the paper's preset of the cell (batch 256; ``--set KEY=VALUE`` changes any setting,
e.g. a CPU rehearsal's small model), DisEnt's swap on from the first step (``curr_step`` 0). The
first layer's product (256 x 2352 x 100) is timed in fp32 and bf16 beside them. ``--dataset
cifar10c`` times ResNet18 steps on random images of Corrupted CIFAR-10's shape (45,000 x 3 x 32 x
32, 10 classes; a step's cost does not depend on the pixels). The output starts with the commit,
machine, torch and load average it ran with. Not a test: it prints
numbers (and ``--json`` writes them).

    python benchmarks/fused_speed.py --data_dir dataset --methods vanilla lff disent --K 1 3 12 36
    python benchmarks/fused_speed.py --data_dir dataset --bf16 --K 12
    python benchmarks/fused_speed.py --device cuda --dataset cifar10c --methods disent --K 1 4 12 24
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# threads of each packed process: on a GPU a process needs a few for its Python and launches
PACKED_THREADS = 2


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


def batched_against_per_run(runs: int, seconds: float = 2.0) -> str:
    """The first layer's forward and weight-gradient products of ``runs`` runs on one thread:
    one product per run (the fused CPU step's ``models/layers.py``, bit for bit as alone)
    against one batched product for all (``baddbmm`` / ``bmm``, the CUDA path)."""
    import torch

    torch.set_num_threads(1)
    x, w = torch.randn(runs, 256, 2352), torch.randn(runs, 100, 2352)
    b, g = torch.randn(runs, 100), torch.randn(runs, 256, 100)
    out, grad_w = torch.empty(runs, 256, 100), torch.empty(runs, 100, 2352)

    def per_run():
        for k in range(runs):
            torch.addmm(b[k], x[k], w[k].t(), out=out[k])
            torch.mm(g[k].t(), x[k], out=grad_w[k])

    def batched():
        torch.baddbmm(b.unsqueeze(1), x, w.transpose(1, 2))
        torch.bmm(g.transpose(1, 2), x)

    def ms(f) -> float:
        f()
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            f()
            n += 1
        return 1e3 * (time.perf_counter() - t0) / n

    a, c = ms(per_run), ms(batched)
    return (
        f"first-layer forward + weight gradient of {runs} runs, 1 thread: one product per run "
        f"{a:.2f} ms, one batched product {c:.2f} ms ({a / c:.2f}x)"
    )


def build_loops(args, seeds: list[int], log_dir: str, accelerate: bool = False):
    """A ``TrainingLoop`` per seed, built and restored as a fused group builds them.
    ``accelerate``: compile or capture each run's own step as configured, as a lone run does
    (a fused group compiles or captures its group's step instead)."""
    from debiaslab.config import TrainConfig
    from debiaslab.prepare import cached_loader
    from debiaslab.presets import find_preset
    from debiaslab.sweep import coerce
    from debiaslab.train import TrainingLoop, open_run

    preset = find_preset(args.dataset, args.percent, args.method)
    own = dict(curr_step=0, num_steps=10**6, valid_freq=10**5, progress=False, device=args.device)
    base = {**preset.config, "data_dir": args.data_dir, **own, "cpu_amp": args.bf16 or None}
    for item in getattr(args, "set", None) or []:
        key, _, value = item.partition("=")
        base[key] = coerce(key, value)
    bundle = synthetic_cifar10c() if args.dataset == "cifar10c" else None
    load, loops = cached_loader(), []
    for seed in seeds:
        cfg = TrainConfig(**{**base, "seed": seed, "exp": f"s{seed}", "log_dir": log_dir})
        opened = open_run(cfg, bundle, load)
        loop = TrainingLoop(opened.cfg, opened.bundle, opened.device, opened.run_dir)
        loop.restore(None, accelerate=accelerate)
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
    wait for "go" on stdin, time ``args.seconds`` of steps and print run-steps/s as JSON (with
    ``--arrangement packed``: also wall and kernel time per step and the peak memory). A worker
    that runs out of memory before "ready" prints ``{"error": ...}`` instead."""
    import torch

    from debiaslab.group import FusedLoop

    torch.set_num_threads(args.threads)
    cuda = torch.device(args.device).type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    with tempfile.TemporaryDirectory() as tmp:
        seeds = range(args.first_seed, args.first_seed + args.runs)
        try:
            # lone runs accelerated as fused groups are: both sides captured where one is
            loops = build_loops(args, list(seeds), tmp, accelerate=args.runs == 1)
            group = FusedLoop(loops)
            for i in range(args.warmup):
                group.step(i, 0)
            sync()
        except torch.OutOfMemoryError as e:
            print(json.dumps({"error": f"out of memory: {str(e).splitlines()[0]}"}), flush=True)
            return
        print("ready", flush=True)
        if sys.stdin.readline().strip() != "go":  # another worker failed: no window
            return
        n, t0, cpu0 = 0, time.perf_counter(), time.process_time()
        while time.perf_counter() - t0 < args.seconds or n < 2:
            group.step(args.warmup + n, 0)
            n += 1
        sync()  # steps are queued on a GPU: the window ends when they have run
        seconds, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        out = {"run_steps_per_second": args.runs * n / seconds, "seconds": seconds, "cpu": cpu}
        if args.arrangement == "packed":
            out["wall_ms_per_step"] = 1e3 * seconds / n
            if args.profile_steps and args.first_seed == 0:  # one process of a packed set
                out.update(kernel_time(group, args.warmup + n, args.profile_steps, cuda))
            out["peak_memory_bytes"] = (
                torch.cuda.max_memory_reserved()
                if cuda
                else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            )
        print(json.dumps(out), flush=True)  # before the clean-up, which is not timed


def kernel_time(group, first: int, steps: int, cuda: bool) -> dict:
    """The summed device time of the kernels ``steps`` more steps launch, per step (a GPU's;
    the CPU has none to report), from ``torch.profiler``. Profiled after the timed window:
    the profiler slows the host, not the kernels."""
    import torch

    if not cuda:
        return {"kernel_ms_per_step": None, "kernels_per_step": None}
    activities = [torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=activities) as prof:
        for i in range(steps):
            group.step(first + i, 0)
        torch.cuda.synchronize()
    events = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    return {
        "kernel_ms_per_step": sum(e.device_time_total for e in events) / 1e3 / steps,
        "kernels_per_step": len(events) / steps,
    }


def busy_seconds() -> float:
    """CPU seconds the whole machine has been busy (every process), from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")  # less idle, iowait


def measure(args, processes: int, runs: int, threads: int) -> tuple[list[float], float]:
    """``processes`` workers of ``runs`` runs and ``threads`` threads each, timed over one
    window; each worker's run-steps/s, and the cores that other processes kept busy meanwhile
    (the machine's busy time less the workers' own, over the window)."""
    results, others = measure_workers(args, processes, runs, threads)
    if any("error" in r for r in results):
        raise SystemExit(f"worker failed: {[r['error'] for r in results if 'error' in r][0]}")
    return [r["run_steps_per_second"] for r in results], others


def measure_workers(args, processes: int, runs: int, threads: int) -> tuple[list[dict], float]:
    """``measure``'s workers, each one's whole report (``{"error": ...}`` for one that failed
    before its window: then no window is timed)."""
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
            *("--device", args.device, "--arrangement", args.arrangement),
            *("--profile_steps", str(args.profile_steps)),
            *(["--set", *args.set] if args.set else []),
        ]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        procs.append(
            subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        )
    failed = []
    for proc in procs:  # every worker built and warmed up: start the window at once
        line = proc.stdout.readline().strip()
        if line != "ready":
            failed.append(json.loads(line) if line.startswith("{") else {"error": "no report"})
    if failed:  # the others are told to stop (end of their stdin) and waited for
        for proc in procs:
            proc.communicate()
        return failed, 0.0
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
    return results, others / max(r["seconds"] for r in results)


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
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument(
        "--arrangement",
        choices=("cores", "packed"),
        default=None,
        help="cores: the CPU's two arrangements (above); packed: K lone runs as packed "
        "processes against one fused group of K, with kernel time and peak memory (default: "
        "packed on a GPU, cores on the CPU)",
    )
    p.add_argument(
        "--set",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="train settings over the preset's, e.g. model=mlp batch_size=32",
    )
    p.add_argument(
        "--profile_steps", type=int, default=10, help="packed: steps profiled for kernel time"
    )
    p.add_argument(
        "--memory_fraction",
        type=float,
        default=0.85,
        help="packed on a GPU: skip a K whose fused process would need more of the GPU's memory",
    )
    p.add_argument(
        "--deadline",
        type=float,
        default=None,
        help="packed: a Unix time; no figure is started that would not end before it",
    )
    p.add_argument("--json", default=None, help="also write the figures to this file")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--runs", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--first_seed", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--method", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.arrangement is None:
        args.arrangement = "packed" if args.device.startswith("cuda") else "cores"
    if args.worker:
        return worker(args)
    import torch

    head = header(args.note)
    print("\n".join(head), flush=True)
    if args.arrangement == "packed":
        return packed_rows(args, head)
    J = args.cores
    rates = {
        f"{name} GFLOP/s, {t} thread(s)": round(matmul_rate(dtype, t), 1)
        for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16))
        for t in sorted({1, J})
    }
    print("first-layer matmul (256x2352x100): " + ", ".join(f"{k} {v}" for k, v in rates.items()))
    print(batched_against_per_run(12))
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


def packed_rows(args, head: list[str]) -> None:
    """For each method and K (ascending): K lone runs as packed processes (at most 8 at once,
    2 threads each) against one process holding a fused group of K runs (K = 1: the lone run
    alone), every run built alike; run-steps/s, wall and kernel time per step, peak memory.
    The figures go to ``--json`` after each row, so a run stopped by its deadline keeps them."""
    import torch

    cuda = args.device.startswith("cuda")
    capacity = torch.cuda.get_device_properties(0).total_memory if cuda else None
    if cuda:
        head = head + [f"device: {torch.cuda.get_device_name()}, {capacity / 2**30:.1f} GiB"]
    rows, spent = [], {}  # spent: seconds the last figure of each side took, start-up included
    print(
        f"{args.dataset} {args.percent}, run-steps/s over {args.seconds:g} s after {args.warmup} "
        "warm-up steps; per step: wall ms (timed window) / kernel ms (profiled); peak memory "
        + ("reserved on the GPU" if cuda else "resident (max RSS) per process"),
        flush=True,
    )
    for method in args.methods:
        args.method = method
        peaks: dict[int, int] = {}  # K -> the fused process's peak memory
        for k in sorted(set(args.K)):
            why = too_big(peaks, k, capacity, args.memory_fraction) or out_of_time(args, spent, k)
            if why:
                print(f"{method} K={k:3d}: skipped, and every larger K: {why}", flush=True)
                rows.append({"method": method, "K": k, "skipped": why})
                break
            row = {"method": method, "K": k}
            sides = [("lone", min(k, 8), 1)] + ([("fused", 1, k)] if k > 1 else [])
            for side, processes, runs in sides:
                t0 = time.time()
                results, _ = measure_workers(args, processes, runs, PACKED_THREADS)
                spent[side] = (time.time() - t0, k)
                errors = [r["error"] for r in results if "error" in r]
                if errors:
                    row[side] = {"processes": processes, "runs_each": runs, "error": errors[0]}
                    continue
                first = results[0]
                row[side] = {
                    "processes": processes,
                    "runs_each": runs,
                    "run_steps_per_second": round(sum(r["run_steps_per_second"] for r in results), 1),
                    "wall_ms_per_step": round(first["wall_ms_per_step"], 2),
                    "kernel_ms_per_step": _round(first.get("kernel_ms_per_step"), 2),
                    "kernels_per_step": _round(first.get("kernels_per_step"), 1),
                    "peak_memory_gib": round(max(r["peak_memory_bytes"] for r in results) / 2**30, 2),
                }  # fmt: skip
            if k == 1 and "error" not in row["lone"]:
                row["fused"] = row["lone"]  # a group of one is the lone run
            fused = row.get("fused", {})
            if "peak_memory_gib" in fused:
                peaks[k] = fused["peak_memory_gib"] * 2**30
            if "run_steps_per_second" in fused and "run_steps_per_second" in row["lone"]:
                lone_rate = row["lone"]["run_steps_per_second"]
                row["fused_over_lone"] = round(fused["run_steps_per_second"] / lone_rate, 2)
            rows.append(row)
            print(f"{method} K={k:3d}: " + describe(row), flush=True)
            if args.json:
                Path(args.json).write_text(json.dumps({"header": head, "rows": rows}, indent=2))
            if "error" in fused or "error" in row["lone"]:
                print(f"{method}: no larger K (a process failed: out of memory?)", flush=True)
                break
    print("\n".join(packed_markdown(rows)))
    print(f"load average at end: {load_average()}")
    if args.json:
        Path(args.json).write_text(json.dumps({"header": head, "rows": rows}, indent=2))


def _round(value, digits):
    return None if value is None else round(value, digits)


def too_big(peaks: dict[int, int], k: int, capacity: int | None, fraction: float) -> str | None:
    """Why K runs fused would not fit the GPU: their peak extrapolated linearly from the two
    largest K measured (from one: K times its peak), against ``fraction`` of its memory."""
    if capacity is None or not peaks:
        return None
    (k1, p1), *rest = sorted(peaks.items(), reverse=True)
    per_run = (p1 - rest[0][1]) / (k1 - rest[0][0]) if rest else p1 / k1
    predicted = p1 + per_run * (k - k1)
    if predicted <= fraction * capacity:
        return None
    return (
        f"its fused process would need ~{predicted / 2**30:.1f} GiB, over {fraction:g} of "
        f"{capacity / 2**30:.1f} GiB"
    )


def out_of_time(args, spent: dict, k: int) -> str | None:
    """Why the figures of K would not end before ``--deadline``: each side as long as its last
    figure took, scaled by K (building and capturing K runs grows with K)."""
    if args.deadline is None:
        return None
    needs = sum(seconds * max(1.0, k / k_then) for seconds, k_then in spent.values())
    needs = needs or (1 + (k > 1)) * (args.seconds + 20)  # none measured yet: ~20 s start-up
    left = args.deadline - time.time()
    return None if needs <= left else f"needs ~{needs:.0f} s, {left:.0f} s left"


def describe(row: dict) -> str:
    """One row as a line: each side's figures, and the fused side's ratio to the lone one."""
    parts = []
    for side in ("lone", "fused"):
        r = row.get(side)
        if r is None or (side == "fused" and row["K"] == 1):
            continue
        if "error" in r:
            parts.append(f"{side}: {r['error']}")
            continue
        kernel = "n/a" if r["kernel_ms_per_step"] is None else f"{r['kernel_ms_per_step']:.2f}"
        parts.append(
            f"{side} ({r['processes']} x {r['runs_each']} run{'s' if r['runs_each'] > 1 else ''}) "
            f"{r['run_steps_per_second']:8.1f} run-steps/s, per step {r['wall_ms_per_step']:.2f} "
            f"ms wall / {kernel} ms kernels, peak {r['peak_memory_gib']:.2f} GiB"
        )
    ratio = f"  ({row['fused_over_lone']:.2f}x lone)" if "fused_over_lone" in row else ""
    return "; ".join(parts) + ratio


def packed_markdown(rows: list[dict]) -> list[str]:
    """The packed rows as one table."""
    lines = [
        "| method | K | lone run-steps/s | fused run-steps/s | fused / lone | fused wall ms "
        "/ kernel ms per step | fused peak GiB |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "skipped" in r:
            lines.append(f"| {r['method']} | {r['K']} | skipped: {r['skipped']} | | | | |")
            continue
        lone, fused = r.get("lone", {}), r.get("fused", {})
        kernel = fused.get("kernel_ms_per_step")
        lines.append(
            f"| {r['method']} | {r['K']} | {lone.get('run_steps_per_second', lone.get('error'))} "
            f"| {fused.get('run_steps_per_second', fused.get('error'))} "
            f"| {r.get('fused_over_lone', '-')} "
            f"| {fused.get('wall_ms_per_step', '-')} / {'n/a' if kernel is None else kernel} "
            f"| {fused.get('peak_memory_gib', '-')} |"
        )
    return lines


if __name__ == "__main__":
    main()
