"""``debiaslab report``: a self-contained HTML report of one or several runs, with its PNG figures.

Per run: a header with the config, data checksums, seed, steps, selection rule and the numbers of
``results.json``; learning curves (loss terms, aligned / conflicting / unbiased accuracy, LR,
the step where DisEnt's feature swap starts); the method's weight W as a detector of the
bias-conflicting training samples (histograms and AP / precision / recall over training); a 2-D
projection (PCA, t-SNE on request) of each feature on test samples, coloured by target and by bias,
with linear-probe accuracies; the (target x bias) test accuracy grid. Several runs add overlaid
curves and a summary table. A figure that cannot be drawn says why instead.
"""

from __future__ import annotations

import base64
import html
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from debiaslab.config import TrainConfig
from debiaslab.errors import UserError
from debiaslab.methods import METHODS
from debiaslab.methods.base import Method, StagePlan
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
METHOD_COLORS = {
    "vanilla": "tab:gray",
    "lff": "tab:blue",
    "disent": "tab:red",
    "jtt": "tab:orange",
    "groupdro": "tab:brown",
    "lc": "tab:green",
    "lff_be": "tab:cyan",
    "disent_be": "tab:purple",
}


@dataclass
class Figure:
    title: str
    file: str | None = None  # PNG name, or None when unavailable
    reason: str = ""  # why it is unavailable
    caption: str = ""
    table: str = ""  # extra HTML under the figure


@dataclass
class RunData:
    path: Path
    meta: dict
    cfg: TrainConfig
    results: dict | None
    train: list[dict] = field(default_factory=list)
    evals: list[dict] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.cfg.method} {self.cfg.data_label()} seed {self.cfg.seed} ({self.path.name})"


def load_run(path: Path) -> RunData:
    path = Path(path)
    try:
        meta = json.loads((path / "config.json").read_text())
        cfg = TrainConfig.from_saved(meta["config"])
    except (OSError, ValueError, KeyError, TypeError):
        raise UserError(
            f"{path} is not a debiaslab run directory (no readable config.json); pass a folder written by "
            "debiaslab train or sweep"
        ) from None
    results = (
        json.loads((path / "results.json").read_text())
        if (path / "results.json").exists()
        else None
    )
    run = RunData(path, meta, cfg, results)
    if (path / "metrics.jsonl").exists():
        for line in (path / "metrics.jsonl").read_text().splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            (
                run.train
                if rec.get("kind") == "train"
                else run.evals
                if rec.get("kind") == "eval"
                else []
            ).append(rec)
    return run


# -------------------------------------------------------------------------------------- figures
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, out: Path, name: str) -> str:
    fig.savefig(out / name, dpi=110, bbox_inches="tight")
    _plt().close(fig)
    return name


def _swap_line(ax, run: RunData) -> None:
    """Where DisEnt's feature swap starts, and where each stage of a multi-stage method ends;
    the x axis spans the run's own steps (a swap its steps never reach is not drawn)."""
    plan = StagePlan(METHODS[run.cfg.method].stages(run.cfg))
    if run.cfg.method in ("disent", "disent_be") and 0 < run.cfg.curr_step < run.cfg.num_steps:
        swap = plan.main_start + run.cfg.curr_step  # curr_step counts the main stage's steps
        ax.axvline(swap, color="k", ls=":", lw=1, label=f"feature swap starts (step {swap})")
    for stage, end in zip(plan.stages[:-1], plan.ends):
        ax.axvline(end, color="k", ls="--", lw=1, label=f"stage {stage.name} ends (step {end})")
    ax.set_xlim(0, plan.total)


