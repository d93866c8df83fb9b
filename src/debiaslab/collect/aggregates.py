"""Computing, for ``collect``: what its tables show, as data: a cell's figures under a rule
(``Row``), the finished runs and what their figures read, the data builds that aggregates never
mix, each selection's gap to the oracle, and the setting a validation rule chooses (``Choice``)."""

from __future__ import annotations

import collections
import statistics
from dataclasses import dataclass

from debiaslab.collect.runs import SHIPPED, TODAY, Cell, Collected, Record, _choice, build_of
from debiaslab.errors import UserError
from debiaslab.selection import CHOOSE_RULES, READS, SELECTION_RULES, marks


@dataclass
class Row:
    dataset: str
    ratio: str
    method: str
    variant: str
    mean: float | None
    std: float | None
    n: int
    seeds: list[int]
    paper_mean: float | None
    paper_std: float | None
    runs: str
    marks: str = ""  # what the figure read: ◊ test labels, † bias labels, ? unknown
    reads: list[str] | None = None  # everything its runs' figures read (None: unknown)

    @property
    def diff(self) -> float | None:
        return None if self.mean is None or self.paper_mean is None else self.mean - self.paper_mean


def _runs_note(c: Cell) -> str:
    if not c.records:
        return "not run"
    parts = []
    for st in ("finished", "unreadable", "unfinished", "failed", "missing"):
        recs = sorted((r for r in c.records if r.status == st), key=lambda r: r.seed)
        if not recs:
            continue
        if st in ("unfinished", "failed"):
            steps = ", ".join(f"seed {r.seed} at step {r.step:,}/{r.num_steps:,}" for r in recs)
            parts.append(f"{len(recs)} {st} ({steps})")
        elif st == "unreadable":
            why = ", ".join(f"seed {r.seed}: {r.problem}" for r in recs)
            parts.append(f"{len(recs)} unreadable, not counted ({why})")
        elif st == "missing":
            parts.append(f"{len(recs)} not started (seed {', '.join(str(r.seed) for r in recs)})")
        else:
            parts.append(f"{len(recs)} finished")
    return "; ".join(parts)


def finished(records: list[Record], *rules: str) -> list[Record]:
    """The finished records that hold a figure for every one of ``rules``, by seed."""
    done = [r for r in records if r.status == "finished"]
    return sorted(
        (r for r in done if all(r.values.get(rule) is not None for rule in rules)),
        key=lambda r: r.seed,
    )


def union_reads(records: list[Record], rule: str) -> list[str] | None:
    """Everything the figures of ``rule`` in these records read (None if any is unknown)."""
    each = [r.reads.get(rule) for r in records]
    if any(reads is None for reads in each):
        return None
    return [name for name in READS if any(name in reads for reads in each)]


def figure_marks(records: list[Record], rule: str) -> str:
    return marks(union_reads(records, rule)) if records else ""


def rows(cells: list[Cell], rule: str) -> list[Row]:
    out = []
    for c in cells:
        done = finished(c.records, rule)
        vals = [100 * r.values[rule] for r in done]
        p = c.preset
        out.append(
            Row(
                c.dataset,
                c.percent or "-",
                c.method,
                c.variant,
                statistics.fmean(vals) if vals else None,
                statistics.stdev(vals) if len(vals) > 1 else None,
                len(vals),
                [r.seed for r in done],
                p.paper_mean if p else None,
                p.paper_std if p else None,
                _runs_note(c),
                figure_marks(done, rule),
                union_reads(done, rule) if done else [],
            )
        )
    return out


GAP_RULES = [SHIPPED, TODAY, *SELECTION_RULES]


def _builds(cells: list[Cell]) -> list[tuple[tuple, list[Cell]]]:
    """The cells with an oracle figure, by data build, the build of most runs first: an
    aggregate never mixes runs of two builds. Checksums tell a build by its test split and
    whether its validation split is that test split; where runs of one ratio trained on several
    training splits there, the most common is that build's, each other one a build of its own."""
    done = [c for c in cells if finished(c.records, "oracle_best_test")]
    runs = collections.Counter()
    for c in done:
        runs[(build_of(c), c.dataset, c.percent, dict(c.data_sha).get("train"))] += len(c.records)

    def key(c: Cell) -> tuple:
        mine = (build_of(c), c.dataset, c.percent)
        trains = sorted((-n, k[3] or "") for k, n in runs.items() if k[:3] == mine)
        return (*build_of(c), [t for _, t in trains].index(dict(c.data_sha).get("train") or ""))

    groups = collections.defaultdict(list)
    for c in done:
        groups[key(c)].append(c)
    size = {
        b: sum(len(finished(c.records, "oracle_best_test")) for c in cs) for b, cs in groups.items()
    }
    return sorted(groups.items(), key=lambda item: (-size[item[0]], item[0]))


