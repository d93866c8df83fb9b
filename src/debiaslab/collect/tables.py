"""Rendering, for ``collect``: the results tables (markdown, CSV, LaTeX): per selection rule,
each cell's mean ± std beside the paper's number, after a first table of the shipped pick; and the
notes every table ends with (what its marks mean, runs not counted, the data's checksums)."""

from __future__ import annotations

import collections
import csv
import io

from debiaslab.collect.aggregates import Row, figure_marks, finished, rows
from debiaslab.collect.runs import ALIASES, SHIPPED, Cell, Collected, Record
from debiaslab.errors import UserError
from debiaslab.presets import LATER_SOURCES, METHODS, PAPER_SOURCE
from debiaslab.selection import (
    BIAS_MARK,
    SELECTION_RULES,
    TABLE_RULES,
    TEST_MARK,
    marks,
    reads_text,
)

TABLE_CHOICES = {**SELECTION_RULES, **ALIASES}  # what collect's tables can show


def _pm(mean, std, digits=2) -> str:
    if mean is None:
        return "—"
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if std is not None else "")


def _marked(text: str, mark: str) -> str:
    return f"{text} {mark}" if mark and text != "—" else text


def _signed(v) -> str:
    return "—" if v is None else f"{v:+.2f}"


def _method(r: Row) -> str:
    return r.method + (f" ({r.variant})" if r.variant else "")


def _uses_bias_labels(method: str) -> bool:
    from debiaslab.methods import METHODS as METHOD_CLASSES

    return method in METHOD_CLASSES and METHOD_CLASSES[method].uses_bias_labels


def _sources(cells: list[Cell]) -> str:
    """Where the paper numbers come from: DisEnt's table, and the papers of the later methods present."""
    later = [m for m in METHODS if m in LATER_SOURCES and any(c.method == m for c in cells)]
    return PAPER_SOURCE + "".join(f"; {m}: {LATER_SOURCES[m]}" for m in later)


PAPER_COLUMN = f"paper {TEST_MARK} (own data, best test)"


def mark_notes(cells: list[Cell], shown: list[str]) -> list[str]:
    """What the marks mean, and, computed from the runs, why figures of these cells read more
    than their rules do (a run's training, a validation split that is the test split)."""
    figures = [figure_marks(finished(c.records, rule), rule) for c in cells for rule in shown]
    if not any(figures):
        return []
    out = [
        f"{TEST_MARK} the figure read test labels, {BIAS_MARK} it read bias labels, ? what it read "
        "is unknown (a run without recorded checksums): its rule's own reads (each rule's title), "
        "and everything its run's training read."
    ]
    why = collections.defaultdict(list)
    for c in cells:
        for reason in dict.fromkeys(x for r in finished(c.records) for x in r.reasons):
            why[reason].append(f"{c.dataset} {c.percent or ''} {c.label}".replace("  ", " "))
    out += [f"- {reason}: {', '.join(labels)}" for reason, labels in why.items()]
    return ["\n".join(out), ""]


def not_counted(collected: Collected) -> list[str]:
    if not collected.notes:
        return []
    return [
        "Found and not counted as a separate run:",
        "",
        *[f"- {n}" for n in collected.notes],
        "",
    ]


def data_lines(cells: list[Cell]) -> list[str]:
    """The data checksums the runs were trained on (as each run's config.json recorded them), per dataset and ratio."""
    found: dict[tuple, set] = {}
    for c in cells:
        for r in c.records:
            if r.data_sha:
                found.setdefault((c.dataset, c.percent or ""), set()).add(r.data_sha)
    lines = []
    for (ds, pct), shas in sorted(found.items()):
        for sha in sorted(shas):
            lines.append(
                f"{ds} {pct}".strip()
                + ": "
                + ", ".join(f"{split} sha256 {h[:16]}" for split, h in sha)
            )
    return lines


