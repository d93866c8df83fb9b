"""Computing, for the report: a run's checkpoint on its test samples (features, predictions),
projections of the features and linear probes on them."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from debiaslab.report.runs import RunData


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


def probes(ev: Evaluated) -> dict:
    """Per feature, the accuracy of a linear probe for the target and for the bias (None
    without bias labels)."""
    from debiaslab.diagnostics import probe_accuracy

    return {
        name: {
            "target": probe_accuracy(z, ev.targets),
            "bias": probe_accuracy(z, ev.biases) if ev.biases is not None else None,
        }
        for name, z in ev.features.items()
    }


def accuracy_grid(ev: Evaluated) -> np.ndarray:
    """Test accuracy (%) per (target, bias) cell, NaN where a cell has no sample (``ev`` has
    bias labels)."""
    from debiaslab.metrics import group_accuracy

    hits, total = group_accuracy(ev.preds == ev.targets, ev.targets, ev.biases, ev.num_classes)
    return np.where(total.numpy() > 0, 100 * hits.numpy() / np.maximum(total.numpy(), 1), np.nan)
