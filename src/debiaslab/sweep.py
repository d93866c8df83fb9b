"""``debiaslab sweep``: expand a grid of runs and execute every cell, resumably.

A grid comes from the command line and/or a small TOML / JSON file::

    datasets = ["cmnist"]                 # default: cmnist
    methods = ["vanilla", "lff", "disent"] # default: all three
    ratios = [0.5, 1, 2, 5]               # default: the dataset's ratios in the paper
    seeds = [0, 1, 2]                     # default: [0]
    presets = ["cmnist-*"]                # instead of datasets x ratios x methods: matching presets
    [set]                                 # any train flag; a list is one more axis of the grid
    num_steps = 50000
    lr = [0.01, 0.001]
    [[grid]]                              # optional: a union of sub-grids, each overriding the keys above
    ratios = [0.5]
    seeds = [0, 1, 2]

Every cell starts from its preset (the paper's hyper-parameters) when one exists. Its run goes to
``<out>/<dataset>/<method>-<ratio>-seed<seed>-<hash>``, the hash being that of the resolved config
(``TrainConfig.config_hash``): the same config always lands in the same directory, so a finished
run is skipped and an unfinished one resumes from its checkpoint when the sweep is relaunched.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from debiaslab.config import RUNTIME_FIELDS, TrainConfig
from debiaslab.errors import UserError
from debiaslab.presets import RATIOS, Preset, find_preset, match_presets
from debiaslab.rundir import PLAN_FILE, RunDir
from debiaslab.sweep_local import Run, cpu_count, parse_devices, run_local

GRID_KEYS = {"datasets", "methods", "ratios", "seeds", "presets", "set", "grid"}
FIELDS = {f.name: str(f.type) for f in dataclasses.fields(TrainConfig) if f.name != "extra"}
NOT_SETTABLE = {"log_dir", "exp", "overwrite", "method", "dataset", "percent", "seed"}


# ------------------------------------------------------------------------------------------- grid
def coerce(key: str, value):
    """A value for TrainConfig field ``key`` from TOML/JSON or a command-line string."""
    if key not in FIELDS or key in NOT_SETTABLE:
        hint = {
            "method": "methods",
            "dataset": "datasets",
            "percent": "ratios",
            "seed": "seeds",
        }.get(key)
        raise UserError(
            f"cannot set {key!r} in a sweep"
            + (
                f"; use --{hint}"
                if hint
                else f"; settable: {', '.join(sorted(set(FIELDS) - NOT_SETTABLE))}"
            )
        )
    kind = FIELDS[key]
    if isinstance(value, str):
        v = value.strip()
        if v.lower() in ("none", "null") and "None" in kind:
            return None
        try:
            if kind.startswith("bool"):
                if v.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError
                return v.lower() in ("true", "1", "yes")
            if kind.startswith("int"):
                return int(v)
            if kind.startswith("float"):
                return float(v)
        except ValueError:
            raise UserError(f"--set {key}={value}: not a valid {kind.split(' ')[0]}") from None
        return v
    if kind.startswith("float") and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def parse_set(items: list[str]) -> dict:
    """``["lr=0.01,0.001", "num_steps=1000"]`` -> ``{"lr": ["0.01", "0.001"], "num_steps": "1000"}``."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(
                f"--set {item!r}: expected KEY=VALUE or KEY=V1,V2,... (e.g. --set num_steps=1000)"
            )
        values = value.split(",")
        out[key.strip()] = values if len(values) > 1 else value
    return out


