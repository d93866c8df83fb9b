"""Rendering, for the report: its PNG figures (learning curves, W as a detector, the features'
projections, the accuracy grid, runs compared), each a ``Figure`` or the reason it is unavailable."""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from debiaslab.methods import METHODS
from debiaslab.methods.base import Method, StagePlan
from debiaslab.report.evaluation import Evaluated, _project, accuracy_grid, probes
from debiaslab.report.runs import RunData


@dataclass
class Figure:
    title: str
    file: str | None = None  # PNG name, or None when unavailable
    reason: str = ""  # why it is unavailable
    caption: str = ""
    table: str = ""  # extra HTML under the figure


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
    """Where the method's feature swap starts (DisEnt's), and where each stage of a multi-stage
    method ends; the x axis spans the run's own steps (a swap its steps never reach is not drawn)."""
    plan = StagePlan(METHODS[run.cfg.method].stages(run.cfg))
    start = METHODS[run.cfg.method].swap_start(run.cfg)
    if start is not None and 0 < start < run.cfg.num_steps:
        swap = plan.main_start + start  # swap_start counts the main stage's steps
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
    method = METHODS[run.cfg.method]
    if method.swap_start(run.cfg) is not None or len(method.stages(run.cfg)) > 1:
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


def probe_table(ev: Evaluated) -> tuple[dict, str]:
    """The probes of ``ev`` (``evaluation.probes``) and their HTML table."""
    found = probes(ev)

    def fmt(v):
        return "n/a (no bias labels)" if v is None else f"{100 * v:.2f}%"

    rows = "".join(
        f"<tr><td>{html.escape(n)}</td><td>{fmt(p['target'])}</td><td>{fmt(p['bias'])}</td></tr>"
        for n, p in found.items()
    )
    chance = f"{100 / ev.num_classes:.1f}%"
    table = (
        "<table class='probes'><tr><th>feature</th><th>probe accuracy: target</th><th>probe "
        f"accuracy: bias</th></tr>{rows}"
        f"</table><p class='note'>Logistic-regression probes, trained on half of the test samples shown and scored on "
        f"the other half (chance {chance}). For DisEnt, disentangled features mean that z_intrinsic predicts the "
        f"target and not the bias, and z_bias the bias.</p>"
    )
    return found, table


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
    title = "Test accuracy per (target, bias) cell"
    if ev is None:
        return Figure(title, reason=reason)
    if ev.biases is None:
        return Figure(
            title, reason="the test split has no bias labels, so there is no (target, bias) grid"
        )
    acc = accuracy_grid(ev)
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


def _colour_key(runs: list[RunData]) -> str:
    """The colours of the methods shown that declare one (``Method.color``), for the caption."""
    shown = dict.fromkeys(run.cfg.method for run in runs)
    named = [f"{METHODS[m].color.removeprefix('tab:')} {m}" for m in shown if METHODS[m].color]
    return f" ({', '.join(named)})" if named else ""


def fig_compare(runs: list[RunData], out: Path) -> Figure:
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.2))
    seen = {}
    for run in runs:
        es = [r["step"] for r in run.evals]
        color = METHODS[run.cfg.method].color
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
        caption=f"One line per run, one colour per method{_colour_key(runs)}.",
    )
