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
    CHOOSE_RULES,
    SELECTION_RULES,
    TABLE_RULES,
    base_rule,
    default_selection,
)

SHIPPED = "shipped"  # a record's value under the selection its run ships by default

RULE_TITLES = {
    "last": "last step (no model selection)",
    "best_valid": "best validation accuracy (no bias labels needed)",
    "best_valid_unbiased": "best unbiased validation accuracy (uses the validation split's bias labels)",
    "oracle_best_test": "ORACLE best test accuracy (how the paper selected; not a valid model selection)",
}
# settings that identify the data's location, not the experiment: they never split a cell
NOT_A_VARIANT = {"seed", "data_dir", "manifest", "image_folder"}


@dataclass
class Record:
    seed: int
    status: str  # finished | unfinished | failed | missing
    step: int
    num_steps: int
    values: dict = field(
        default_factory=dict
    )  # rule -> primary test metric in [0, 1] (None when the rule picked nothing)
    metric: str | None = None
    data_sha: tuple = ()
    shipped: str | None = None  # the selection the run ships by default (values["shipped"])
    valid_scores: dict = field(default_factory=dict)  # rule -> the validation score it maximised


@dataclass
class Cell:
    dataset: str
    percent: str | None
    method: str
    identity: dict
    records: list[Record] = field(default_factory=list)
    variant: str = ""

    @property
    def preset(self) -> Preset | None:
        return find_preset(self.dataset, self.percent, self.method)


def _cell_key(identity: dict) -> str:
    core = {k: v for k, v in identity.items() if k not in NOT_A_VARIANT}
    return hashlib.sha256(json.dumps(core, sort_keys=True, default=str).encode()).hexdigest()


def _identity(cfg: dict) -> dict:
    return TrainConfig.from_saved(cfg).identity()


def read(root: Path) -> list[Cell]:
    if not root.is_dir():
        raise UserError(
            f"{root} is not a folder; pass the --out folder of a sweep (or any folder holding run directories)"
        )
    cells: dict[str, Cell] = {}
    seen: set[str] = set()

    def cell_for(identity: dict) -> Cell:
        key = _cell_key(identity)
        if key not in cells:
            pct = identity["percent"] if TrainConfig.from_dict(identity).uses_percent() else None
            cells[key] = Cell(identity["dataset"], pct, identity["method"], identity)
        return cells[key]

    for cfg_path in sorted(root.rglob("config.json")):
        run_dir = cfg_path.parent
        if any(part.startswith(".") for part in run_dir.relative_to(root).parts):
            continue
        try:
            meta = json.loads(cfg_path.read_text())
            identity = _identity(meta["config"])
        except (ValueError, KeyError, TypeError):
            continue  # not a debiaslab run directory
        cfg = TrainConfig.from_dict(identity)
        seen.add(cfg.config_hash())
        st = status(run_dir)
        steps = total_steps(cfg)
        rec = Record(
            identity["seed"],
            st,
            steps if st == "finished" else last_step(run_dir),
            steps,
            data_sha=tuple(sorted((meta.get("data") or {}).get("sha256", {}).items())),
        )
        if st == "finished":
            try:
                res = json.loads((run_dir / "results.json").read_text())
                rec.values = {
                    r: (s or {}).get("test_primary") for r, s in res["selections"].items()
                }
                rec.values = {**replayed(run_dir, cfg.dataset, exclude=rec.values), **rec.values}
                rec.shipped = default_selection(cfg.dataset, rec.values)
                rec.values[SHIPPED] = rec.values.get(rec.shipped)
                rec.metric = res.get("primary_metric")
                rec.valid_scores = {
                    r: _valid_score(r, s, cfg.dataset) for r, s in res["selections"].items()
                }
            except (ValueError, KeyError, TypeError):
                rec.status = "unfinished"
        cell_for(identity).records.append(rec)
    for plan in sorted(root.rglob(PLAN_FILE)):
        try:
            entries = json.loads(plan.read_text())["runs"].values()
        except (ValueError, KeyError, AttributeError):
            continue
        for e in entries:
            identity = _identity(e["config"])
            cfg = TrainConfig.from_dict(identity)
            if cfg.config_hash() not in seen:
                seen.add(cfg.config_hash())
                cell_for(identity).records.append(
                    Record(identity["seed"], "missing", 0, total_steps(cfg))
                )
    if not cells:
        raise UserError(
            f"no runs under {root} (a run directory holds config.json; a sweep folder holds {PLAN_FILE})"
        )
    _label_variants(list(cells.values()))
    return _with_paper_cells(list(cells.values()))