def load_spec_file(path: str) -> dict:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"sweep config {path} not found; pass a .toml or .json file")
    try:
        if p.suffix == ".json":
            spec = json.loads(p.read_text())
        else:
            import tomllib

            spec = tomllib.loads(p.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise UserError(
            f"sweep config {path} is not valid {'JSON' if p.suffix == '.json' else 'TOML'}: {e}"
        ) from None
    unknown = set(spec) - GRID_KEYS
    if unknown:
        raise UserError(
            f"sweep config {path}: unknown keys {', '.join(sorted(unknown))}; allowed: {', '.join(sorted(GRID_KEYS))}"
        )
    return spec


def _as_list(v) -> list:
    return list(v) if isinstance(v, (list, tuple)) else [v]


def _ratio(r) -> str:
    from debiaslab.data.builder import parse_pct, pct_name

    return pct_name(parse_pct(r))


def _cells(spec: dict) -> list[tuple[str, str | None, str, Preset | None]]:
    """(dataset, percent, method, preset) of one sub-grid: the presets named, or the cells of
    datasets x ratios x methods with each one's paper preset (None where there is none)."""
    if spec.get("presets"):
        found = match_presets(_as_list(spec["presets"]))
        return [(p.dataset, p.percent, p.method, p) for p in found]
    datasets = _as_list(spec.get("datasets") or ["cmnist"])
    methods = _as_list(
        spec.get("methods") or ["vanilla", "lff", "disent"]
    )  # TrainConfig.validate names unknown ones
    cells = []
    for d in datasets:
        uses_percent = TrainConfig(dataset=d).uses_percent() and not (
            spec.get("set", {}).get("manifest") or spec.get("set", {}).get("image_folder")
        )
        if not uses_percent:
            ratios = [None]
        elif spec.get("ratios"):
            ratios = [_ratio(r) for r in _as_list(spec["ratios"])]
        else:
            ratios = list(RATIOS.get(d, ("1pct",)))
        cells += [(d, r, m, find_preset(d, r, m)) for r in ratios for m in methods]
    return cells


def expand(spec: dict) -> list[TrainConfig]:
    """Every TrainConfig of the grid (a union over ``grid`` entries), without duplicates, in run order."""
    subs = spec.get("grid") or [{}]
    top = {k: v for k, v in spec.items() if k != "grid"}
    out: dict[str, TrainConfig] = {}
    for sub in _as_list(subs):
        unknown = set(sub) - (GRID_KEYS - {"grid"})
        if unknown:
            raise UserError(f"unknown grid keys {', '.join(sorted(unknown))}")
        merged = {**top, **sub, "set": {**top.get("set", {}), **sub.get("set", {})}}
        sets = {
            k: [coerce(k, x) for x in v] if isinstance(v, list) else coerce(k, v)
            for k, v in merged["set"].items()
        }
        axes = {k: v for k, v in sets.items() if isinstance(v, list)}
        fixed = {k: v for k, v in sets.items() if not isinstance(v, list)}
        seeds = [int(s) for s in _as_list(merged.get("seeds", [0]))]
        for dataset, percent, method, preset in _cells(merged):
            base = dict(preset.config) if preset else dict(dataset=dataset, method=method)
            if percent is not None:
                base["percent"] = percent
            for combo in itertools.product(*axes.values()):
                for seed in seeds:
                    cfg = TrainConfig(
                        **{
                            **base,
                            **fixed,
                            **dict(zip(axes, combo)),
                            "seed": seed,
                            "progress": False,
                        }
                    )
                    cfg.validate()
                    out.setdefault(cfg.config_hash(), cfg)
    # every cell's first seed before any cell's second: a sweep cut short still covers the table
    return sorted(out.values(), key=lambda c: c.seed)


# ------------------------------------------------------------------------------------------- plan
def run_name(cfg: TrainConfig) -> str:
    ratio = f"{cfg.percent}-" if cfg.uses_percent() else ""
    return f"{cfg.method}-{ratio}seed{cfg.seed}-{cfg.config_hash()}"


def plan(cfgs: list[TrainConfig], out: Path) -> list[Run]:
    return [
        Run(run_name(c), dataclasses.replace(c, log_dir=str(out), exp=run_name(c))) for c in cfgs
    ]


def write_plan(out: Path, runs: list[Run]) -> None:
    """Record the planned runs in ``<out>/sweep.json`` (merged with earlier sweeps into the same folder), so
    ``collect`` can show runs that never started."""
    from debiaslab.io import atomic_write_json

    path = out / PLAN_FILE
    try:
        old = json.loads(path.read_text()).get("runs", {}) if path.exists() else {}
    except ValueError:
        old = {}
    for r in runs:
        ident = r.cfg.identity()
        old[f"{r.cfg.dataset}/{r.name}"] = {
            "dataset": r.cfg.dataset,
            "percent": r.cfg.percent if r.cfg.uses_percent() else None,
            "method": r.cfg.method,
            "seed": r.cfg.seed,
            "hash": r.cfg.config_hash(),
            "num_steps": r.cfg.num_steps,
            "config": ident,
        }
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, {"runs": dict(sorted(old.items()))})


