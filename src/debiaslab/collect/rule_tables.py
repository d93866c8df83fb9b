"""Rendering, for ``collect``: the tables that compare selection rules: each rule's gap to the
oracle and to the last step, by data build (``--gaps``), the setting a validation rule chooses
(``--choose``), and each run's figure under each rule (``--per_run``)."""

from __future__ import annotations

import collections
import statistics

from debiaslab.collect.aggregates import (
    GAP_RULES,
    _builds,
    _gap,
    _mean,
    _runs_note,
    cell_means,
    choose,
    figure_marks,
    finished,
    union_reads,
)
from debiaslab.collect.runs import ALIASES, SHIPPED, TODAY, Cell, Collected, Record
from debiaslab.collect.tables import _marked, _pm, _signed, mark_notes, not_counted
from debiaslab.errors import UserError
from debiaslab.selection import SELECTION_RULES, TABLE_RULES, base_rule, marks, reads_text


def _build_title(build: tuple, cells: list[Cell]) -> str:
    test, twin, other = build
    palettes = sorted({str(c.identity.get("palette")) for c in cells})
    runs = sum(len(finished(c.records, "oracle_best_test")) for c in cells)
    return (
        f"### Data: test split sha256 {test[:16] or 'unknown'}"
        + (f", palette {', '.join(palettes)}" if palettes != ["None"] else "")
        + (", validation split = test split" if twin else "")
        + (f", other training splits ({other + 1})" if other else "")
        + f" ({runs} runs)"
    )


def _presets_section(cells: list[Cell]) -> list[str]:
    """Today's preset cells: what a run of the preset ships today (today's default selection,
    replayed on the committed runs) against the oracle and the last step, with a headline over
    the cells whose shipped figures read no test and no bias label."""
    table, free, marked = [], [], []
    for c in cells:
        done = finished(c.records, TODAY, "last", "oracle_best_test")
        if not c.is_preset or not done:
            continue
        mark = figure_marks(done, TODAY)
        oracle_gap, last_gap = _gap(done, TODAY, "oracle_best_test"), _gap(done, TODAY, "last")
        (marked if mark else free).append((c, oracle_gap, last_gap))
        table.append(
            f"| {c.percent or '-'} | {c.label} | {len(done)} | {_today_as(done)} | "
            + " | ".join(
                _marked(f"{_mean(done, rule):.2f}", figure_marks(done, rule))
                for rule in (TODAY, "last", "oracle_best_test")
            )
            + f" | {_marked(f'{oracle_gap:+.2f}', mark)} | {_marked(f'{last_gap:+.2f}', mark)} |"
        )
    if not table:
        return []
    return [
        "#### Today's presets: the pick a run ships today",
        "",
        _presets_headline(free, marked),
        "",
        "| ratio | method | seeds | shipped today | shipped | last | oracle | shipped − oracle "
        "| shipped − last |",
        "|---|---|---|---|---|---|---|---|---|",
        *table,
        "",
    ]


def _today_as(records: list[Record]) -> str:
    """Today's default selection of these runs, and what they recorded where it differs."""
    today = ", ".join(sorted({r.today for r in records}))
    recorded = sorted({r.shipped for r in records if r.shipped != r.today})
    return today + (f" (recorded: {', '.join(recorded)})" if recorded else "")


def _presets_headline(free: list, marked: list) -> str:
    if not free:
        return (
            f"No preset cell here has a shipped figure that read no test and no bias label "
            f"({len(marked)} cells, all marked)."
        )
    below = sorted((g, c) for c, _, g in free if g < -0.5)
    text = (
        f"Over the {len(free)} preset cells whose shipped figures read no test and no bias "
        f"label, the pick a run ships today is {statistics.fmean(o for _, o, _ in free):+.2f} "
        f"points from the oracle and {statistics.fmean(g for _, _, g in free):+.2f} from the "
        "last step on average (mean over a cell's seeds, then over cells); more than 0.5 below "
        f"the last step in {len(below)} cells"
        + (": " + ", ".join(f"{c.percent} {c.label} {g:+.2f}" for g, c in below) if below else "")
        + "."
    )
    if marked:
        text += (
            f" Not counted: {len(marked)} cells whose shipped figures read test or bias labels "
            "(marked): " + ", ".join(f"{c.percent} {c.label}" for c, _, _ in marked) + "."
        )
    return text