def _valid_score(name: str, picked: dict | None, dataset: str) -> float | None:
    """The validation score selection ``name`` maximised, at its pick (None: a rule without one)."""
    if not picked or name not in CHOOSE_RULES or "valid" not in picked:
        return None
    return base_rule(name).score(picked["valid"], dataset)


def replayed(run_dir: Path, dataset: str, exclude=()) -> dict[str, float]:
    """The primary test metric each selection rule not in ``exclude`` picks, replayed from the
    run's eval log: a run finished before a rule existed is scored by it all the same (rules that
    need what its log lacks, such as the averaged model, stay absent)."""
    from debiaslab.metrics import primary_metric
    from debiaslab.selection import picks, selection_names

    names = [n for n in selection_names() if n not in exclude]
    if not names:
        return {}
    try:
        records = [
            json.loads(line)
            for line in (run_dir / "metrics.jsonl").read_text().splitlines()
            if line
        ]
    except (OSError, ValueError):
        return {}
    chosen = picks([r for r in records if r.get("kind") == "eval"], dataset, names)
    return {n: primary_metric(p["test"], dataset) for n, p in chosen.items()}


def _label_variants(cells: list[Cell]) -> None:
    """Name what sets a cell apart from its preset (or from its siblings), e.g. 'lr=0.001, num_steps=1000'."""
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
            if not siblings:
                continue
            ref = siblings[0].identity
        diff = [
            f"{k}={c.identity[k]}"
            for k in sorted(c.identity)
            if k not in NOT_A_VARIANT and c.identity[k] != ref.get(k)
        ]
        c.variant = ", ".join(diff)


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
    mixed_data: bool
    marks: str = ""  # † trains on bias labels, ◊ reads test labels in training

    @property
    def diff(self) -> float | None:
        return None if self.mean is None or self.paper_mean is None else self.mean - self.paper_mean


def _runs_note(c: Cell) -> str:
    if not c.records:
        return "not run"
    parts = []
    for st in ("finished", "unfinished", "failed", "missing"):
        recs = [r for r in c.records if r.status == st]
        if not recs:
            continue
        if st in ("unfinished", "failed"):
            steps = ", ".join(
                f"seed {r.seed} at step {r.step:,}/{r.num_steps:,}"
                for r in sorted(recs, key=lambda r: r.seed)
            )
            parts.append(f"{len(recs)} {st} ({steps})")
        elif st == "missing":
            parts.append(
                f"{len(recs)} not started (seed {', '.join(str(r.seed) for r in sorted(recs, key=lambda r: r.seed))})"
            )
        else:
            parts.append(f"{len(recs)} finished")
    return "; ".join(parts)


def rows(cells: list[Cell], rule: str) -> list[Row]:
    out = []
    for c in cells:
        done = sorted(
            (r for r in c.records if r.status == "finished" and r.values.get(rule) is not None),
            key=lambda r: r.seed,
        )
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
                _mixed_data(done),
                _marks(c),
            )
        )
    return out


def _pm(mean, std, digits=2) -> str:
    if mean is None:
        return "—"
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if std is not None else "")


def _signed(v) -> str:
    return "—" if v is None else f"{v:+.2f}"


def _method(r: Row) -> str:
    return r.method + r.marks + (f" ({r.variant})" if r.variant else "")


def _marks(c: Cell) -> str:
    """' †' for a method that trains on bias labels, ' ◊' for a run whose training reads test
    labels (an oracle option such as DeNetDM's test-picked stage 1)."""
    return (" †" if _uses_bias_labels(c.method) else "") + (" ◊" if _reads_test_labels(c) else "")


def _reads_test_labels(c: Cell) -> bool:
    from debiaslab.methods import METHODS as METHOD_CLASSES

    if c.method not in METHOD_CLASSES:
        return False
    return METHOD_CLASSES[c.method].reads_test_labels(TrainConfig.from_dict(c.identity))


def _uses_bias_labels(method: str) -> bool:
    from debiaslab.methods import METHODS as METHOD_CLASSES

    return method in METHOD_CLASSES and METHOD_CLASSES[method].uses_bias_labels


