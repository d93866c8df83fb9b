"""A sweep's runs as subprocesses of this machine (``debiaslab sweep``'s local backend, and
``fit_many(processes=...)``): each a fused group of compatible runs or a lone run, ``jobs`` at a
time, spread over the devices and their share of the CPU cores; and the one progress view of the
whole sweep that every backend shows. Each is a ``Run`` (a name and a config; ``sweep.plan``
makes them), as every backend takes it."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from debiaslab.config import TrainConfig
from debiaslab.errors import UserError
from debiaslab.rundir import RunDir


@dataclass
class Run:
    """One run of a sweep: its name in the sweep folder and its config (which names its folder)."""

    name: str
    cfg: TrainConfig

    @property
    def run_dir(self) -> Path:
        return Path(self.cfg.run_dir())

    @property
    def folder(self) -> RunDir:
        """Its files: its status, its log, its results."""
        return RunDir(self.cfg.run_dir())


# --------------------------------------------------------------------------------------- progress
class Progress:
    """One view of the whole sweep: a bar over the steps of every run, and a line per finished run."""

    def __init__(self, runs: list[Run], enabled: bool):
        from tqdm.auto import tqdm

        from debiaslab.methods import total_steps

        self.runs = runs
        self.steps = {r.run_dir: total_steps(r.cfg) for r in runs}  # every stage's
        self.total = sum(self.steps.values())
        self.bar = tqdm(
            total=self.total,
            unit="step",
            desc="sweep",
            disable=not enabled,
            dynamic_ncols=True,
            smoothing=0.05,
        )
        self.counts = {"finished": 0, "failed": 0}
        self.running: set[str] = set()
        self.done_steps = 0

    def write(self, msg: str) -> None:
        self.bar.write(msg)

    def finish(self, run: Run, ok: bool, msg: str) -> None:
        self.counts["finished" if ok else "failed"] += 1
        self.running.discard(run.name)
        if ok:
            self.done_steps += self.steps[run.run_dir]
        self.write(
            ("done    " if ok else "FAILED  ")
            + f"{run.cfg.dataset}/{run.name}"
            + (f"  {msg}" if msg else "")
        )

    def poll(self, active: list[Run]) -> None:
        steps = self.done_steps + sum(
            min(r.folder.last_step(), self.steps[r.run_dir]) for r in active
        )
        self.bar.n = min(steps, self.total)
        self.bar.set_postfix_str(
            f"runs: {self.counts['finished']}/{len(self.runs)} done, {len(active)} running, "
            f"{self.counts['failed']} failed",
            refresh=False,
        )
        self.bar.refresh()

    def close(self) -> None:
        self.bar.close()


# ------------------------------------------------------------------------------------------ local
def parse_devices(spec: str) -> list[str]:
    """``auto`` (every GPU, else the CPU), ``cpu``, ``cuda`` (every GPU), ``0,1`` or ``cuda:0,cuda:1``."""
    import torch

    n = torch.cuda.device_count()
    spec = spec.strip().lower()
    if spec == "cpu" or (spec == "auto" and n == 0):
        return ["cpu"]
    if spec in ("auto", "cuda", "gpu"):
        if n == 0:
            raise UserError("--devices cuda: no CUDA GPU is visible; use --devices cpu")
        return [f"cuda:{i}" for i in range(n)]
    out = []
    for part in spec.split(","):
        idx = part.strip().removeprefix("cuda:")
        if not idx.isdigit():
            raise UserError(
                f"--devices {spec!r}: expected auto, cpu, cuda or GPU indices such as 0,1"
            )
        if int(idx) >= n:
            raise UserError(f"--devices: GPU {idx} does not exist ({n} visible)")
        out.append(f"cuda:{idx}")
    return out


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _error_line(log: Path) -> str:
    try:
        lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    errors = [ln for ln in lines if ln.startswith("debiaslab: error")]
    return (errors or lines or [""])[-1][:300]


def _child_env(device: str, threads: int) -> tuple[dict, str]:
    env = {**os.environ, "DEBIASLAB_THREADS": str(threads), "OMP_NUM_THREADS": str(threads)}
    src = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    if device.startswith("cuda"):
        env["CUDA_VISIBLE_DEVICES"] = device.split(":")[1]
        return env, "cuda"
    return env, "cpu"


def device_slots(devices: list[str], jobs: int) -> tuple[list[str], int]:
    """The device of each of ``jobs`` concurrent runs (round robin, so each device holds
    ``jobs / len(devices)`` of them) and the CPU threads each run gets: the cores split evenly, as
    CPU runs compute on them and GPU runs need a few for their Python."""
    return [devices[i % len(devices)] for i in range(jobs)], max(1, cpu_count() // jobs)


def fused_units(runs: list[Run], fuse_max: int, jobs: int) -> list[list[Run]]:
    """The sweep's units of work: groups of runs that train fused (``group.fusion_groups``), of
    at most ``fuse_max`` runs, each compatible set cut into at least ``jobs`` groups of even size
    where it has that many runs (so every job has a group); ``fuse_max`` 1: one run each. The
    units keep the runs' order (every cell's first seed first: a sweep cut short still covers
    the table), each in the place of its first run."""
    from debiaslab.group import fusion_groups

    if fuse_max <= 1:
        return [[r] for r in runs]
    units = []
    for members in fusion_groups([r.cfg for r in runs], len(runs)):
        parts = max(math.ceil(len(members) / fuse_max), min(jobs, len(members)))
        size = math.ceil(len(members) / parts)
        units += [members[j : j + size] for j in range(0, len(members), size)]
    return [[runs[i] for i in unit] for unit in sorted(units)]


def _ends_with_parent() -> None:
    """In a child, before it runs: SIGTERM it when its parent dies, even by SIGKILL (Linux), so
    it saves a checkpoint and stops instead of training on into folders a rerun will resume."""
    import ctypes

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _unit_name(unit: list[Run]) -> str:
    return unit[0].name + (f"+{len(unit) - 1}" if len(unit) > 1 else "")


def run_local(
    runs: list[Run],
    out: Path,
    jobs: int,
    devices: list[str],
    progress: bool,
    fuse_max: int = 1,
) -> dict:
    """Run every run in subprocesses, ``jobs`` at a time, spread over ``devices``, compatible
    runs fused in groups of at most ``fuse_max``; returns the status counts."""
    pending = fused_units(runs, fuse_max, jobs)
    jobs = max(1, min(jobs, len(pending)))  # fewer units than jobs: each gets more threads
    slots, threads = device_slots(devices, jobs)
    logs = out / ".sweep-logs"
    logs.mkdir(parents=True, exist_ok=True)
    view = Progress(runs, progress)
    active: dict[int, tuple[subprocess.Popen, list[Run], float]] = {}  # slot -> process
    free = list(range(jobs))

    def on_term(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_term) if _main_thread() else None
    try:
        while pending or active:
            while pending and free:
                unit = pending.pop(0)
                slot = free.pop(0)
                env, device = _child_env(slots[slot], threads)
                cfgs = [dataclasses.replace(r.cfg, device=device).to_dict() for r in unit]
                log = open(logs / f"{unit[0].cfg.dataset}-{_unit_name(unit)}.log", "a")
                log.write(
                    f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} {slots[slot]}, {threads} threads"
                    + (f", fused: {' '.join(r.name for r in unit)}" if len(unit) > 1 else "")
                    + "\n"
                )
                log.flush()
                arg = json.dumps(cfgs if len(unit) > 1 else cfgs[0])
                proc = subprocess.Popen(
                    [sys.executable, "-m", "debiaslab.runner", arg],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                    preexec_fn=_ends_with_parent if sys.platform.startswith("linux") else None,
                )
                log.close()
                active[slot] = (proc, unit, time.time())
            time.sleep(0.5)
            for slot, (proc, unit, t0) in list(active.items()):
                rc = proc.poll()
                if rc is None:
                    continue
                del active[slot]
                free.append(slot)
                minutes = (time.time() - t0) / 60
                log = logs / f"{unit[0].cfg.dataset}-{_unit_name(unit)}.log"
                for run in unit:  # a fused group's runs finish or fail each on its own
                    if rc == 0 or run.folder.status() == "finished":
                        view.finish(run, True, f"({minutes:.1f} min){headline(run.run_dir)}")
                    else:
                        view.finish(run, False, f"exit {rc}: {_error_line(log)} (log: {log})")
            view.poll([r for _, unit, _ in active.values() for r in unit])
    except KeyboardInterrupt:
        for proc, _, _ in active.values():
            proc.send_signal(
                signal.SIGTERM
            )  # each run saves nothing more, marks itself FAILED and stays resumable
        deadline = time.time() + 60
        for proc, _, _ in active.values():
            try:
                proc.wait(max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                proc.kill()
        view.close()
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    view.close()
    return view.counts


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def headline(run_dir: Path) -> str:
    """A finished run's last-step figure, as the line of a finished run shows it."""
    try:
        r = RunDir(run_dir).read_json(RunDir.RESULTS)
        v = r["selections"]["last"]["test_primary"]
        return f"  last-step test {r['primary_metric']}: {100 * v:.2f}%" if v is not None else ""
    except (OSError, ValueError, KeyError, TypeError):
        return ""
