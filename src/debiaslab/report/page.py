"""Rendering, for the report: the self-contained HTML page (each run's header, numbers and
figures, a summary of several runs) and ``make_report``, which reads, computes and draws it."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

from debiaslab.errors import UserError
from debiaslab.report.evaluation import evaluate_checkpoint
from debiaslab.report.figures import (
    Figure,
    fig_compare,
    fig_curves,
    fig_features,
    fig_heatmap,
    fig_w_detection,
)
from debiaslab.report.runs import RunData, load_run
from debiaslab.rundir import RunDir
from debiaslab.selection import (
    BIAS_MARK,
    SELECTION_RULES,
    TEST_MARK,
    figure_reads,
    marks,
    reads_text,
    shipped_selection,
)

METRIC_KEYS = ("accuracy", "aligned", "conflicting", "unbiased", "worst_group")


def _mark(results: dict, rule: str) -> str:
    """' ◊†'-style marks of what the figure of ``rule`` read (nothing when label-free)."""
    mark = marks(figure_reads(results, rule))
    return f" {mark}" if mark else ""


def _pct(v) -> str:
    return "n/a" if v is None else f"{100 * v:.2f}"


def header_html(run: RunData, select: str) -> str:
    cfg = run.cfg
    rows = [
        ("method", cfg.method),
        ("data", cfg.data_label()),
        ("seed", cfg.seed),
        ("steps", cfg.num_steps),
        ("figures' checkpoint (selection rule)", select),
        ("status", "finished" if run.results else "unfinished (no results.json)"),
    ]
    data = run.meta.get("data") or {}
    if cfg.palette is not None:
        rows.append(
            (
                "palette (asked / read from the images)",
                f"{cfg.palette} / {data.get('palette', 'not recorded')}",
            )
        )
    rows += [(f"data sha256 ({k})", v) for k, v in sorted(data.get("sha256", {}).items())]
    if run.results:
        rows += [
            ("primary metric", run.results.get("primary_metric")),
            ("train seconds", run.results.get("train_seconds")),
            ("steps / second", run.results.get("steps_per_second")),
        ]
    out = [
        "<table class='header'>"
        + "".join(
            f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>"
            for k, v in rows
        )
        + "</table>"
    ]
    if run.results:
        out.append(
            "<table class='results'><tr><th>selection rule</th><th>read</th><th>step</th>"
            + "".join(f"<th>test {k} (%)</th>" for k in METRIC_KEYS)
            + "<th>valid accuracy (%)</th></tr>"
        )
        for rule, sel in run.results["selections"].items():
            if sel is None:
                out.append(
                    f"<tr><td>{rule}</td><td colspan='{len(METRIC_KEYS) + 3}'>picked nothing (the metric it needs "
                    "is unavailable)</td></tr>"
                )
                continue
            out.append(
                f"<tr><td title='{html.escape(SELECTION_RULES.get(rule, ''))}'>{rule}"
                f"{_mark(run.results, rule)}</td>"
                f"<td>{html.escape(reads_text(figure_reads(run.results, rule)))}</td>"
                f"<td>{sel['step']}</td>"
                + "".join(f"<td>{_pct(sel['test'].get(k))}</td>" for k in METRIC_KEYS)
                + f"<td>{_pct(sel['valid'].get('accuracy'))}</td></tr>"
            )
        out.append("</table>")
    ident = cfg.identity()
    out.append(
        "<details><summary>full config</summary><pre>"
        + html.escape(json.dumps(ident, indent=1))
        + "</pre></details>"
    )
    if run.results:
        out.append(
            "<details><summary>results.json</summary><pre>"
            + html.escape(json.dumps(run.results, indent=1))
            + "</pre></details>"
        )
    return "\n".join(out)


def _figure_html(fig: Figure, out: Path) -> str:
    parts = [f"<h3>{html.escape(fig.title)}</h3>"]
    if fig.file is None:
        parts.append(f"<p class='unavailable'>Unavailable: {html.escape(fig.reason)}.</p>")
    else:
        data = base64.b64encode((out / fig.file).read_bytes()).decode()
        parts.append(
            f"<figure><img src='data:image/png;base64,{data}' alt='{html.escape(fig.title)}' "
            f"data-file='{html.escape(fig.file)}'><figcaption>{html.escape(fig.caption)}</figcaption></figure>"
        )
    return "\n".join(parts + [fig.table])


CSS = """body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.6em 0}
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:left;font-size:.9em}
th{background:#f3f3f3}img{max-width:100%}figure{margin:.5em 0}figcaption,.note{color:#555;font-size:.9em}
.unavailable{background:#fff4e0;border-left:4px solid #e0a030;padding:.4em .8em}pre{font-size:.8em;overflow:auto}
section{border-top:2px solid #ddd;margin-top:2em}"""


# marks the body once every image has decoded (a browser check reads it; the page needs no script otherwise)
LOADED_SCRIPT = (
    "<script>window.addEventListener('load',function(){var i=[].slice.call(document.images);"
    "document.body.setAttribute('data-images-loaded',i.filter(function(x){return "
    "x.complete&&x.naturalWidth>0}).length);"
    "document.body.setAttribute('data-images',i.length)});</script>"
)


def make_report(
    paths: list,
    output: Path | None = None,
    select: str | None = None,
    tsne: bool = False,
    device: str = "cpu",
    max_points: int = 2000,
) -> Path:
    if not paths:
        raise UserError("give at least one run directory")
    if select is not None and select not in SELECTION_RULES:
        raise UserError(
            f"--select {select!r} is not a rule; choose one of {', '.join(SELECTION_RULES)}"
        )
    runs = [load_run(Path(p)) for p in paths]
    # one run: its report in its own folder; several: ./report
    default = RunDir(runs[0].path).report_dir if len(runs) == 1 else Path("report")
    out = Path(output) if output else default
    out.mkdir(parents=True, exist_ok=True)
    sections = []
    for i, run in enumerate(runs):
        prefix = f"run{i + 1}_" if len(runs) > 1 else ""
        rule = select or shipped_selection(run.results)
        try:
            ev, reason = evaluate_checkpoint(run, rule, device), ""
        except UserError as e:
            ev, reason = None, f"the '{rule}' checkpoint could not be evaluated: {e}"
        figs = [
            fig_curves(run, out, prefix),
            fig_w_detection(run, out, prefix),
            fig_features(run, ev, reason, out, prefix, "pca", max_points),
        ]
        if tsne:
            figs.append(fig_features(run, ev, reason, out, prefix, "tsne", max_points))
        figs.append(fig_heatmap(run, ev, reason, out, prefix))
        sections.append(
            f"<section><h2>{html.escape(run.name)}</h2>\n<p>{html.escape(str(run.path))}</p>\n"
            + header_html(run, rule)
            + "\n"
            + "\n".join(_figure_html(f, out) for f in figs)
            + "</section>"
        )
    if len(runs) > 1:
        shown = [
            r
            for r in SELECTION_RULES
            if any(((run.results or {}).get("selections") or {}).get(r) for run in runs)
        ]
        summary = [
            "<table class='summary'><tr><th>run</th><th>method</th><th>data</th><th>seed</th><th>steps</th>"
            + "".join(f"<th>{r}</th>" for r in shown)
            + "</tr>"
        ]
        for run in runs:
            sel = (run.results or {}).get("selections", {})
            summary.append(
                f"<tr><td>{html.escape(run.path.name)}</td><td>{run.cfg.method}</td><td>{html.escape(run.cfg.data_label())}"
                f"</td><td>{run.cfg.seed}</td><td>{run.cfg.num_steps}</td>"
                + "".join(
                    f"<td>{_pct((sel.get(r) or {}).get('test_primary'))}"
                    f"{_mark(run.results, r) if sel.get(r) else ''}</td>"
                    for r in shown
                )
                + "</tr>"
            )
        summary.append(
            "</table><p class='note'>Test primary metric (%) of each run under each selection "
            f"rule; {TEST_MARK} the figure read test labels, {BIAS_MARK} bias labels.</p>"
        )
        sections.insert(
            0,
            "<section><h2>Summary</h2>"
            + "".join(summary)
            + _figure_html(fig_compare(runs, out), out)
            + "</section>",
        )
    title = (
        "debiaslab report: "
        + ", ".join(r.name for r in runs[:3])
        + (" ..." if len(runs) > 3 else "")
    )
    doc = (
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1>\n"
        + "\n".join(sections)
        + LOADED_SCRIPT
        + "</body></html>\n"
    )
    from debiaslab.io import atomic_write_text

    atomic_write_text(out / "report.html", doc)
    return out / "report.html"