def fig_curves(run: RunData, out: Path, prefix: str) -> Figure:
    if not run.evals and not run.train:
        return Figure("Learning curves", reason="metrics.jsonl holds no logged step yet")
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.2))
    ax = axes[0]
    steps = [r["step"] for r in run.train]
    terms = sorted(
        {k for r in run.train for k in r if k not in ("kind", "step", "stage", "lr", "w_mean")}
    )
    for k in terms:
        ax.plot(steps, [r.get(k, np.nan) for r in run.train], label=k)
    ax.set(title="training loss terms (mean per log window)", xlabel="step", ylabel="loss")
    if terms and all(min(r.get(k, 1) for r in run.train) > 0 for k in terms):
        ax.set_yscale("log")
    _swap_line(ax, run)
    ax.legend(fontsize=8)
    ax = axes[1]
    es = [r["step"] for r in run.evals]
    styles = {
        "aligned": "tab:green",
        "conflicting": "tab:red",
        "unbiased": "tab:blue",
        "accuracy": "tab:gray",
    }
    for split, ls in (("test", "-"), ("valid", "--")):
        for key, color in styles.items():
            vals = [r[split].get(key) for r in run.evals]
            if any(v is not None for v in vals):
                ax.plot(
                    es,
                    [np.nan if v is None else 100 * v for v in vals],
                    ls=ls,
                    color=color,
                    label=f"{split} {key}",
                )
    ax.set(title="accuracy (%): test solid, valid dashed", xlabel="step", ylabel="%", ylim=(0, 102))
    _swap_line(ax, run)
    ax.legend(
        fontsize=7, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.16)
    )  # below the axes: curves stay visible
    ax = axes[2]
    ax.plot(steps, [r.get("lr") for r in run.train], color="tab:purple")
    ax.set(title="learning rate", xlabel="step", ylabel="lr")
    if steps and min(r.get("lr", 1) for r in run.train) > 0:
        ax.set_yscale("log")
    _swap_line(ax, run)
    if (
        run.cfg.method in ("disent", "disent_be")
        or len(METHODS[run.cfg.method].stages(run.cfg)) > 1
    ):
        ax.legend(fontsize=8)
    fig.suptitle(run.name, fontsize=10)
    return Figure(
        "Learning curves",
        _save(fig, out, f"{prefix}curves.png"),
        caption="Loss terms of the method, accuracy on the aligned / conflicting samples and unbiased (group-"
        "balanced) accuracy on test and valid, and the learning rate, over training steps.",
    )


def has_sample_weights(method_cls) -> bool:
    """The method keeps a per-sample weight W: it implements ``Method.sample_weights``."""
    return method_cls.sample_weights is not Method.sample_weights


