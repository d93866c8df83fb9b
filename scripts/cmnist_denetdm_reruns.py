"""Ours on DeNetDM's build of Colored MNIST beside DeNetDM's own table (its re-runs of ERM, LfF and
DisEnt on that build, and its own result), with the differences, per selection rule.

    python scripts/cmnist_denetdm_reruns.py

Reads the committed runs of docs/results/cmnist_denetdm_runs (through `collect`, so a run found
twice counts once and every figure carries what it read) and the published figures in
docs/results/published/cmnist_denetdm.csv. Prints a markdown table (docs/results/cmnist_denetdm.md).
"""

from __future__ import annotations

import csv
from pathlib import Path
from statistics import mean

from debiaslab.collect import finished, read, union_reads
from debiaslab.selection import marks

ROOT = Path(__file__).resolve().parents[1]
RUNS = ROOT / "docs" / "results" / "cmnist_denetdm_runs"
PUBLISHED = ROOT / "docs" / "results" / "published" / "cmnist_denetdm.csv"
RATIOS = ("0.5pct", "1pct", "2pct", "5pct")
RULES = ("last", "shipped", "oracle_best_test")
# DeNetDM's validation split is its test split: whatever it selected on read test labels
PUBLISHED_READS = ["test_labels"]


def merged(*reads) -> list[str] | None:
    """What a figure computed from figures with these reads read (None: unknown)."""
    if any(r is None for r in reads):
        return None
    return sorted({x for r in reads for x in r})


def main() -> None:
    with PUBLISHED.open(newline="") as f:
        theirs = {row["ours"]: row for row in csv.DictReader(f)}
    sources = sorted({row["source"] for row in theirs.values()})  # one source
    cells = [c for c in read(RUNS).cells if c.method in theirs and c.percent in RATIOS]
    cells.sort(key=lambda c: (RATIOS.index(c.percent), list(theirs).index(c.method), c.label))
    print(
        "Unbiased test accuracy (%) on DeNetDM's build, ours (docs/results/cmnist_denetdm_runs; "
        "mean over the seeds listed) beside DeNetDM's table (docs/results/published/"
        "cmnist_denetdm.csv), and ours minus theirs under each rule. `shipped`: the selection "
        "each run recorded as its default."
    )
    for source in sources:
        print(f"Published: {source}.")
    print()
    head = ["ratio", "ours", "seeds", "shipped as", "last", "shipped", "oracle_best_test"]
    head += ["DeNetDM's table ◊", "its row"] + [f"{rule} − theirs" for rule in RULES]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for c in cells:
        runs = finished(c.records, *RULES)
        if not runs:
            continue
        pub = float(theirs[c.method][c.percent])
        row = [c.percent, c.label, ", ".join(str(r.seed) for r in runs)]
        row.append(", ".join(sorted({r.shipped for r in runs})))
        diffs = []
        for rule in RULES:
            value = 100 * mean(r.values[rule] for r in runs)
            reads = union_reads(runs, rule)
            row.append(f"{value:.2f} {marks(reads)}".strip())
            diffs.append(f"{value - pub:+.2f} {marks(merged(reads, PUBLISHED_READS))}".strip())
        row += [f"{pub:.2f}", f"{theirs[c.method]['method']} ({theirs[c.method]['what']})"] + diffs
        print("| " + " | ".join(row) + " |")
    shared = all(dict(c.data_sha).get("valid") == dict(c.data_sha).get("test") for c in cells)
    print()
    print(
        "◊ the figure read test labels, † it read bias labels, ? unknown: each of ours reads what "
        "its rule reads and what its run's training read"
        + (
            "; in every run here the validation split is the test split (same sha256), so what "
            "reads validation labels reads test labels"
            if shared
            else ""
        )
        + ". DeNetDM's figures are marked ◊ (its validation split is its test split), and so is "
        "every difference with them."
    )


if __name__ == "__main__":
    main()
