"""``debiaslab collect <dir>``: the results table of every run under a folder, next to the paper's.

Runs are grouped into cells (dataset, ratio, method and every other setting except the seed);
each cell shows mean ± std over its finished seeds for each selection rule, the paper's number
and the difference. Planned runs (``sweep.json``) that never started, unfinished and failed runs
are listed in the cell, never dropped; paper cells of a dataset with no run at all are shown as
not run. The output is deterministic: the same run folders always print the same table.
"""

from __future__ import annotations

import collections
import csv
import hashlib
import io
import json
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path

from debiaslab.config import TrainConfig
from debiaslab.errors import UserError
from debiaslab.methods import total_steps
from debiaslab.presets import (
    LATER_SOURCES,
    METHODS,
    PAPER_SOURCE,
    PRESETS,
    RATIOS,
    Preset,
    find_preset,
    preset_name,
)
from debiaslab.rundir import PLAN_FILE, last_step, status
from debiaslab.selection import (
    BIAS_MARK,
    CHOOSE_RULES,
    READS,
    SELECTION_RULES,
    TABLE_RULES,
    TEST_MARK,
    base_rule,
    default_selection,
    figure_reads,
    marks,
    read_reasons,
    reads_text,
    shipped_selection,
)

SHIPPED = "shipped"  # a record's value under the selection its run recorded as its default
TODAY = "today_default"  # its value under the selection today's default picks for it
ALIASES = {
    SHIPPED: "the selection each run recorded as its default (results.json default_selection)",
    TODAY: "the selection today's default picks for each run (replayed on older runs)",
}
TABLE_CHOICES = {**SELECTION_RULES, **ALIASES}  # what collect's tables can show

# settings that identify the data's location, not the experiment: they never split a cell
NOT_A_VARIANT = {"seed", "data_dir", "manifest", "image_folder"}


@dataclass
class Record:
    seed: int
    status: str  # finished | unfinished | failed | missing | unreadable
    step: int
    num_steps: int
    values: dict = field(
        default_factory=dict
    )  # rule -> primary test metric in [0, 1] (None when the rule picked nothing)
    reads: dict = field(default_factory=dict)  # rule -> what its figure read (None: unknown)
    metric: str | None = None
    data_sha: tuple = ()
    shipped: str | None = None  # the selection the run recorded as its default (values[SHIPPED])
    today: str | None = None  # the selection today's default would ship for this run
    valid_scores: dict = field(default_factory=dict)  # rule -> the validation score it maximised
    reasons: tuple = ()  # why its figures read more than their rules do (training, shared splits)
    problem: str = ""  # why an unreadable run is not counted
    where: str = ""  # the run folder, relative to the folder collected


@dataclass
class Cell:
    dataset: str
    percent: str | None
    method: str
    identity: dict
    records: list[Record] = field(default_factory=list)
    variant: str = ""  # what sets it apart, as tables show it: its setting, then its data
    setting: str = ""  # the settings apart from its preset (or siblings), e.g. 'lr=0.001'
    data_sha: tuple = ()  # the data every run of the cell trained on (cells never mix data)

    @property
    def preset(self) -> Preset | None:
        return find_preset(self.dataset, self.percent, self.method)

    @property
    def is_preset(self) -> bool:
        """A cell of today's preset, as it trains now (no setting apart from it)."""
        return self.preset is not None and not self.setting

    @property
    def label(self) -> str:
        return self.method + (f" ({self.variant})" if self.variant else "")


@dataclass
class Collected:
    """The cells of a folder, and what was found there and not counted (one line each)."""

    cells: list[Cell]
    notes: list[str] = field(default_factory=list)


def _core(identity: dict) -> str:
    core = {k: v for k, v in identity.items() if k not in NOT_A_VARIANT}
    return hashlib.sha256(json.dumps(core, sort_keys=True, default=str).encode()).hexdigest()


def _identity(cfg: dict) -> dict:
    return TrainConfig.from_saved(cfg).identity()