def fig_w_detection(run: RunData, out: Path, prefix: str) -> Figure:
    from debiaslab.diagnostics import load_w_snapshots

    title = "W as a detector of bias-conflicting training samples"
    if not has_sample_weights(METHODS[run.cfg.method]):
        with_w = sorted(name for name, m in METHODS.items() if has_sample_weights(m))
        return Figure(
            title,
            reason=f"{run.cfg.method} has no per-sample weight W (those of {', '.join(with_w)} "
            "have one)",
        )
    history = [(r["step"], r.get("train_w") or {}) for r in run.evals]
    has_mean = any(w.get("mean_conflicting") is not None for _, w in history)
    has_ap = any(w.get("ap") is not None for _, w in history)
    snaps = load_w_snapshots(run.path)
    steps = sorted(snaps["steps"]) if snaps and snaps.get("conflicting") is not None else []
    if not has_mean and not steps:
        return Figure(
            title,
            reason="the training split has no bias labels to evaluate W against"
            if run.evals
            else "no evaluation has been logged yet",
        )
    plt = _plt()
    # histograms on a first row, the curves over training below them
    fig = plt.figure(figsize=(16, 7.6 if steps else 3.8), layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=[1, 1.15]) if steps else (None, fig)
    axes = (
        list(top.subplots(1, len(steps))) if len(steps) > 1 else ([top.subplots()] if steps else [])
    )
    axes += list(bottom.subplots(1, 2)) if has_ap else [bottom.subplots()]
    conflicting = snaps["conflicting"].numpy() if steps else None
    bins = np.linspace(0, 1, 41)
    for s in steps:
        ax, w = axes.pop(0), snaps["steps"][s].float().numpy()
        ax.hist(
            w[~conflicting], bins=bins, density=True, alpha=0.6, color="tab:green", label="aligned"
        )
        ax.hist(
            w[conflicting], bins=bins, density=True, alpha=0.6, color="tab:red", label="conflicting"
        )
        ax.set(title=f"W at step {s}", xlabel="W", ylabel="density (log)")
        ax.set_yscale("log")
        ax.legend(fontsize=7)
    ax = axes.pop(0)
    es = [s for s, w in history if w.get("mean_conflicting") is not None]
    ax.plot(
        es,
        [w["mean_aligned"] for s, w in history if w.get("mean_conflicting") is not None],
        color="tab:green",
        label="aligned",
    )
    ax.plot(
        es,
        [w["mean_conflicting"] for s, w in history if w.get("mean_conflicting") is not None],
        color="tab:red",
        label="conflicting",
    )
    _swap_line(ax, run)
    ax.set(title="mean W over training", xlabel="step", ylabel="mean W", ylim=(0, 1.02))
    ax.legend(fontsize=7)
    if has_ap:
        ax = axes.pop(0)
        es = [s for s, w in history if w.get("ap") is not None]
        for key, color in (
            ("ap", "tab:blue"),
            ("precision", "tab:orange"),
            ("recall", "tab:green"),
        ):
            ax.plot(
                es,
                [w[key] for s, w in history if w.get("ap") is not None],
                color=color,
                label={
                    "ap": "average precision",
                    "precision": "precision (W > 0.5)",
                    "recall": "recall (W > 0.5)",
                }[key],
            )
        base = next((w["base_rate"] for _, w in history if w.get("base_rate") is not None), None)
        if base is not None:
            ax.axhline(
                base,
                color="k",
                ls="--",
                lw=1,
                label=f"base rate {100 * base:.2f}% (random detector's AP)",
            )
        _swap_line(ax, run)
        ax.set(title="W as a detector over training", xlabel="step", ylim=(0, 1.02))
        ax.legend(fontsize=7)
    caption = (
        "Histograms of W for truly aligned (green) and conflicting (red) training samples at a few steps, the mean "
        "W of each group over training, and precision / recall / average precision of W as a detector of the "
        "conflicting samples."
    )
    missing = [
        what
        for what, ok in (
            ("the histograms (w_snapshots.pt)", bool(steps)),
            ("AP / precision / recall", has_ap),
        )
        if not ok
    ]
    if missing:
        caption += f" Not recorded by this run (it predates them): {' and '.join(missing)}."
    last = next((w for _, w in reversed(history) if w.get("ap") is not None), None)
    if last:
        caption += (
            f" At the last evaluation: AP {last['ap']:.3f} (random: {last['base_rate']:.3f}), precision "
            f"{last['precision']:.3f}, recall {last['recall']:.3f}."
        )
    return Figure(title, _save(fig, out, f"{prefix}w_detection.png"), caption=caption)


@dataclass
class Evaluated:
    features: dict  # name -> [N, d] tensor
    targets: torch.Tensor
    biases: torch.Tensor | None
    preds: torch.Tensor
    num_classes: int
    step: int
    rule: str