# ------------------------------------------------------------------------------------------ local
def train_fused(cfgs: list[TrainConfig], processes: int = 1, bundle=None) -> list[dict]:
    """``group.train_group`` of ``cfgs``, in this process or, with ``processes`` > 1
    (``group.default_processes`` says when it pays), in that many child processes at once, each
    a fused group of its share on its share of the threads, as a sweep runs them (its progress
    bar; each process's output in ``<log_dir>/.sweep-logs/``); then every run's results read
    back from its folder. Raises ``group.GroupFailed`` if some failed."""
    from debiaslab.group import GroupFailed, say_key_split, train_group

    if processes <= 1 or bundle is not None:
        return train_group(cfgs, bundle=bundle)
    say_key_split(cfgs)
    runs = [Run(Path(c.run_dir()).name, c) for c in cfgs]
    out = Path(cfgs[0].log_dir)
    run_local(runs, out, processes, ["cpu"], cfgs[0].progress, fuse_max=len(cfgs))
    results: list[dict | None] = []
    errors: dict[str, BaseException] = {}
    for cfg in cfgs:
        run = RunDir(cfg.run_dir())
        results.append(run.read_results())
        if results[-1] is None:
            errors[str(run)] = UserError(
                f"it failed in its process (its output: {out / '.sweep-logs'})"
            )
    if errors:
        raise GroupFailed(results, errors)
    return results


# Runs packed onto each GPU when neither --jobs nor --runs_per_device says: measured on one H200
# (benchmarks/gpu_suite.sh, docs/speed.md), 4 captured DisEnt C-CIFAR10 runs at once did 1.67x the
# run-steps/s of one (222.9 vs 133.4), 8 CMNIST runs 1.74x; each run's step is CUDA-graph
# replayed, so what packing fills is the GPU's idle time around evaluations and checkpoints.
GPU_RUNS_PER_DEVICE = 4


def default_runs_per_device(devices: list[str]) -> int:
    """Runs (or fused groups) at once on each device by default: ``GPU_RUNS_PER_DEVICE`` on
    GPUs; on the CPU one per core, each on one thread (``group.default_processes``: measured
    faster than fewer processes on more threads, docs/speed.md, "Fused runs")."""
    return GPU_RUNS_PER_DEVICE if devices and devices[0].startswith("cuda") else cpu_count()


def check_packing(
    runs_per_device: int | None, jobs: int | None, gpus_per_run: float | None
) -> None:
    """``--runs_per_device K`` says how many runs share a device; ``--jobs`` and ``--gpus_per_run``
    say it another way, so only one of them may be given."""
    if runs_per_device is None:
        return
    if runs_per_device <= 0:
        raise UserError(f"--runs_per_device must be a positive integer, got {runs_per_device}")
    for flag, value in (("--jobs", jobs), ("--gpus_per_run", gpus_per_run)):
        if value is not None:
            raise UserError(
                f"--runs_per_device and {flag} both say how many runs share a device; pass one of them"
            )