def _gap(records: list[Record], rule: str, against: str) -> float:
    return statistics.fmean(100 * (r.values[rule] - r.values[against]) for r in records)


def cell_means(cells: list[Cell]) -> list[tuple[Cell, dict[str, float], int]]:
    """Per cell with finished runs: each selection's mean primary test metric (%) over the seeds
    that have both it and the oracle, and the number of finished seeds."""
    out = []
    for c in cells:
        done = finished(c.records, "oracle_best_test")
        if not done:
            continue
        means = {}
        for name in GAP_RULES:
            if len(finished(done, name)) == len(done):  # fewer seeds than the oracle's: no
                means[name] = statistics.fmean(100 * r.values[name] for r in done)
        out.append((c, means, len(done)))
    return out


def _mean(records: list[Record], rule: str) -> float:
    return statistics.fmean(100 * r.values[rule] for r in records)


@dataclass
class Choice:
    """The settings of one (dataset, ratio, method) that a validation rule chooses between."""

    entries: list[tuple[Cell, list[Record]]]  # each setting and its finished runs, by seed
    scores: dict[int, float]  # id(cell) -> its runs' mean validation score (%), where it has runs

    @property
    def chosen(self) -> Cell | None:
        """The setting of highest mean validation score (the first listed on ties)."""
        best = max(self.scores, key=self.scores.get) if self.scores else None
        return next((c for c, _ in self.entries if id(c) == best), None)

    @property
    def provisional(self) -> bool:
        """Whether a setting has no finished run yet (the choice may move when it has)."""
        return len(self.scores) < len(self.entries)


def choose(collected: Collected, rule: str) -> dict[tuple, Choice]:
    """What the validation rule ``rule`` chooses between, per (dataset, ratio, method): each
    setting (a cell: its variant) with the score the rule maximised at its pick in each finished
    run, averaged over the setting's runs. Each record's ``valid_scores[rule]`` and
    ``values[rule]`` hold its run's validation score and the test score of the same pick.

    A smoothed rule (``_mean5``) is scored by its average at its pick, a fallback rule
    (``_or_last``) by the score of the evaluation it keeps; both replayed from the runs' eval
    logs. A finished run that cannot be scored by the rule (its log lacks what the rule reads,
    such as the pseudo-unbiased score of a method without a biased branch) is a one-line
    UserError naming the rule and what is missing: never left out of the choice in silence.
    """
    if rule not in CHOOSE_RULES:
        raise UserError(
            f"--choose {rule!r} does not score the validation split; choose one of "
            f"{', '.join(CHOOSE_RULES)}"
        )
    groups: dict[tuple, list] = {}
    unscored: list[str] = []  # why each finished run that the rule cannot score cannot
    for c in collected.cells:
        if c.records:
            for r in finished(c.records):
                try:
                    r.valid_scores[rule], r.values[rule] = _choice(r, rule, c.dataset)
                except UserError as e:
                    unscored.append(str(e))
            done = [r for r in finished(c.records, rule) if r.valid_scores.get(rule) is not None]
            groups.setdefault((c.dataset, c.percent or "-", c.method), []).append((c, done))
    if not any(done for entries in groups.values() for _, done in entries):
        raise UserError(
            f"no finished run here recorded a {rule} pick"
            + (f" ({unscored[0]})" if unscored else "")
            + "; run --choose on a sweep's --out folder"
        )
    if unscored:
        raise UserError(
            f"--choose {rule}: {len(unscored)} finished run(s) here cannot be scored by it, so "
            f"it cannot choose between their settings ({unscored[0]})"
        )
    out = {}
    for key, entries in groups.items():
        scores = {
            id(c): statistics.fmean(100 * r.valid_scores[rule] for r in done)
            for c, done in entries
            if done
        }
        out[key] = Choice(entries, scores)
    return out
