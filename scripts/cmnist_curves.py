"""Each run's test curve in four figures: the last evaluation, the mean and the range of the last 20
evaluations, and the best one (the oracle: it read test labels), per seed and as mean ± std per
cell; with --reference, beside them, the reference code's own run on a build of LfF's protocol and
palette where the project records one (``debiaslab.presets.REFERENCE_SAME_DATA``, from
paper-results.md).

Reads only the committed runs (results.json and metrics.jsonl); each figure carries the marks of
what it read (``debiaslab.selection.figure_reads``): ◊ test labels, † bias labels.

    python scripts/cmnist_curves.py docs/results/cmnist_runs
    python scripts/cmnist_curves.py docs/results/cmnist_lff_runs --percent 0.5pct --reference
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from debiaslab.metrics import primary_metric
from debiaslab.presets import METHODS, REFERENCE_SAME_DATA
from debiaslab.selection import READS, figure_reads, marks

LAST_N = 20


def union(reads: list[list[str] | None]) -> list[str] | None:
    """The labels any of these figures read (None if what one read is unknown)."""
    if any(r is None for r in reads):
        return None
    return [r for r in READS if any(r in one for one in reads)]


def run_row(results_path: Path) -> dict:
    results = json.loads(results_path.read_text())
    records = [
        json.loads(line)
        for line in (results_path.parent / "metrics.jsonl").read_text().splitlines()
        if line.strip()
    ]
    evals = [r for r in records if r.get("kind") == "eval" and "stage" not in r]
    curve = [100 * primary_metric(r["test"], results["dataset"]) for r in evals]
    best = max(range(len(curve)), key=lambda i: curve[i])  # the first best, as the oracle picks
    tail = curve[-LAST_N:]
    return {
        "cell": (results["dataset"], results["percent"], results["method"]),
        "seed": results["seed"],
        "n": len(curve),
        "last": curve[-1],
        "tail_mean": statistics.fmean(tail),
        "tail_min": min(tail),
        "tail_max": max(tail),
        "oracle": curve[best],
        "oracle_step": evals[best]["step"],
        # the last step, and any mean or range of evaluations, read what the training read
        "reads_curve": figure_reads(results, "last"),
        "reads_oracle": figure_reads(results, "oracle_best_test"),
    }


def mean_std(values: list[float]) -> str:
    if len(values) < 2:
        return f"{values[0]:.2f}"
    return f"{statistics.fmean(values):.2f} ± {statistics.stdev(values):.2f}"


def fig(text: str, reads: list[str] | None) -> str:
    mark = marks(reads)
    return f"{text} {mark}" if mark else text


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folder", type=Path, help="a folder of runs, e.g. docs/results/cmnist_runs")
    p.add_argument("--percent", nargs="+", help="only these ratios (e.g. 0.5pct)")
    p.add_argument("--method", nargs="+", help="only these methods")
    p.add_argument(
        "--reference",
        action="store_true",
        help="also print the reference code's run on a build of LfF's protocol and palette",
    )
    args = p.parse_args()

    runs = {}  # a run folder found twice counts once
    for path in sorted(args.folder.rglob("results.json")):
        runs.setdefault(path.parent.name, run_row(path))
    rows = [
        r
        for r in runs.values()
        if (not args.percent or r["cell"][1] in args.percent)
        and (not args.method or r["cell"][2] in args.method)
    ]
    cells: dict[tuple, list[dict]] = {}
    for r in sorted(
        rows,
        key=lambda r: (
            float(r["cell"][1].removesuffix("pct")),
            METHODS.index(r["cell"][2]),
            r["seed"],
        ),
    ):
        cells.setdefault(r["cell"], []).append(r)

    print(
        f"Unbiased test accuracy (%) of each run: the last evaluation, the mean and the range "
        f"(lowest to highest) of its last {LAST_N} evaluations, the best evaluation (the oracle) "
        "and its step.\n"
    )
    print(
        f"| ratio | method | seed | evaluations | last | mean of last {LAST_N} "
        f"| range of last {LAST_N} | oracle | oracle step |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    references = []
    for (dataset, percent, method), group in cells.items():
        for r in group:
            curve = r["reads_curve"]
            last, tail = f"{r['last']:.2f}", f"{r['tail_mean']:.2f}"
            spread = f"{r['tail_min']:.2f} to {r['tail_max']:.2f}"
            best = f"{r['oracle']:.2f}"
            print(
                f"| {percent} | {method} | {r['seed']} | {r['n']} | {fig(last, curve)} "
                f"| {fig(tail, curve)} | {fig(spread, curve)} "
                f"| {fig(best, r['reads_oracle'])} | {r['oracle_step']:,} |"
            )
        if len(group) > 1:
            curve = union([r["reads_curve"] for r in group])
            oracle = union([r["reads_oracle"] for r in group])
            print(
                f"| {percent} | {method} | mean ± std | | "
                f"{fig(mean_std([r['last'] for r in group]), curve)} "
                f"| {fig(mean_std([r['tail_mean'] for r in group]), curve)} | "
                f"| {fig(mean_std([r['oracle'] for r in group]), oracle)} | |"
            )
        ref = REFERENCE_SAME_DATA.get((dataset, percent, method))
        if ref and args.reference:
            references.append((percent, method, ref))
    if references:
        print(
            "\nThe reference code run unchanged on a build of LfF's protocol and palette, one "
            "seed, as paper-results.md records it (`debiaslab.presets.REFERENCE_SAME_DATA`; its "
            "log is not kept); its best evaluation read test labels:\n"
        )
        print(f"| ratio | method | last | mean of last {LAST_N} | oracle |\n|---|---|---|---|---|")
        for percent, method, ref in references:
            print(
                f"| {percent} | {method} | {ref['last']:.1f} | {ref['last20_mean']:.1f} "
                f"| {ref['oracle_best_test']:.1f} ◊ |"
            )
    print(
        "\n◊ the figure read test labels, † it read bias labels, ? what it read is unknown; "
        "a mean or range of evaluations reads what the run's training read."
    )


if __name__ == "__main__":
    main()
