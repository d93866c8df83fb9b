"""Reading, for ``collect``: every run folder under the folders collected (and every run their
sweep plans list) as a ``Record``, grouped into the ``Cell`` of its setting and data, each cell
named by what sets it apart; with the figures of rules a run predates, replayed from its eval log."""

from __future__ import annotations

import collections
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from debiaslab.config import TrainConfig
from debiaslab.errors import UserError
from debiaslab.methods import total_steps
from debiaslab.presets import METHODS, PRESETS, RATIOS, Preset, find_preset, preset_name
from debiaslab.rundir import PLAN_FILE, RunDir
from debiaslab.selection import (
    CHOOSE_RULES,
    base_rule,
    default_selection,
    figure_reads,
    read_reasons,
    shipped_selection,
)

SHIPPED = "shipped"  # a record's value under the selection its run recorded as its default


TODAY = "today_default"  # its value under the selection today's default picks for it


ALIASES = {
    SHIPPED: "the selection each run recorded as its default (results.json default_selection)",
    TODAY: "the selection today's default picks for each run (replayed on older runs)",
}


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
        for run in RunDir.under(root):
            if any(part.startswith(".") for part in run.path.relative_to(root).parts):
                continue  # a sweep's own files (.sweep-logs), not its runs
            _add_run(run, root, found, notes)
    planned = _planned(roots, {key[0] for key in found})
    cells = _cells([*found.values(), *planned])
    if not cells:
        raise UserError(
            f"no runs under {' '.join(map(str, roots))} (a run directory holds {RunDir.CONFIG}; a "
            f"sweep folder holds {PLAN_FILE})"
        )
    _label_variants(cells)
    return Collected(_with_paper_cells(cells), notes)


def _add_run(run: RunDir, root: Path, found: dict, notes: list[str]) -> None:
    """Read one run folder into ``found``, keeping one record per config and data."""
    where = str(root / run.path.relative_to(root))
    try:
        meta = run.read_config()
        identity = _identity(meta["config"])
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        if run.looks_like_run():
            notes.append(f"{where}/{RunDir.CONFIG}: unreadable ({_why(e)}); run not counted")
        return  # else not a debiaslab run directory
    rec = _record(run, identity, meta, where)
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


def _record(run: RunDir, identity: dict, meta: dict, where: str) -> Record:
    cfg = TrainConfig.from_dict(identity)
    st, steps = run.status(), total_steps(cfg)
    data = meta.get("data") or {}
    rec = Record(
        identity["seed"],
        st,
        steps if st == "finished" else run.last_step(),
        steps,
        data_sha=tuple(sorted((data.get("sha256") or {}).items())),
        where=where,
    )
    if st != "finished":
        return rec
    try:
        res = run.read_json(RunDir.RESULTS)
        for key in ("config", "data"):  # config.json holds them too (a results.json may not)
            res[key] = res.get(key) or meta.get(key) or {}
        _read_results(rec, res, run.path, cfg.dataset)
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        rec.status, rec.problem = "unreadable", f"{where}/{RunDir.RESULTS}: {_why(e)}"
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
        records = RunDir(run_dir).read_log()
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