def _rule_summary(cells: list[Cell]) -> list[str]:
    """Each selection against the oracle and the last step, over runs and over cells, one row
    per selection and marks (figures that read test or bias labels never share a row with
    label-free ones)."""
    out = [
        "| selection | reads | runs | mean − oracle | worst run − oracle | mean − last "
        "| worst run − last | cells | mean − oracle | worst cell − last |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in GAP_RULES:
        groups = collections.defaultdict(lambda: ([], []))
        for c in cells:
            done = finished(c.records, "oracle_best_test", "last")
            have = finished(done, name)
            for r in have:
                groups[marks(r.reads.get(name))][0].append(r)
            cell_mark = figure_marks(have, name)
            if (
                have
                and len(have) == len(done)
                and all(marks(r.reads.get(name)) == cell_mark for r in have)
            ):
                groups[cell_mark][1].append(have)
        for mark, (runs, cell_runs) in sorted(groups.items()):
            out.append(_summary_row(name, mark, runs, cell_runs))
    return out + [""]


def _summary_row(name: str, mark: str, runs: list[Record], cell_runs: list[list]) -> str:
    oracle = [100 * (r.values[name] - r.values["oracle_best_test"]) for r in runs]
    last = [100 * (r.values[name] - r.values["last"]) for r in runs]
    reads = union_reads(runs, name)
    part = "| 0 | — | — |"
    if cell_runs:
        cell_oracle = [_gap(rs, name, "oracle_best_test") for rs in cell_runs]
        cell_last = [_gap(rs, name, "last") for rs in cell_runs]
        part = (
            f"| {len(cell_runs)} | {_marked(f'{statistics.fmean(cell_oracle):+.2f}', mark)} | "
            f"{_marked(f'{min(cell_last):+.2f}', mark)} |"
        )
    figures = (statistics.fmean(oracle), min(oracle), statistics.fmean(last), min(last))
    return (
        f"| {name} | {reads_text(reads)} | {len(runs)} | "
        + " | ".join(_marked(f"{v:+.2f}", mark) for v in figures)
        + f" {part}"
    )


def _per_cell(cells: list[Cell]) -> list[str]:
    per_cell = cell_means(cells)
    shown = [
        n for n in GAP_RULES if n != "oracle_best_test" and any(n in m for _, m, _ in per_cell)
    ]
    out = [
        "Per cell, each selection minus the oracle (points; the oracle itself in the last column):",
        "",
        "| dataset | ratio | method | seeds | " + " | ".join(shown) + " | oracle |",
        "|---|---|---|---|" + "---|" * (len(shown) + 1),
    ]
    for c, m, n in per_cell:
        done = finished(c.records, "oracle_best_test")
        row = [
            _marked(_signed(m[s] - m["oracle_best_test"]), figure_marks(done, s)) if s in m else "—"
            for s in shown
        ]
        oracle = _marked(f"{m['oracle_best_test']:.2f}", figure_marks(done, "oracle_best_test"))
        out.append(
            f"| {c.dataset} | {c.percent or '-'} | {c.label} | {n} | "
            + " | ".join(row)
            + f" | {oracle} |"
        )
    return out + [""]


def render_gaps(collected: Collected) -> str:
    """Each selection rule's test score minus the oracle's (and minus ``last``'s), by build: per
    preset cell for the shipped pick, per selection over runs and cells, and per cell."""
    builds = _builds(collected.cells)
    if not builds:
        raise UserError("no finished run to compare selection rules on")
    out = [
        "Primary test metric (%) of each selection minus the oracle's (`oracle_best_test`: the best "
        "test score of the same run, as papers report); `− last`: minus the raw model's last step. "
        "`shipped`: the selection each run recorded as its default. wa_*: the weight-averaged "
        "model. Over runs: every run that recorded the selection. Over cells: the mean over a "
        "cell's seeds, for cells where every run recorded it. One section per data build (runs "
        "of two builds never share an aggregate); within one, figures that read test or bias "
        "labels have rows of their own.",
        "",
    ]
    cells = [c for _, cs in builds for c in cs]
    for build, bcells in builds:
        out += [_build_title(build, bcells), ""]
        out += _presets_section(bcells)
        out += ["#### Each selection over runs and cells", "", *_rule_summary(bcells)]
        out += _per_cell(bcells)
    out += mark_notes(cells, GAP_RULES)
    out += not_counted(collected)
    return "\n".join(out).rstrip("\n") + "\n"


def _choice_score_note(rule: str) -> str:
    """What the validation score of a smoothed or fallback rule is, at its pick ('' otherwise)."""
    r = base_rule(rule)
    notes = []
    if r.window > 1:
        notes.append(f"the mean of the score over the {r.window} evaluations that end at the pick")
    if r.beats_last is not None:
        notes.append("where the rule falls back to the last evaluation, that evaluation's score")
    if not notes:
        return ""
    return (
        " The validation score of this rule: " + "; ".join(notes) + " (replayed from the eval log)."
    )


def render_choice(collected: Collected, rule: str) -> str:
    """Which setting of each (dataset, ratio, method) the validation rule ``rule`` chooses
    (``choose``).

    Per setting (a cell: its variant), the score the rule maximised at its pick and the test score
    of that pick, each the mean over the setting's finished seeds; the setting of highest mean
    validation score is chosen (the first listed on ties). The test scores are shown, never used.
    A setting with no finished run is listed with its runs' state, and the choice said provisional.
    """
    groups = choose(collected, rule)
    out = [
        f"Settings chosen by `{rule}`: {SELECTION_RULES[rule]}. Per setting: the validation score "
        "the rule maximised, at its pick, and the test score of that pick (%, mean over the "
        "seeds); the highest validation score is chosen. The test column is shown, never used."
        + _choice_score_note(rule),
        "",
        "| dataset | ratio | method | setting | seeds | validation (chosen on) | test | | runs |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for (dataset, ratio, method), choice in groups.items():
        chosen = "**chosen**" + " (provisional)" * choice.provisional
        for c, done in choice.entries:
            seeds = sorted(r.seed for r in done)
            test = statistics.fmean(100 * r.values[rule] for r in done) if done else None
            mark = figure_marks(done, rule)
            out.append(
                f"| {dataset} | {ratio} | {method} | {c.variant or 'preset'} | "
                f"{len(seeds)} ({', '.join(map(str, seeds))}) | "
                f"{_marked(_pm(choice.scores.get(id(c)), None), mark)} | "
                f"{_marked(_pm(test, None), mark)} | {chosen if choice.chosen is c else ''} | "
                f"{_runs_note(c)} |"
            )
    cells = [c for choice in groups.values() for c, _ in choice.entries]
    out += [""] + mark_notes(cells, [rule]) + not_counted(collected)
    return "\n".join(out).rstrip("\n") + "\n"


def render_runs(collected: Collected, rules: list[str] | None = None) -> str:
    """One row per finished run (seed by seed), each selection's figure with its marks."""
    rules = rules or [SHIPPED, *TABLE_RULES]
    out = [
        "Test metric per run (%)"
        + "".join(f"; `{a}`: {text}" for a, text in ALIASES.items() if a in rules)
        + ".",
        "",
        "| dataset | ratio | method | seed | " + " | ".join(rules) + " |",
        "|---|---|---|---|" + "---|" * len(rules),
    ]
    cells = [c for c in collected.cells if finished(c.records)]
    for c in cells:
        for r in finished(c.records):
            figures = [
                "—"
                if r.values.get(rule) is None
                else _marked(f"{100 * r.values[rule]:.2f}", marks(r.reads.get(rule)))
                for rule in rules
            ]
            out.append(
                f"| {c.dataset} | {c.percent or '-'} | {c.label} | {r.seed} | "
                + " | ".join(figures)
                + " |"
            )
    out += [""] + mark_notes(cells, rules) + not_counted(collected)
    return "\n".join(out).rstrip("\n") + "\n"
