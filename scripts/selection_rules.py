"""Every label-free selection rule as the pick a run would ship, on today's preset cells of the
largest data build under the folders given (Colored MNIST: docs/results), replayed from each run's
eval log, against the oracle (``oracle_best_test``) and the raw model's last step.

A cell's figure is the mean over its seeds. Where a rule picks nothing in a cell (a pseudo-unbiased
rule on a method without a biased branch: Vanilla, GroupDRO) it stands for what a default naming
it would ship there, the last step of the same model (``last``, ``wa_last`` for ``wa_*``); the
`cells` column counts the cells where the rule picked itself. Cells whose training read bias labels
(GroupDRO) are left out of the aggregates, as in the headline of ``collect --gaps``.

    python scripts/selection_rules.py docs/results
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

from debiaslab.collect import TODAY, figure_marks, finished, read
from debiaslab.collect.aggregates import _builds
from debiaslab.selection import LABEL_FREE, WA_PREFIX, base_rule, reads_text

RULES = [TODAY, *LABEL_FREE, *(WA_PREFIX + n for n in LABEL_FREE)]
PER_CELL = [
    TODAY,
    "wa_last",
    "wa_best_valid_pseudo_unbiased_or_last",
    "wa_best_valid_pseudo_unbiased_mean5",
    "wa_best_valid_pseudo_unbiased_mean5_or_last",
]


def _value(record, rule: str) -> tuple[float, bool]:
    """The record's figure (%) under ``rule``, and whether the rule picked it itself."""
    own = record.values.get(rule)
    if own is not None:
        return 100 * own, True
    return 100 * record.values[WA_PREFIX + "last" if rule.startswith(WA_PREFIX) else "last"], False


def measure(roots: list[Path]):
    """Per preset cell of the largest build: (cell, oracle, last, {rule: (mean, picked)})."""
    build, cells = _builds(read(*roots).cells)[0]
    out = []
    for c in cells:
        done = finished(c.records, "oracle_best_test", "last", TODAY)
        if not c.is_preset or not done or figure_marks(done, "last"):
            continue  # the cell's training read bias labels (GroupDRO): every figure is marked
        oracle = statistics.fmean(100 * r.values["oracle_best_test"] for r in done)
        last = statistics.fmean(100 * r.values["last"] for r in done)
        per_rule = {}
        for rule in RULES:
            got = [_value(r, rule) for r in done]
            per_rule[rule] = (statistics.fmean(v for v, _ in got), all(p for _, p in got))
        out.append((c, len(done), oracle, last, per_rule))
    return out


def tables(roots: list[Path]) -> list[str]:
    cells = measure(roots)
    out = [
        f"Over {len(cells)} preset cells (mean over a cell's seeds, then over cells); "
        "`below last`: the cells more than 0.5 points below the last step.",
        "",
        "| rule | reads | cells picked | mean − oracle | worst cell − oracle | mean − last "
        "| worst cell − last | below last |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for rule in RULES:
        to_oracle = [m[rule][0] - o for _, _, o, _, m in cells]
        to_last = [m[rule][0] - last for _, _, _, last, m in cells]
        picked = sum(m[rule][1] for *_, m in cells)
        below = sum(g < -0.5 for g in to_last)
        reads = "as each cell's default" if rule == TODAY else reads_text(base_rule(rule).reads)
        out.append(
            f"| {rule} | {reads} | {picked} | {statistics.fmean(to_oracle):+.2f} | "
            f"{min(to_oracle):+.2f} | {statistics.fmean(to_last):+.2f} | {min(to_last):+.2f} "
            f"| {below} |"
        )
    out += [
        "",
        "Per cell, minus the oracle (points; the oracle and the last step in their own columns):",
        "",
        "| ratio | method | seeds | oracle | last − oracle | " + " | ".join(PER_CELL) + " |",
        "|---|---|---|---|---|" + "---|" * len(PER_CELL),
    ]
    for c, n, oracle, last, m in cells:
        out.append(
            f"| {c.percent} | {c.label} | {n} | {oracle:.2f} | {last - oracle:+.2f} | "
            + " | ".join(f"{m[r][0] - oracle:+.2f}" for r in PER_CELL)
            + " |"
        )
    return out


if __name__ == "__main__":
    print("\n".join(tables([Path(a) for a in sys.argv[1:]] or [Path("docs/results")])))