def _sources(cells: list[Cell]) -> str:
    """Where the paper numbers come from: DisEnt's table, and the papers of the later methods present."""
    later = [m for m in METHODS if m in LATER_SOURCES and any(c.method == m for c in cells)]
    return PAPER_SOURCE + "".join(f"; {m}: {LATER_SOURCES[m]}" for m in later)


def _mixed_data(records: list[Record]) -> bool:
    """Whether these runs trained on different data (their recorded checksums differ)."""
    return len({r.data_sha for r in records}) > 1


MIXED_DATA_NOTE = "‡ the seeds of this cell were trained on different data (checksums differ)."
BIAS_LABEL_NOTE = (
    "† trains on the bias labels of its training split (an upper-bound reference, not comparable with "
    "the label-free methods)."
)
TEST_LABEL_NOTE = (
    "◊ reads test labels while training (an oracle option, e.g. DeNetDM's stage 1 picked on the test "
    "split as its authors do): every rule of such a run, the label-free ones included, saw them."
)


def _label_notes(cells: list[Cell]) -> list[str]:
    notes = [BIAS_LABEL_NOTE] * any(_uses_bias_labels(c.method) for c in cells)
    return notes + [TEST_LABEL_NOTE] * any(_reads_test_labels(c) for c in cells)


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


def render(cells: list[Cell], fmt: str = "markdown", rules: list[str] | None = None) -> str:
    rules = rules or list(TABLE_RULES)
    for r in rules:
        if r not in SELECTION_RULES:
            raise UserError(
                f"unknown selection rule {r!r}; choose from {', '.join(SELECTION_RULES)}"
            )
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
            f"### Selection: {rule} — {RULE_TITLES.get(rule) or SELECTION_RULES[rule]}",
            "",
            "| dataset | ratio | method | ours | seeds | paper (own data, best test) | ours − paper | runs |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in rows(cells, rule):
            seeds = f"{r.n} ({', '.join(map(str, r.seeds))})" if r.n else "0"
            out.append(
                f"| {r.dataset} | {r.ratio} | {_method(r)} | "
                f"{_pm(r.mean, r.std)}{' ‡' if r.mixed_data else ''} | {seeds} | "
                f"{_pm(r.paper_mean, r.paper_std)} | {_signed(r.diff)} | {r.runs} |"
            )
        out.append("")
    if any(r.mixed_data for rule in rules for r in rows(cells, rule)):
        out += [MIXED_DATA_NOTE, ""]
    for note in _label_notes(cells):
        out += [note, ""]
    out += ["Data (sha256 of each split's decoded images, as recorded by every run):", ""]
    out += [f"- {line}" for line in data_lines(cells)]
    return "\n".join(out) + "\n"


def _glance(cells: list[Cell]) -> list[str]:
    """The table to read first: per cell, the pick each run ships by default (no test label),
    beside the last step and the papers' oracle; the tables per rule follow."""
    shipped = collections.Counter(r.shipped for c in cells for r in c.records if r.shipped)
    if not shipped:
        return []
    out = [
        "### At a glance: the shipped pick",
        "",
        "Shipped: the selection each run ships by default (results.json `default_selection`, "
        "what `test`, `report` and `Run.metrics()` use; it reads no test label), here "
        + ", ".join(f"{rule} ({n} runs)" for rule, n in shipped.most_common())
        + ". Oracle: the best test score, the papers' rule. Per-rule tables with each cell's "
        "runs below.",
        "",
        "| cell | shipped | last | oracle | paper | oracle − paper | seeds |",
        "|---|---|---|---|---|---|---|",
    ]
    by_rule = {rule: rows(cells, rule) for rule in (SHIPPED, "last", "oracle_best_test")}
    for ship, last, oracle in zip(*by_rule.values()):
        out.append(
            f"| {ship.dataset} {ship.ratio} {_method(ship)} | {_pm(ship.mean, ship.std)} | "
            f"{_pm(last.mean, last.std)} | {_pm(oracle.mean, oracle.std)} | "
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
        ]
    )

    def fmt(v):
        return "" if v is None else f"{v:.4f}"

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
                    int("◊" in r.marks),
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
        ("†", r"$^\dagger$"),
    ):
        s = s.replace(a, b)
    return s


