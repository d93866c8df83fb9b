"""``debiaslab sweep``, ``collect`` and ``report``: many runs, their table, their report."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from debiaslab.errors import UserError
from debiaslab.selection import CHOOSE_RULES, TABLE_RULES, selection_names


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

    if args.backend == "ray":
        import debiaslab.sweep_ray  # noqa: F401  (registers the ray backend)

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


def cmd_report(args) -> int:
    from debiaslab.report import make_report

    if args.max_points <= 1:
        raise UserError(f"--max_points must be at least 2, got {args.max_points}")
    path = make_report(
        args.runs,
        Path(args.output) if args.output else None,
        args.select,
        args.tsne,
        args.device,
        args.max_points,
    )
    print(f"report written to {path} (figures beside it)")
    return 0


def cmd_collect(args) -> int:
    from debiaslab.collect import collect
    from debiaslab.io import atomic_write_bytes

    if args.gaps and (args.format != "markdown" or args.rules):
        raise UserError(
            "--gaps prints its own markdown table of every rule; drop --format / --rules"
        )
    if args.choose and (args.gaps or args.format != "markdown" or args.rules):
        raise UserError(
            "--choose prints its own markdown table of one rule; drop --gaps / --format / --rules"
        )
    if args.per_run and (args.gaps or args.choose or args.format != "markdown"):
        raise UserError(
            "--per_run prints its own markdown table; drop --gaps / --choose / --format"
        )
    text = collect(
        args.dir, args.format, args.rules, gaps=args.gaps, choose=args.choose, per_run=args.per_run
    )
    if args.into:
        from debiaslab.docblocks import replace_block

        page = replace_block(Path(args.into), text, lambda command: _same_collect(command, args))
        atomic_write_bytes(Path(args.into), page.encode())
        print(f"table updated in {args.into}")
    elif args.output:
        atomic_write_bytes(Path(args.output), text.encode())
        print(f"table written to {args.output}")
    else:
        sys.stdout.write(text)
    return 0


def _same_collect(command: str, args) -> bool:
    """Whether a docs block's ``command`` is this collect (same folder and table), whatever its
    --into / --output."""
    import shlex

    argv = shlex.split(command)
    if argv[:2] != ["debiaslab", "collect"]:
        return False
    parser = argparse.ArgumentParser(add_help=False)
    add_collect_args(parser)
    other = parser.parse_args(argv[2:])
    fields = ("format", "rules", "gaps", "choose", "per_run")
    same = [Path(d).resolve() for d in other.dir] == [Path(d).resolve() for d in args.dir]
    return same and all(getattr(other, f) == getattr(args, f) for f in fields)


RULE_CHOICES = selection_names()


def add_report_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "runs", nargs="+", help="run directories (several: curves overlaid and a summary table)"
    )
    p.add_argument(
        "--output",
        default=None,
        help="folder for report.html and the PNGs (default: <run_dir>/report for one "
        "run, ./report for several)",
    )
    p.add_argument(
        "--select",
        default=None,
        choices=RULE_CHOICES,
        help="the checkpoint the feature and accuracy-grid figures use (default: the one each "
        "run ships, its results.json default_selection)",
    )
    p.add_argument(
        "--tsne",
        action="store_true",
        help="add a t-SNE projection of the features (slower) to the PCA one",
    )
    p.add_argument("--device", default="cpu", help="device for extracting features (default: cpu)")
    p.add_argument(
        "--max_points",
        type=int,
        default=2000,
        help="test samples per projection plot (default: 2000)",
    )


def add_collect_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "dir",
        nargs="+",
        help="sweep --out folders, or any folders holding run directories (a run found in two "
        "counts once)",
    )
    p.add_argument(
        "--format",
        choices=["markdown", "csv", "latex"],
        default="markdown",
        help="output format (default: markdown)",
    )
    p.add_argument(
        "--rules",
        nargs="+",
        default=None,
        choices=[*RULE_CHOICES, "shipped", "today_default"],
        metavar="RULE",
        help=f"selection rules to show, of {', '.join(RULE_CHOICES)} (default: {' '.join(TABLE_RULES)})",
    )
    p.add_argument(
        "--gaps",
        action="store_true",
        help="instead of the results tables: each selection rule's "
        "test score minus the oracle's and minus last's, per cell and over cells (runs from before a "
        "rule existed are replayed from their eval logs)",
    )
    p.add_argument(
        "--choose",
        default=None,
        choices=CHOOSE_RULES,
        metavar="RULE",
        help="instead of the results tables: for each dataset, ratio and method, the setting "
        "(e.g. of a hyperparameter grid) whose runs score highest on the validation score RULE "
        f"maximises, of {', '.join(CHOOSE_RULES)}; the test scores are shown, never used",
    )
    p.add_argument(
        "--per_run",
        action="store_true",
        help="instead of the results tables: one row per finished run (seed by seed), a column "
        "per rule of --rules (default: shipped and the table rules), each figure marked by what "
        "it read",
    )
    p.add_argument("--output", default=None, help="write to this file instead of stdout")
    p.add_argument(
        "--into",
        default=None,
        metavar="DOC",
        help="write the table into DOC (e.g. docs/results/cmnist.md), in the block that names "
        "this command ('<!-- figures: debiaslab collect ... -->' ... '<!-- /figures -->'); the "
        "rest of DOC stays",
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
    (
        "collect",
        cmd_collect,
        add_collect_args,
        "the results table of every run under a folder, beside the paper's numbers",
        "Read every run under DIR and print mean ± std over seeds per cell, one table per "
        "selection rule, with the paper's "
        "number and the difference; missing and unfinished runs are shown as such.",
    ),
    (
        "report",
        cmd_report,
        add_report_args,
        "an HTML report of one or more runs: curves, W detection, features, accuracy grid",
        "Write a self-contained report.html (images embedded) and its PNG figures for one or more run directories.",
    ),
]