def evaluate_checkpoint(run: RunData, select: str, device: str, limit: int = 10_000) -> Evaluated:
    """Features and predictions of the selected checkpoint on (up to ``limit``) test samples."""
    from debiaslab.evaluate import load_checkpoint
    from debiaslab.prepare import load_data, make_transform, prepare_split, resolve_device

    method_cls, models, info = load_checkpoint(run.path, run.cfg.dataset, select)
    dev = resolve_device(device)
    cfg = run.cfg.resolved()
    bundle = load_data(cfg)
    test = prepare_split(bundle.test, cfg, dev)
    n = len(test.targets)
    keep = (
        torch.randperm(n, generator=torch.Generator().manual_seed(0))[:limit].sort().values
        if n > limit
        else torch.arange(n)
    )
    transform = make_transform(cfg, None, dev)
    feats = {f"z_{name}": [] for name in method_cls.model_names}
    preds = []
    for m in models.values():
        m.to(dev).eval()
    with torch.no_grad():
        for chunk in keep.split(1024):
            x = transform.eval(test.images[chunk.to(test.images.device)])
            for name in method_cls.model_names:
                feats[f"z_{name}"].append(models[name].extract(x).float().cpu())
            preds.append(method_cls.predict(models, x).argmax(1).cpu())
    biases = None if test.biases is None else test.biases.cpu()[keep]
    return Evaluated(
        {k: torch.cat(v) for k, v in feats.items()},
        test.targets.cpu()[keep],
        biases,
        torch.cat(preds),
        bundle.num_classes,
        info["step"],
        info["rule"],
    )


def _project(x: np.ndarray, kind: str, seed: int = 0) -> np.ndarray:
    if kind == "tsne":
        from sklearn.manifold import TSNE

        return TSNE(
            n_components=2, random_state=seed, init="pca", perplexity=min(30.0, (len(x) - 1) / 3)
        ).fit_transform(x)
    from sklearn.decomposition import PCA

    return PCA(n_components=2, random_state=seed).fit_transform(x)


def probe_table(ev: Evaluated) -> tuple[dict, str]:
    from debiaslab.diagnostics import probe_accuracy

    probes = {
        name: {
            "target": probe_accuracy(z, ev.targets),
            "bias": probe_accuracy(z, ev.biases) if ev.biases is not None else None,
        }
        for name, z in ev.features.items()
    }

    def fmt(v):
        return "n/a (no bias labels)" if v is None else f"{100 * v:.2f}%"

    rows = "".join(
        f"<tr><td>{html.escape(n)}</td><td>{fmt(p['target'])}</td><td>{fmt(p['bias'])}</td></tr>"
        for n, p in probes.items()
    )
    chance = f"{100 / ev.num_classes:.1f}%"
    table = (
        "<table class='probes'><tr><th>feature</th><th>probe accuracy: target</th><th>probe "
        f"accuracy: bias</th></tr>{rows}"
        f"</table><p class='note'>Logistic-regression probes, trained on half of the test samples shown and scored on "
        f"the other half (chance {chance}). For DisEnt, disentangled features mean that z_intrinsic predicts the "
        f"target and not the bias, and z_bias the bias.</p>"
    )
    return probes, table


def fig_features(
    run: RunData,
    ev: Evaluated | None,
    reason: str,
    out: Path,
    prefix: str,
    kind: str,
    max_points: int,
) -> Figure:
    title = f"Features on test samples: {'t-SNE' if kind == 'tsne' else 'PCA'} projection"
    if ev is None:
        return Figure(title, reason=reason)
    plt = _plt()
    n = len(ev.targets)
    pick = (
        torch.randperm(n, generator=torch.Generator().manual_seed(1))[:max_points].numpy()
        if n > max_points
        else np.arange(n)
    )
    cols = 2 if ev.biases is not None else 1
    fig, axes = plt.subplots(
        len(ev.features), cols, figsize=(5.2 * cols, 4.4 * len(ev.features)), squeeze=False
    )
    cmap = "tab10" if ev.num_classes <= 10 else "tab20"
    for row, (name, z) in zip(axes, ev.features.items()):
        xy = _project(z.numpy()[pick], kind)
        for ax, (label_name, labels) in zip(row, (("target", ev.targets), ("bias", ev.biases))):
            sc = ax.scatter(
                xy[:, 0],
                xy[:, 1],
                c=labels.numpy()[pick],
                cmap=cmap,
                s=4,
                vmin=0,
                vmax=max(ev.num_classes - 1, 1),
            )
            ax.set(title=f"{name}, coloured by {label_name}", xticks=[], yticks=[])
            fig.colorbar(sc, ax=ax, fraction=0.046, pad=0.02, label=label_name)
    fig.suptitle(
        f"{run.name}: checkpoint '{ev.rule}' (step {ev.step}), {len(pick)} test samples",
        fontsize=10,
    )
    _, table = probe_table(ev)
    caption = (
        "Each feature vector projected to 2-D, coloured by the target label (left) and by the bias label (right). "
        "A feature that clusters by target carries the class; one that clusters by bias carries the shortcut."
    )
    if ev.biases is None:
        caption += " The test split has no bias labels, so only the target colouring is shown."
    return Figure(
        title, _save(fig, out, f"{prefix}features_{kind}.png"), caption=caption, table=table
    )


