"""``debiaslab sweep``: many runs, a grid of them, trained resumably."""

from __future__ import annotations

import argparse
from pathlib import Path

from debiaslab.errors import UserError


def add_sweep_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "the grid (a config file and/or flags; a flag replaces that key everywhere in the file, "
        "sub-grids included: --seeds 1 runs every sub-grid's cells at seed 1)"
    )
    g.add_argument(
        "--config",
        default=None,
        help="TOML or JSON grid file (see docs/reproducing.md and configs/)",
    )
    g.add_argument(
        "--presets",
        nargs="+",
        default=None,
        metavar="PATTERN",
        help="run these presets (shell patterns, "
        "e.g. 'cmnist-*' or '*-disent') instead of datasets x ratios x methods",
    )
    g.add_argument("--datasets", nargs="+", default=None, help="datasets (default: cmnist)")
    g.add_argument(
        "--methods", nargs="+", default=None, help="methods (default: vanilla lff disent)"
    )
    g.add_argument(
        "--ratios",
        nargs="+",
        default=None,
        help="bias-conflicting percentages, e.g. 0.5 1 2 5 (default: the paper's for each dataset)",
    )
    g.add_argument("--seeds", nargs="+", type=int, default=None, help="seeds (default: 0)")
    g.add_argument(
        "--set",
        nargs="+",
        action="extend",
        default=[],
        metavar="KEY=V[,V...]",
        dest="set_values",
        help="any train setting, e.g. num_steps=1000 data_dir=dataset; a comma list adds an axis (lr=0.01,0.001)",
    )
    x = p.add_argument_group("execution")
    x.add_argument(
        "--out",
        default="runs",
        help="results directory; runs go to <out>/<dataset>/<method>-<ratio>-seed<seed>-<hash> (default: runs)",
    )
    x.add_argument(
        "--backend",
        choices=["local", "ray"],
        default="local",
        help="local subprocesses, or Ray tasks "
        "(needs: pip install 'debiaslab[ray]') (default: local)",
    )
    x.add_argument(
        "--jobs",
        type=int,
        default=None,
        help="local: runs (or fused groups) at once (default: 4 per GPU, as measured on an "
        "H200, or one per core on the CPU, each on one thread); CPU runs share the cores",
    )
    x.add_argument(
        "--devices",
        default="auto",
        help="local: auto, cpu, cuda (every GPU) or GPU indices such as 0,1 (default: auto)",
    )
    x.add_argument(
        "--runs_per_device",
        type=int,
        default=None,
        metavar="K",
        help="runs sharing each device at once: local, K per GPU (or K on the CPU, each with "
        "1/K of the cores); ray, each run asks for 1/K GPU. Small models leave a GPU idle "
        "between kernels, so packing runs fills it (default: 4 on a GPU, one per core on the CPU; "
        "instead of --jobs)",
    )
    x.add_argument(
        "--fuse",
        choices=("auto", "off"),
        default="auto",
        help="local: train runs that differ only in seed, data and float settings as fused "
        "groups, one process and one step per iteration for the whole group (docs/speed.md, "
        "'Fused runs'); off: one process per run (default: auto)",
    )
    x.add_argument(
        "--fuse_max",
        type=int,
        default=12,
        metavar="K",
        help="the most runs in one fused group (default: 12); groups are also split so that "
        "every job has one",
    )
    x.add_argument(
        "--address",
        default=None,
        help="ray: cluster address, e.g. ray://head:10001 or auto (default: start a local Ray)",
    )
    x.add_argument(
        "--cpus_per_run",
        type=float,
        default=None,
        help="ray: CPUs each run asks for (default: 1 with a GPU, 2 without)",
    )
    x.add_argument(
        "--gpus_per_run",
        type=float,
        default=None,
        help="ray: GPUs each run asks for (default: 1 if the cluster has GPUs, else 0)",
    )
    x.add_argument(
        "--dry_run", action="store_true", help="list the runs and their status, run nothing"
    )
    x.add_argument(
        "--no_progress",
        action="store_true",
        help="no progress bar (one line per finished run only)",
    )


def sweep_spec(args) -> dict:
    from debiaslab.sweep import load_spec_file, parse_set

    spec = load_spec_file(args.config) if args.config else {}
    for key in ("presets", "datasets", "methods", "ratios", "seeds"):
        if (
            getattr(args, key) is not None
        ):  # a flag overrides the file everywhere, sub-grids included
            spec[key] = getattr(args, key)
            for sub in spec.get("grid", []):
                sub.pop(key, None)
    if args.set_values:
        spec["set"] = {**spec.get("set", {}), **parse_set(args.set_values)}
    return spec


def cmd_sweep(args) -> int:
    from debiaslab.sweep import sweep

    if args.jobs is not None and args.jobs <= 0:
        raise UserError(f"--jobs must be positive, got {args.jobs}")
    if args.fuse_max <= 0:
        raise UserError(f"--fuse_max must be positive (1: no fusion), got {args.fuse_max}")
    return sweep(
        sweep_spec(args),
        Path(args.out),
        args.backend,
        args.jobs,
        args.devices,
        args.address,
        args.cpus_per_run,
        args.gpus_per_run,
        not args.no_progress,
        args.dry_run,
        args.runs_per_device,
        fuse_max=args.fuse_max if args.fuse == "auto" else 1,
    )


COMMANDS = [
    (
        "sweep",
        cmd_sweep,
        add_sweep_args,
        "run a grid of runs (methods x datasets x ratios x seeds x any flag), resumably",
        "Run every cell of a grid, locally in parallel or on Ray. Each run directory is named by "
        "the hash of its config: "
        "finished runs are skipped, unfinished ones resumed.",
    ),
]