def render(collected: Collected, fmt: str = "markdown", rules: list[str] | None = None) -> str:
    cells = collected.cells
    rules = rules or list(TABLE_RULES)
    for r in rules:
        if r not in TABLE_CHOICES:
            raise UserError(f"unknown selection rule {r!r}; choose from {', '.join(TABLE_CHOICES)}")
    metrics = sorted({r.metric for c in cells for r in c.records if r.metric}) or sorted(
        {f"{c.preset.metric} accuracy" for c in cells if c.preset}
    )
    if fmt == "csv":
        return _csv(cells, rules)
    if fmt == "latex":
        return _latex(cells, rules, metrics)
    if fmt != "markdown":
        raise UserError(f"unknown --format {fmt!r}; choose markdown, csv or latex")
    out = [
        f"Test metric: {', '.join(metrics) or 'n/a'} (%), mean ± std (sample std over seeds; none with one seed).",
        f'Paper: {_sources(cells)}; "ours − paper" compares different data and selection, see the note of each '
        "table.",
        "",
    ]
    out += _glance(cells)
    for rule in rules:
        out += [
            f"### Selection: {rule} — {TABLE_CHOICES[rule]}",
            "",
            f"| dataset | ratio | method | ours | seeds | {PAPER_COLUMN} | ours − paper | runs |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in rows(cells, rule):
            seeds = f"{r.n} ({', '.join(map(str, r.seeds))})" if r.n else "0"
            out.append(
                f"| {r.dataset} | {r.ratio} | {_method(r)} | "
                f"{_marked(_pm(r.mean, r.std), r.marks)} | {seeds} | "
                f"{_pm(r.paper_mean, r.paper_std)} | {_signed(r.diff)} | {r.runs} |"
            )
        out.append("")
    out += mark_notes(cells, [*rules, SHIPPED, "last", "oracle_best_test"])
    out += not_counted(collected)
    out += ["Data (sha256 of each split's decoded images, as recorded by every run):", ""]
    out += [f"- {line}" for line in data_lines(cells)]
    return "\n".join(out) + "\n"


def shipped_as(records: list[Record]) -> str:
    """The selections these runs recorded as their default, and today's where it differs."""
    recorded = collections.Counter(r.shipped for r in records)
    text = ", ".join(
        f"{rule}" + (f" ×{n}" if len(recorded) > 1 else "") for rule, n in sorted(recorded.items())
    )
    today = sorted({r.today for r in records if r.today != r.shipped})
    return text + (f" (today's default: {', '.join(today)})" if today else "")


def _reads_sentence(records: list[Record], rule: str) -> str:
    """What these runs' figures of ``rule`` read, counted by runs (computed, never fixed text)."""
    counts = collections.Counter(
        reads_text(r.reads.get(rule))
        + (f" ({marks(r.reads.get(rule))})" if marks(r.reads.get(rule)) else "")
        for r in records
    )
    return "; ".join(f"{text} ({n} runs)" for text, n in sorted(counts.items()))


def _glance(cells: list[Cell]) -> list[str]:
    """The table to read first: per cell, the pick each run shipped, beside the last step and
    the oracle; the tables per rule follow."""
    done = [r for c in cells for r in finished(c.records, SHIPPED)]
    if not done:
        return []
    recorded = collections.Counter(r.shipped for r in done)
    differ = sum(r.today != r.shipped for r in done)
    out = [
        "### At a glance: the shipped pick",
        "",
        "Shipped: the selection each run recorded as its default (results.json "
        "`default_selection`, what `test`, `report` and `Run.metrics()` use), here "
        + ", ".join(f"{rule} ({n} runs)" for rule, n in recorded.most_common())
        + (
            f"; today's default would pick another in {differ} runs (said in their row)"
            if differ
            else ""
        )
        + ". What the shipped figures read: "
        + _reads_sentence(done, SHIPPED)
        + ". Oracle: the best test score, the papers' rule. Per-rule tables with each cell's "
        "runs below.",
        "",
        f"| cell | shipped as | shipped | last | oracle | {PAPER_COLUMN} | oracle − paper | seeds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    by_rule = {rule: rows(cells, rule) for rule in (SHIPPED, "last", "oracle_best_test")}
    for c, ship, last, oracle in zip(cells, *by_rule.values()):
        runs = finished(c.records, SHIPPED)
        out.append(
            f"| {ship.dataset} {ship.ratio} {_method(ship)} | {shipped_as(runs) if runs else '—'} | "
            f"{_marked(_pm(ship.mean, ship.std), ship.marks)} | "
            f"{_marked(_pm(last.mean, last.std), last.marks)} | "
            f"{_marked(_pm(oracle.mean, oracle.std), oracle.marks)} | "
            f"{_pm(oracle.paper_mean, oracle.paper_std)} | {_signed(oracle.diff)} | {ship.n} |"
        )
    return out + [""]


def _csv(cells: list[Cell], rules: list[str]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(
        [
            "rule",
            "dataset",
            "ratio",
            "method",
            "variant",
            "mean",
            "std",
            "n",
            "seeds",
            "paper_mean",
            "paper_std",
            "ours_minus_paper",
            "runs",
            "uses_bias_labels",
            "reads_test_labels",
            "reads_bias_labels",
            "reads",
            "marks",
        ]
    )

    def fmt(v):
        return "" if v is None else f"{v:.4f}"

    def flag(reads, test: bool):
        if reads is None:
            return "unknown"
        return int(any(r.startswith("test_") if test else "bias" in r for r in reads))

    for rule in rules:
        for r in rows(cells, rule):
            w.writerow(
                [
                    rule,
                    r.dataset,
                    r.ratio,
                    r.method,
                    r.variant,
                    fmt(r.mean),
                    fmt(r.std),
                    r.n,
                    " ".join(map(str, r.seeds)),
                    fmt(r.paper_mean),
                    fmt(r.paper_std),
                    fmt(r.diff),
                    r.runs,
                    int(_uses_bias_labels(r.method)),
                    flag(r.reads, test=True),
                    flag(r.reads, test=False),
                    "unknown" if r.reads is None else " ".join(r.reads),
                    r.marks,
                ]
            )
    return buf.getvalue()


def _tex(s: str) -> str:
    for a, b in (
        ("\\", r"\textbackslash{}"),
        ("_", r"\_"),
        ("%", r"\%"),
        ("&", r"\&"),
        ("#", r"\#"),
        (BIAS_MARK, r"$^\dagger$"),
        (TEST_MARK, r"$^\diamond$"),
    ):
        s = s.replace(a, b)
    return s


def _latex(cells: list[Cell], rules: list[str], metrics: list[str]) -> str:
    out = [
        "% debiaslab collect: "
        + _tex(", ".join(metrics) or "n/a")
        + " (%), mean $\\pm$ std over seeds",
        "% paper: " + _tex(PAPER_SOURCE),
        "% " + _tex(f"{TEST_MARK} read test labels, {BIAS_MARK} read bias labels, ? unknown"),
    ]
    for rule in rules:
        out += [
            r"\begin{table}[t]",
            r"\centering",
            r"\begin{tabular}{lllrrrr}",
            r"\toprule",
            r"dataset & ratio & method & ours & $n$ & paper$^\diamond$ & ours $-$ paper \\",
            r"\midrule",
        ]
        for r in rows(cells, rule):
            ours = _tex(_marked(_pm(r.mean, r.std), r.marks)).replace("±", r"$\pm$")
            paper = _pm(r.paper_mean, r.paper_std).replace("±", r"$\pm$").replace("—", "--")
            out.append(
                f"{_tex(r.dataset)} & {_tex(r.ratio)} & {_tex(_method(r))} & "
                f"{ours.replace('—', '--')} & {r.n} & {paper} & "
                f"{_signed(r.diff).replace('—', '--')} \\\\"
            )
        out += [
            r"\bottomrule",
            r"\end{tabular}",
            f"\\caption{{Selection: {_tex(rule)} --- {_tex(TABLE_CHOICES[rule])}.}}",
            r"\end{table}",
            "",
        ]
    return "\n".join(out)