def _looks_like_run(run_dir: Path) -> bool:
    return any((run_dir / n).exists() for n in ("results.json", "metrics.jsonl", "FAILED"))


def read(*roots: Path) -> Collected:
    """Every run under ``roots`` (and every run their sweep plans list), one record per run: a
    run found twice (same config hash, same data) counts once, in a cell of its data."""
    for root in roots:
        if not root.is_dir():
            raise UserError(
                f"{root} is not a folder; pass the --out folder of a sweep (or any folder holding "
                "run directories)"
            )
    found: dict[tuple, tuple[Record, dict]] = {}  # (config hash, data) -> the record kept
    notes: list[str] = []
    for root in roots:
        for cfg_path in sorted(root.rglob("config.json")):
            if any(part.startswith(".") for part in cfg_path.relative_to(root).parts):
                continue
            _add_run(cfg_path.parent, root, found, notes)
    planned = _planned(roots, {key[0] for key in found})
    cells = _cells([*found.values(), *planned])
    if not cells:
        raise UserError(
            f"no runs under {' '.join(map(str, roots))} (a run directory holds config.json; a "
            f"sweep folder holds {PLAN_FILE})"
        )
    _label_variants(cells)
    return Collected(_with_paper_cells(cells), notes)


def _add_run(run_dir: Path, root: Path, found: dict, notes: list[str]) -> None:
    """Read one run folder into ``found``, keeping one record per config and data."""
    where = str(root / run_dir.relative_to(root))
    try:
        meta = json.loads((run_dir / "config.json").read_text())
        identity = _identity(meta["config"])
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        if _looks_like_run(run_dir):
            notes.append(f"{where}/config.json: unreadable ({_why(e)}); run not counted")
        return  # else not a debiaslab run directory
    rec = _record(run_dir, identity, meta, where)
    key = (TrainConfig.from_dict(identity).config_hash(), rec.data_sha)
    if key in found:
        kept = found[key][0]
        better = _RANK[rec.status] < _RANK[kept.status]
        first, second = (rec, kept) if better else (kept, rec)
        notes.append(f"{second.where} is {first.where} again (same config and data): counted once")
        if not better:
            return
    found[key] = (rec, identity)


_RANK = {"finished": 0, "unreadable": 1, "failed": 2, "unfinished": 3, "missing": 4}


def _why(error: Exception) -> str:
    if isinstance(error, ValueError):
        return "not valid JSON: truncated?"
    return f"no {error}" if isinstance(error, KeyError) else str(error)


def _record(run_dir: Path, identity: dict, meta: dict, where: str) -> Record:
    cfg = TrainConfig.from_dict(identity)
    st, steps = status(run_dir), total_steps(cfg)
    data = meta.get("data") or {}
    rec = Record(
        identity["seed"],
        st,
        steps if st == "finished" else last_step(run_dir),
        steps,
        data_sha=tuple(sorted((data.get("sha256") or {}).items())),
        where=where,
    )
    if st != "finished":
        return rec
    try:
        res = json.loads((run_dir / "results.json").read_text())
        for key in ("config", "data"):  # config.json holds them too (a results.json may not)
            res[key] = res.get(key) or meta.get(key) or {}
        _read_results(rec, res, run_dir, cfg.dataset)
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        rec.status, rec.problem = "unreadable", f"{where}/results.json: {_why(e)}"
    return rec


def _read_results(rec: Record, res: dict, run_dir: Path, dataset: str) -> None:
    """A finished run's figures, each with what it read, and the selection it shipped."""
    recorded = {r: (s or {}).get("test_primary") for r, s in res["selections"].items()}
    rec.values = {**replayed(run_dir, dataset, exclude=recorded), **recorded}
    rec.reads = {r: figure_reads(res, r) for r in rec.values}
    rec.shipped, rec.today = shipped_selection(res), default_selection(dataset, rec.values)
    for alias, rule in ((SHIPPED, rec.shipped), (TODAY, rec.today)):
        rec.values[alias], rec.reads[alias] = rec.values.get(rule), rec.reads.get(rule)
    rec.metric = res.get("primary_metric")
    rec.valid_scores = {r: _valid_score(r, s, dataset) for r, s in res["selections"].items()}
    rec.reasons = tuple(read_reasons(res))


