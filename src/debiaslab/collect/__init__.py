"""``debiaslab collect <dir>``: the results table of every run under a folder, next to the paper's.

Runs are grouped into cells (dataset, ratio, method and every other setting except the seed);
each cell shows mean ± std over its finished seeds for each selection rule, the paper's number
and the difference. Planned runs (``sweep.json``) that never started, unfinished and failed runs
are listed in the cell, never dropped; paper cells of a dataset with no run at all are shown as
not run. The output is deterministic: the same run folders always print the same table.

Reading, computing and rendering, one module each: ``runs.py`` reads the run folders into records
grouped in cells, ``aggregates.py`` computes what the tables show (rows, gaps, choices) as data,
``tables.py`` renders the results tables and ``rule_tables.py`` the tables that compare selection
rules; ``collect`` reads, then renders the table asked for.
"""

from __future__ import annotations

import sys
from pathlib import Path

from debiaslab.collect.aggregates import (
    GAP_RULES,
    Choice,
    Row,
    cell_means,
    choose,
    figure_marks,
    finished,
    rows,
    union_reads,
)
from debiaslab.collect.rule_tables import render_choice, render_gaps, render_runs
from debiaslab.collect.runs import (
    ALIASES,
    SHIPPED,
    TODAY,
    Cell,
    Collected,
    Record,
    build_of,
    data_label,
    read,
    replayed,
)
from debiaslab.collect.tables import (
    TABLE_CHOICES,
    data_lines,
    mark_notes,
    not_counted,
    render,
    shipped_as,
)


def collect(
    root: str | list[str],
    fmt: str = "markdown",
    rules: list[str] | None = None,
    gaps: bool = False,
    choose: str | None = None,
    per_run: bool = False,
) -> str:
    roots = [root] if isinstance(root, str) else root
    collected = read(*map(Path, roots))
    if per_run:
        return render_runs(collected, rules)
    if choose:
        return render_choice(collected, choose)
    if gaps:
        return render_gaps(collected)
    if fmt != "markdown":  # a CSV has no place for them: said on stderr, one line each
        for note in collected.notes:
            print(f"debiaslab collect: {note}", file=sys.stderr)
    return render(collected, fmt, rules)


__all__ = [
    "ALIASES",
    "GAP_RULES",
    "SHIPPED",
    "TABLE_CHOICES",
    "TODAY",
    "Cell",
    "Choice",
    "Collected",
    "Record",
    "Row",
    "build_of",
    "cell_means",
    "choose",
    "collect",
    "data_label",
    "data_lines",
    "figure_marks",
    "finished",
    "mark_notes",
    "not_counted",
    "read",
    "render",
    "render_choice",
    "render_gaps",
    "render_runs",
    "replayed",
    "rows",
    "shipped_as",
    "union_reads",
]