def _latex(cells: list[Cell], rules: list[str], metrics: list[str]) -> str:
    out = [
        "% debiaslab collect: "
        + _tex(", ".join(metrics) or "n/a")
        + " (%), mean $\\pm$ std over seeds",
        "% paper: " + _tex(PAPER_SOURCE),
    ]
    for rule in rules:
        out += [
            r"\begin{table}[t]",
            r"\centering",
            r"\begin{tabular}{lllrrrr}",
            r"\toprule",
            r"dataset & ratio & method & ours & $n$ & paper & ours $-$ paper \\",
            r"\midrule",
        ]
        for r in rows(cells, rule):
            ours = _pm(r.mean, r.std).replace("±", r"$\pm$").replace("—", "--")
            paper = _pm(r.paper_mean, r.paper_std).replace("±", r"$\pm$").replace("—", "--")
            out.append(
                f"{_tex(r.dataset)} & {_tex(r.ratio)} & {_tex(_method(r))} & {ours} & {r.n} & {paper} & "
                f"{_signed(r.diff).replace('—', '--')} \\\\"
            )
        out += [
            r"\bottomrule",
            r"\end{tabular}",
            f"\\caption{{Selection: {_tex(rule)} --- {_tex(RULE_TITLES.get(rule) or SELECTION_RULES[rule])}.}}",
            r"\end{table}",
            "",
        ]
    return "\n".join(out)


# ------------------------------------------------------------------------------ selection gaps
def cell_means(cells: list[Cell]) -> list[tuple[Cell, dict[str, float], int]]:
    """Per cell with finished runs: each selection's mean primary test metric (%) over the seeds
    that have both it and the oracle, and the number of finished seeds."""
    out = []
    for c in cells:
        done = [
            r
            for r in c.records
            if r.status == "finished" and r.values.get("oracle_best_test") is not None
        ]
        if not done:
            continue
        means = {}
        for name in SELECTION_RULES:
            vals = [100 * r.values[name] for r in done if r.values.get(name) is not None]
            if len(vals) == len(
                done
            ):  # a mean over fewer seeds than the oracle's would not compare
                means[name] = statistics.fmean(vals)
        out.append((c, means, len(done)))
    return out


