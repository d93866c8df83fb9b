"""JTT's (T, lambda_up) chosen by each validation rule on a committed grid, and what the pair it
chooses scores over every seed committed for it: docs/results/cmnist_jtt_grid.md, "Chosen without
bias labels". Reads committed run folders only (eval logs replayed); trains nothing.

Per rule that scores the validation split (the label-free ones, then those that read bias labels:
``best_valid_unbiased``, the grid's stated rule, and its ``wa_`` form): the setting that
``collect GRID --choose RULE`` chooses (``debiaslab.collect.choose``: the highest validation score
the rule maximised, mean over the grid's seeds), that score and the test score of the rule's pick
there; then, over every run of that setting under GRID and the folders after it (the same config,
wherever it is committed), the test score of the rule's pick and the best test score of the same
model (``oracle_best_test``, ``wa_oracle_best_test`` for a ``wa_`` rule: the most any pick in those
runs could give), mean ± sample std over the seeds.

    python scripts/jtt_label_free_choice.py docs/results/cmnist_jtt_grid_runs \\
        docs/results/cmnist_jtt_check_runs docs/results/cmnist_later_runs
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

from debiaslab.collect import choose, figure_marks, finished, read
from debiaslab.collect.runs import _core
from debiaslab.collect.tables import _pm
from debiaslab.selection import CHOOSE_RULES, TEST_MARK, WA_PREFIX, base_rule, marks, reads_text

LABEL_FREE_FIRST = sorted(CHOOSE_RULES, key=lambda n: "valid_bias_labels" in base_rule(n).reads)


def _pair(cell) -> str:
    cfg = cell.identity
    pair = f"T={cfg['jtt_steps']}, lambda_up={cfg['jtt_upweight']}"
    return pair + (" (preset)" if cell.is_preset else "")


def _stats(records, rule: str) -> str:
    """Mean ± sample std (%) of ``rule``'s test figure over the records, with its marks."""
    vals = [100 * r.values[rule] for r in records]
    std = statistics.stdev(vals) if len(vals) > 1 else None
    mark = figure_marks(records, rule)
    return _pm(statistics.fmean(vals), std) + (f" {mark}" if mark else "")


def main(grid: Path, more: list[Path]) -> str:
    everywhere = [c for c in read(grid, *more).cells if c.method == "jtt"]
    out = [
        "Per rule: the pair it chooses on the grid (validation score the rule maximised, mean "
        "over the grid's seeds, and the test score of its pick there, %), then over every "
        "committed seed of that pair the test score of the rule's pick and the best test score of "
        "the same model (the raw model's, or the averaged model's for a wa_ rule), mean ± sample "
        "std. The test columns are shown, never used to choose.",
        "",
        "| rule | reads | pair chosen | validation (chosen on) | test | seeds of the pair | "
        "test, all seeds | best test of the same model, all seeds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    on_grid = read(grid)
    for rule in LABEL_FREE_FIRST:
        for choice in choose(on_grid, rule).values():
            cell = choice.chosen
            done = next(runs for c, runs in choice.entries if c is cell)
            mark = figure_marks(done, rule)
            grid_test = statistics.fmean(100 * r.values[rule] for r in done)
            same = [c for c in everywhere if _core(c.identity) == _core(cell.identity)]
            same = [c for c in same if c.data_sha == cell.data_sha]
            oracle = (WA_PREFIX if rule.startswith(WA_PREFIX) else "") + "oracle_best_test"
            runs = finished(same[0].records, rule, oracle) if same else []
            seeds = ", ".join(str(r.seed) for r in runs)
            out.append(
                f"| {rule} | {reads_text(base_rule(rule).reads)} | {_pair(cell)} | "
                f"{_pm(choice.scores[id(cell)], None)}{f' {mark}' if mark else ''} | "
                f"{_pm(grid_test, None)}{f' {mark}' if mark else ''} | {len(runs)} ({seeds}) | "
                f"{_stats(runs, rule)} | {_stats(runs, oracle)} |"
            )
    out += [
        "",
        f"{TEST_MARK} the figure read test labels, {marks(['valid_bias_labels'])} it read bias "
        "labels: its rule's own reads, and everything its run's training read.",
    ]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    sys.stdout.write(main(Path(sys.argv[1]), [Path(p) for p in sys.argv[2:]]))