def fig_heatmap(run: RunData, ev: Evaluated | None, reason: str, out: Path, prefix: str) -> Figure:
    from debiaslab.metrics import group_accuracy

    title = "Test accuracy per (target, bias) cell"
    if ev is None:
        return Figure(title, reason=reason)
    if ev.biases is None:
        return Figure(
            title, reason="the test split has no bias labels, so there is no (target, bias) grid"
        )
    hits, total = group_accuracy(ev.preds == ev.targets, ev.targets, ev.biases, ev.num_classes)
    acc = np.where(total.numpy() > 0, 100 * hits.numpy() / np.maximum(total.numpy(), 1), np.nan)
    plt = _plt()
    fig, ax = plt.subplots(figsize=(1.0 + 0.62 * acc.shape[1], 0.8 + 0.55 * acc.shape[0]))
    im = ax.imshow(acc, vmin=0, vmax=100, cmap="viridis")
    if acc.size <= 400:
        for (i, j), v in np.ndenumerate(acc):
            if not np.isnan(v):
                ax.text(
                    j,
                    i,
                    f"{v:.0f}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="w" if v < 60 else "k",
                )
    ax.set(
        xlabel="bias label",
        ylabel="target label",
        xticks=range(acc.shape[1]),
        yticks=range(acc.shape[0]),
        title=f"checkpoint '{ev.rule}' (step {ev.step}), accuracy %",
    )
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
    return Figure(
        title,
        _save(fig, out, f"{prefix}heatmap.png"),
        caption="Diagonal cells are bias-aligned (bias = target), all others bias-conflicting; empty cells have no "
        "test sample. Unbiased accuracy is the mean over the non-empty cells.",
    )


def fig_compare(runs: list[RunData], out: Path) -> Figure:
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.2))
    seen = {}
    for run in runs:
        es = [r["step"] for r in run.evals]
        color = METHOD_COLORS.get(run.cfg.method)
        label = run.name if run.cfg.method not in seen or len(runs) <= 6 else None
        seen[run.cfg.method] = True
        for ax, key in zip(axes, ("unbiased", "conflicting", "aligned")):
            vals = [r["test"].get(key) for r in run.evals]
            ax.plot(
                es,
                [np.nan if v is None else 100 * v for v in vals],
                color=color,
                alpha=0.8,
                label=label,
            )
    for ax, key in zip(axes, ("unbiased", "conflicting", "aligned")):
        ax.set(title=f"test {key} accuracy (%)", xlabel="step", ylim=(0, 100))
    axes[0].legend(fontsize=7)
    return Figure(
        "All runs: test accuracy over training",
        _save(fig, out, "compare.png"),
        caption="One line per run, one colour per method (grey Vanilla, blue LfF, red DisEnt).",
    )


# ------------------------------------------------------------------------------------------ HTML
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
    out = (
        Path(output) if output else (runs[0].path / "report" if len(runs) == 1 else Path("report"))
    )
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