# -------------------------------------------------------------------------------------------- api
def trained_on_other_data(runs: list) -> list:
    """The finished ``runs`` whose config.json recorded data checksums other than those of the
    data their config reads now: a sweep never skips a run as done on other data. Data that
    cannot be read is not compared here (the runs that read it report it)."""
    from debiaslab.prepare import cached_loader

    load, out = cached_loader(), []
    for r in runs:
        try:
            recorded = r.folder.read_config()["data"]["sha256"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        try:
            current = load(r.cfg.resolved()).checksums()
        except UserError:
            continue
        if current != recorded:
            out.append(r)
    return out


@dataclass
class SweepOptions:
    """How a backend trains a sweep's runs (the flags of ``debiaslab sweep``)."""

    jobs: int | None = None
    devices: str = "auto"
    address: str | None = None
    cpus_per_run: float | None = None
    gpus_per_run: float | None = None
    progress: bool = True
    runs_per_device: int | None = None
    fuse_max: int = 12


def local_backend(todo: list[Run], out: Path, options: SweepOptions) -> dict:
    """Runs as subprocesses of this machine, fused where compatible (``run_local``)."""
    devs = parse_devices(options.devices)
    n_jobs = options.jobs or len(devs) * (options.runs_per_device or default_runs_per_device(devs))
    if n_jobs <= 0:
        raise UserError(f"--jobs must be positive, got {n_jobs}")
    return run_local(todo, out, n_jobs, devs, options.progress, options.fuse_max)


# Every backend, by name: backend(todo, out, options) -> {"finished": n, "failed": n}, or
# "module:function" where it lives elsewhere, imported only when a sweep asks for it (sweep_ray.py
# imports this module, and Ray is an optional dependency).
BACKENDS = {"local": local_backend, "ray": "debiaslab.sweep_ray:ray_backend"}


def _backend(name: str):
    if name not in BACKENDS:
        raise UserError(f"unknown sweep backend {name!r}; known: {', '.join(BACKENDS)}")
    backend = BACKENDS[name]
    if isinstance(backend, str):
        import importlib

        module, function = backend.split(":")
        backend = getattr(importlib.import_module(module), function)
    return backend


def sweep(
    spec: dict,
    out: Path,
    backend: str = "local",
    jobs: int | None = None,
    devices: str = "auto",
    address: str | None = None,
    cpus_per_run: float | None = None,
    gpus_per_run: float | None = None,
    progress: bool = True,
    dry_run: bool = False,
    runs_per_device: int | None = None,
    fuse_max: int = 12,
) -> int:
    """Train every run of ``spec`` into ``out`` (finished runs skipped, the others resumed);
    ``fuse_max`` > 1: compatible runs train as fused groups of at most that many (one
    subprocess per group locally, one task per group on Ray)."""
    check_packing(runs_per_device, jobs, gpus_per_run)
    cfgs = expand(spec)
    if not cfgs:
        raise UserError("the sweep grid is empty")
    runs = plan(cfgs, out)
    states = {r.name: r.folder.status() for r in runs}
    todo = [r for r in runs if states[r.name] != "finished"]
    n_resume = sum(states[r.name] in ("failed", "unfinished") for r in todo)
    print(
        f"sweep: {len(runs)} runs in {out}: {len(runs) - len(todo)} finished (skipped), {n_resume} to resume, "
        f"{len(todo) - n_resume} to start"
    )
    if dry_run:
        for r in runs:
            print(f"  {states[r.name]:10s} {r.run_dir}")
        return 0
    finished_elsewhere = trained_on_other_data([r for r in runs if states[r.name] == "finished"])
    if finished_elsewhere:
        first = finished_elsewhere[0]
        raise UserError(
            f"{len(finished_elsewhere)} finished run(s) in {out} were trained on other data than "
            f"their config reads now (e.g. {first.run_dir}); sweep into another --out to train "
            "them on this data, or remove those run folders"
        )
    write_plan(out, runs)
    if not todo:
        print(f"nothing to do; collect the table with: debiaslab collect {out}")
        return 0
    t0 = time.time()
    options = SweepOptions(
        jobs, devices, address, cpus_per_run, gpus_per_run, progress, runs_per_device, fuse_max
    )
    try:
        counts = _backend(backend)(todo, out, options)
    except KeyboardInterrupt:
        done = sum(r.folder.status() == "finished" for r in runs)
        print(
            f"sweep interrupted: {done}/{len(runs)} runs finished; the others keep their checkpoints. "
            "Rerun the same command to resume.",
            file=sys.stderr,
        )
        return 130
    print(
        f"sweep: {counts['finished']} runs finished and {counts['failed']} failed in "
        f"{(time.time() - t0) / 60:.1f} min; "
        f"table: debiaslab collect {out}"
    )
    if counts["failed"]:
        print(
            "failed runs keep their last checkpoint: fix the cause and rerun the same command to resume them",
            file=sys.stderr,
        )
        return 1
    return 0


__all__ = [
    "expand",
    "plan",
    "sweep",
    "parse_set",
    "load_spec_file",
    "RUNTIME_FIELDS",
]
