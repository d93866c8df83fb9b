"""``debiaslab report``: an HTML report of one or more runs (``debiaslab.report``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from debiaslab.errors import UserError
from debiaslab.selection import selection_names


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
        choices=selection_names(),
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


COMMANDS = [
    (
        "report",
        cmd_report,
        add_report_args,
        "an HTML report of one or more runs: curves, W detection, features, accuracy grid",
        "Write a self-contained report.html (images embedded) and its PNG figures for one or more run directories.",
    ),
]