def _planned(roots, seen: set[str]) -> list[tuple[Record, dict]]:
    """A record for each run a sweep plan lists that has no folder yet."""
    out = []
    for plan in sorted(p for root in roots for p in root.rglob(PLAN_FILE)):
        try:
            entries = json.loads(plan.read_text())["runs"].values()
        except (ValueError, KeyError, AttributeError):
            continue
        for e in entries:
            identity = _identity(e["config"])
            cfg = TrainConfig.from_dict(identity)
            if cfg.config_hash() not in seen:
                seen.add(cfg.config_hash())
                out.append((Record(identity["seed"], "missing", 0, total_steps(cfg)), identity))
    return out


def _cells(records: list[tuple[Record, dict]]) -> list[Cell]:
    """One cell per setting and data: runs of one setting on different data (two builds) are
    two cells, never one mean. A planned run joins the first cell of its setting."""
    cells: dict[tuple, Cell] = {}
    for rec, identity in sorted(records, key=lambda pair: pair[0].status == "missing"):
        core = _core(identity)
        key = (core, rec.data_sha)
        if rec.status == "missing" or not rec.data_sha:
            key = next((k for k in cells if k[0] == core), key)
        if key not in cells:
            pct = identity["percent"] if TrainConfig.from_dict(identity).uses_percent() else None
            cells[key] = Cell(
                identity["dataset"], pct, identity["method"], identity, data_sha=rec.data_sha
            )
        cells[key].records.append(rec)
    return list(cells.values())


def _valid_score(name: str, picked: dict | None, dataset: str) -> float | None:
    """The validation score selection ``name`` maximised, at its recorded pick (None: a rule
    without one, or a smoothed rule, whose score is an average that the pick does not record:
    ``_choice`` replays it from the eval log)."""
    if not picked or name not in CHOOSE_RULES or "valid" not in picked:
        return None
    if base_rule(name).window > 1:
        return None
    return base_rule(name).score(picked["valid"], dataset)


def _eval_log(run_dir: Path) -> list[dict] | None:
    """A run's logged evaluations (metrics.jsonl), None when it has no readable log."""
    try:
        records = [
            json.loads(line)
            for line in (run_dir / "metrics.jsonl").read_text().splitlines()
            if line
        ]
    except (OSError, ValueError):
        return None
    return [r for r in records if r.get("kind") == "eval"]


def replayed(run_dir: Path, dataset: str, exclude=()) -> dict[str, float]:
    """The primary test metric each selection rule not in ``exclude`` picks, replayed from the
    run's eval log: a run finished before a rule existed is scored by it all the same (rules that
    need what its log lacks, such as the averaged model, stay absent)."""
    from debiaslab.metrics import primary_metric
    from debiaslab.selection import picks, selection_names

    names = [n for n in selection_names() if n not in exclude]
    records = _eval_log(run_dir) if names else None
    if not records:
        return {}
    chosen = picks(records, dataset, names)
    return {n: primary_metric(p["test"], dataset) for n, p in chosen.items()}