def render_gaps(cells: list[Cell]) -> str:
    """Each selection rule's test score minus the oracle's (and minus ``last``'s), per cell and
    over cells: how much of the paper-style number a rule that reads no test label gets back."""
    from debiaslab.selection import base_rule

    per_cell = cell_means(cells)
    if not per_cell:
        raise UserError("no finished run to compare selection rules on")
    runs = [
        r.values
        for c in cells
        for r in c.records
        if r.status == "finished" and r.values.get("oracle_best_test") is not None
    ]
    out = [
        "Primary test metric (%) of each selection minus the oracle's (`oracle_best_test`: the best test "
        "score of the same run, as papers report); `− last`: minus the raw model's last step. wa_*: the "
        "weight-averaged model. Over runs: every run that recorded the selection. Over cells: the mean "
        "over a cell's seeds, for cells where every run recorded it (runs from before weight averaging "
        "did not).",
        "",
        "| selection | reads | runs | mean − oracle | worst run − oracle | mean − last | worst run − last "
        "| cells | mean − oracle | worst cell − last |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in SELECTION_RULES:
        run_gaps = [
            (100 * (v[name] - v["oracle_best_test"]), 100 * (v[name] - v["last"]))
            for v in runs
            if v.get(name) is not None
        ]
        if not run_gaps:
            continue
        cell_gaps = [
            (m[name] - m["oracle_best_test"], m[name] - m["last"])
            for _, m, _ in per_cell
            if name in m
        ]
        oracle_gap, last_gap = zip(*run_gaps)
        cell_part = "| 0 | — | — |"
        if cell_gaps:
            cell_oracle, cell_last = zip(*cell_gaps)
            cell_part = f"| {len(cell_gaps)} | {statistics.fmean(cell_oracle):+.2f} | {min(cell_last):+.2f} |"
        out.append(
            f"| {name} | {base_rule(name).reads} | {len(run_gaps)} | {statistics.fmean(oracle_gap):+.2f} | "
            f"{min(oracle_gap):+.2f} | {statistics.fmean(last_gap):+.2f} | {min(last_gap):+.2f} "
            + cell_part
        )
    shown = [
        n
        for n in SELECTION_RULES
        if n != "oracle_best_test" and any(n in m for _, m, _ in per_cell)
    ]
    out += [
        "",
        "Per cell, each selection minus the oracle (points; the oracle itself in the last column):",
        "",
        "| dataset | ratio | method | seeds | " + " | ".join(shown) + " | oracle |",
        "|---|---|---|---|" + "---|" * (len(shown) + 1),
    ]
    mixed = False
    for c, m, n in per_cell:
        row = [_signed(m[s] - m["oracle_best_test"]) if s in m else "—" for s in shown]
        label = c.method + _marks(c) + (f" ({c.variant})" if c.variant else "")
        # one cell's seeds from different folders may have trained on different builds
        cell_mixed = _mixed_data([r for r in c.records if r.status == "finished"])
        mixed |= cell_mixed
        out.append(
            f"| {c.dataset} | {c.percent or '-'} | {label} | {n}{' ‡' if cell_mixed else ''} | "
            + " | ".join(row)
            + f" | {m['oracle_best_test']:.2f} |"
        )
    if mixed:
        out += ["", MIXED_DATA_NOTE]
    for note in _label_notes([c for c, _, _ in per_cell]):
        out += ["", note]
    return "\n".join(out) + "\n"


def render_choice(cells: list[Cell], rule: str) -> str:
    """Which setting of each (dataset, ratio, method) the validation rule ``rule`` chooses.

    Per setting (a cell: its variant), the score the rule maximised at its pick and the test score
    of that pick, each the mean over the setting's finished seeds; the setting of highest mean
    validation score is chosen (the first listed on ties). The test scores are shown, never used.
    A setting with no finished run is listed with its runs' state, and the choice said provisional.
    """
    if rule not in CHOOSE_RULES:
        raise UserError(
            f"--choose {rule!r} does not score the validation split; choose one of "
            f"{', '.join(CHOOSE_RULES)}"
        )
    groups: dict[tuple, list] = {}
    for c in cells:
        if c.records:
            done = [
                r
                for r in c.records
                if r.status == "finished" and r.valid_scores.get(rule) is not None
            ]
            groups.setdefault((c.dataset, c.percent or "-", c.method), []).append((c, done))
    if not any(done for entries in groups.values() for _, done in entries):
        raise UserError(
            f"no finished run here recorded a {rule} pick; run --choose on a sweep's --out folder"
        )
    out = [
        f"Settings chosen by `{rule}`: {SELECTION_RULES[rule]}. Per setting: the validation score "
        "the rule maximised, at its pick, and the test score of that pick (%, mean over the "
        "seeds); the highest validation score is chosen. The test column is shown, never used.",
        "",
        "| dataset | ratio | method | setting | seeds | validation (chosen on) | test | | runs |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for (dataset, ratio, method), entries in groups.items():
        scores = {
            id(c): statistics.fmean(100 * r.valid_scores[rule] for r in done)
            for c, done in entries
            if done
        }
        best = max(scores, key=scores.get) if scores else None
        provisional = len(scores) < len(entries)
        for c, done in entries:
            seeds = sorted(r.seed for r in done)
            test = statistics.fmean(100 * r.values[rule] for r in done) if done else None
            mark = "**chosen**" + (" (provisional)" if provisional else "")
            out.append(
                f"| {dataset} | {ratio} | {method}{_marks(c)} | {c.variant or 'preset'} | "
                f"{len(seeds)} ({', '.join(map(str, seeds))}) | {_pm(scores.get(id(c)), None)} | "
                f"{_pm(test, None)} | {mark if best == id(c) else ''} | {_runs_note(c)} |"
            )
    return "\n".join(out) + "\n"


def collect(
    root: str,
    fmt: str = "markdown",
    rules: list[str] | None = None,
    gaps: bool = False,
    choose: str | None = None,
) -> str:
    path = Path(root)
    if choose:
        return render_choice(read(path), choose)
    if gaps:
        return render_gaps(read(path))
    return render(read(path), fmt, rules)


BEGIN, END = "<!-- collect:begin -->\n", "<!-- collect:end -->"


def update_block(doc: Path, table: str) -> str:
    """``doc`` with the text between its collect markers replaced by ``table`` (the rest is left as written)."""
    try:
        text = doc.read_text()
    except OSError as e:
        raise UserError(f"cannot read {doc}: {e.strerror}") from None
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        raise UserError(
            f"{doc} has no '<!-- collect:begin -->' ... '<!-- collect:end -->' block (each marker on its own "
            "line) to replace; add one where the table goes"
        )
    return text[: start + len(BEGIN)] + table + text[end:]


__all__ = ["collect", "read", "render", "render_choice", "render_gaps", "rows", "update_block"]
