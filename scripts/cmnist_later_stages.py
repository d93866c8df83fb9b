r"""What the stages of each run did, read from its committed records: the training samples its
first stages flagged (the ``stage_end`` record in metrics.jsonl: JTT's error set, the set
BiasEnsemble's auxiliary models flag as bias-conflicting), where in its last stage the best test
score fell (results.json), and its last step's score. Reads committed files only.

One row per finished run (a run found twice counts once, as in ``debiaslab collect``), labelled
as collect labels its cell. Every figure carries what it read: the flagged set's split into
bias-conflicting and bias-aligned samples, its precision and recall read the training split's bias
labels (†); the best test score and its step read the test labels (◊) and, through the unbiased
metric, the test bias labels (†); each figure also carries what its run's training read.

    python scripts/cmnist_later_stages.py docs/results/cmnist_jtt_grid_runs
    python scripts/cmnist_later_stages.py docs/results/cmnist_later_runs \
        --methods groupdro lff_be disent_be --ratios 0.5pct
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from debiaslab.collect import read
from debiaslab.selection import figure_reads, marks, training_reads

ORACLE = "oracle_best_test"


def _marked(text: str, mark: str) -> str:
    return f"{text} {mark}" if mark else text


def _stage_end(run_dir: Path) -> dict | None:
    """The last ``stage_end`` record of a run's eval log (the set its first stages flagged)."""
    found = None
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        if line and '"stage_end"' in line:
            record = json.loads(line)
            if record.get("kind") == "stage_end":
                found = record
    return found


def _peak(res: dict) -> str:
    """The step of the best test evaluation, counted from the start of the run's last stage."""
    stages = res.get("stages") or [{"name": "main", "steps": res["steps"]}]
    before = sum(s["steps"] for s in stages[:-1])
    step = res["selections"][ORACLE]["step"] - before
    return f"{step:,} / {stages[-1]['steps']:,}"


def row(label: str, ratio: str, seed: int, run_dir: Path) -> str:
    res = json.loads((run_dir / "results.json").read_text())
    reads = training_reads(res)
    trained = marks(reads)
    bias = marks(None if reads is None else [*reads, "train_bias_labels"])  # and the bias labels
    oracle = marks(figure_reads(res, ORACLE))
    end = _stage_end(run_dir)
    if end is None:
        flagged = ["—"] * 6
    else:
        counts, diag = end["flagged_counts"], end["flagged_diagnostics"]
        flagged = [
            end["stage"],
            _marked(f"{end['flagged']:,}", trained),
            _marked(f"{counts['flagged_conflicting']:,}", bias),
            _marked(f"{counts['flagged_aligned']:,}", bias),
            _marked(f"{diag['precision']:.2f}", bias),
            _marked(f"{diag['recall']:.2f}", bias),
        ]
    sel = res["selections"]
    cells = [
        ratio,
        label,
        str(seed),
        *flagged,
        _marked(f"{100 * sel[ORACLE]['test_primary']:.2f}", oracle),
        _marked(_peak(res), oracle),
        _marked(f"{100 * sel['last']['test_primary']:.2f}", marks(figure_reads(res, "last"))),
    ]
    return "| " + " | ".join(cells) + " |"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folders", nargs="+", type=Path, help="sweep --out folders or run folders")
    p.add_argument("--methods", nargs="+", help="only these methods (default: all)")
    p.add_argument("--ratios", nargs="+", help="only these ratios, e.g. 0.5pct (default: all)")
    args = p.parse_args()
    print(
        "Per run: the training samples its first stages flagged (at the end of the stage named), "
        "split by the training bias labels; its best test score (unbiased accuracy, %), the step "
        "of that evaluation counted from the start of the last stage (of that stage's steps), "
        "and its last step's score.\n"
    )
    print(
        "| ratio | method | seed | flagged after | flagged | of them conflicting | aligned "
        "| precision | recall | best test | at step | last |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for cell in read(*args.folders).cells:
        if args.methods and cell.method not in args.methods:
            continue
        if args.ratios and cell.percent not in args.ratios:
            continue
        for rec in sorted(cell.records, key=lambda r: r.seed):
            if rec.status == "finished":
                print(row(cell.label, cell.percent or "-", rec.seed, Path(rec.where)))
    print(
        "\n◊ the figure read test labels, † it read bias labels, ? what it read is unknown; "
        "each figure also carries what its run's training read."
    )


if __name__ == "__main__":
    main()