def _choice(rec: Record, rule: str, dataset: str) -> tuple[float, float]:
    """The validation score ``rule`` maximised at its pick in the finished run ``rec``, and the
    primary test metric of that pick: as recorded where its pick records both (a rule without
    smoothing), else replayed from the run's eval log. A run whose log lacks what the rule reads
    is a one-line UserError naming the run, the rule and what is missing, never a guess."""
    from debiaslab.metrics import primary_metric
    from debiaslab.selection import picks

    if rec.valid_scores.get(rule) is not None and rec.values.get(rule) is not None:
        return rec.valid_scores[rule], rec.values[rule]
    records = _eval_log(Path(rec.where))
    if not records:
        raise UserError(
            f"rule {rule!r} cannot be replayed on {rec.where}: it has no {base_rule(rule).needs()} "
            "recorded and no eval log (metrics.jsonl) to replay it from"
        )
    try:
        pick = picks(records, dataset, [rule], strict=True)[rule]
    except UserError as e:
        raise UserError(f"{rec.where}: {e}") from None
    return pick["score"], primary_metric(pick["test"], dataset)


def _label_variants(cells: list[Cell]) -> None:
    """Name what sets a cell apart from its preset (or from its siblings), e.g. 'lr=0.001,
    num_steps=1000', and, where one setting ran on several data builds, the data of each."""
    for c in cells:
        if c.preset is not None:
            ref = TrainConfig.from_dict(c.preset.config).identity()
        else:
            siblings = [
                o
                for o in cells
                if (o.dataset, o.percent, o.method) == (c.dataset, c.percent, c.method)
                and o is not c
            ]
            ref = siblings[0].identity if siblings else c.identity
        diff = [
            f"{k}={c.identity[k]}"
            for k in sorted(c.identity)
            if k not in NOT_A_VARIANT and c.identity[k] != ref.get(k)
        ]
        c.setting = c.variant = ", ".join(diff)
    by_setting = collections.defaultdict(list)
    for c in cells:
        by_setting[_core(c.identity)].append(c)
    for same in by_setting.values():
        if len(same) > 1:
            for c in same:
                c.variant = "; ".join(filter(None, [c.variant, data_label(c.data_sha)]))


def data_label(data_sha: tuple) -> str:
    """A short name of the data a run trained on: its training split's checksum, and whether its
    validation split is its test split."""
    sha = dict(data_sha)
    if not sha:
        return "data unknown"
    twin = " = test" if sha.get("valid") and sha.get("valid") == sha.get("test") else ""
    return f"data {sha.get('train', '?')[:8]}, valid{twin or ' ' + sha.get('valid', '?')[:8]}"


def build_of(c: Cell) -> tuple:
    """The build a cell's data comes from, as far as checksums tell: its test split, and whether
    its validation split is that test split (runs of one build at other ratios share both)."""
    sha = dict(c.data_sha)
    return (sha.get("test", ""), bool(sha.get("valid")) and sha.get("valid") == sha.get("test"))


def _with_paper_cells(cells: list[Cell]) -> list[Cell]:
    """Add an empty cell for every preset of the datasets and methods present, then order like the
    paper's table."""
    present = {(c.dataset, c.percent, c.method) for c in cells}
    datasets, methods = {c.dataset for c in cells}, {c.method for c in cells}
    for p in PRESETS.values():
        key = (p.dataset, p.percent, p.method)
        if p.dataset in datasets and p.method in methods and key not in present:
            if p.name != preset_name(*key):
                continue  # a named recipe (lff_code-...): the cell's paper preset stands for it
            cells.append(Cell(*key, TrainConfig.from_dict(p.config).identity()))
            present.add(key)

    def order(c: Cell):
        ds = list(RATIOS).index(c.dataset) if c.dataset in RATIOS else len(RATIOS)
        pct = float(c.percent.removesuffix("pct")) if c.percent else 0.0
        m = METHODS.index(c.method) if c.method in METHODS else len(METHODS)
        return (ds, c.dataset, pct, m, c.method, c.variant)

    return sorted(cells, key=order)


# ------------------------------------------------------------------------------------------ table
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


# ------------------------------------------------------------------------------ selection gaps
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


def _mean(records: list[Record], rule: str) -> float:
    return statistics.fmean(100 * r.values[rule] for r in records)


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
    "choose",
    "collect",
    "read",
    "render",
    "render_choice",
    "render_gaps",
    "render_runs",
    "rows",
]
