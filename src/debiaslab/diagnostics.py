"""Debiasing diagnostics, each defined once: W as a detector of bias-conflicting samples, linear probes.

- ``detector_metrics``: the method's per-sample weight W (LfF / DisEnt: relative difficulty) scored
  as a detector of the truly bias-conflicting training samples: average precision (scikit-learn),
  and precision / recall at W > 0.5 (the biased model finds the sample harder than the debiased one).
  The base rate (the fraction of conflicting samples) is the AP of a random detector.
- ``probe_accuracy``: held-out accuracy of a logistic-regression probe predicting a label from
  features (stratified half / half split, standardised features): how much of the label a
  feature carries, linearly.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from debiaslab.rundir import RunDir

SNAPSHOT_FRACTIONS = (0.02, 0.1, 0.25, 0.5, 1.0)


def detector_metrics(w, conflicting, threshold: float = 0.5) -> dict:
    from sklearn.metrics import average_precision_score, precision_score, recall_score

    w = np.asarray(torch.as_tensor(w).float().cpu())
    y = np.asarray(torch.as_tensor(conflicting).bool().cpu())
    if y.all() or not y.any():
        return {
            "ap": None,
            "precision": None,
            "recall": None,
            "base_rate": float(y.mean()) if len(y) else None,
        }
    pred = w > threshold
    return {
        "ap": float(average_precision_score(y, w)),
        "precision": float(precision_score(y, pred, zero_division=0)),
        "recall": float(recall_score(y, pred, zero_division=0)),
        "base_rate": float(y.mean()),
    }


def weight_report(w, conflicting) -> dict:
    """How well a per-sample weight W singles out the truly conflicting samples (logged only)."""
    w, conflicting = torch.as_tensor(w).float(), torch.as_tensor(conflicting).bool()
    return {
        "mean_aligned": float(w[~conflicting].mean()) if (~conflicting).any() else None,
        "mean_conflicting": float(w[conflicting].mean()) if conflicting.any() else None,
        **detector_metrics(w, conflicting),
    }


def flagged_report(flagged, conflicting) -> dict:
    """A method's flagged set (its guess of "bias-conflicting") against the true labels: the
    detector metrics and the four counts of flagged / not flagged x conflicting / aligned."""
    flagged, conflicting = torch.as_tensor(flagged).bool(), torch.as_tensor(conflicting).bool()
    counts = {
        f"{'flagged' if f else 'unflagged'}_{'conflicting' if c else 'aligned'}": int(
            (flagged == f).logical_and(conflicting == c).sum()
        )
        for f in (True, False)
        for c in (True, False)
    }
    return {
        "flagged_diagnostics": detector_metrics(flagged.float(), conflicting),
        "flagged_counts": counts,
    }


def probe_accuracy(features, labels, seed: int = 0) -> float | None:
    """Held-out accuracy of a linear probe (None when a class has fewer than 2 samples)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = np.asarray(torch.as_tensor(features).float().cpu())
    y = np.asarray(torch.as_tensor(labels).cpu())
    _, counts = np.unique(y, return_counts=True)
    if len(counts) < 2 or counts.min() < 2:
        return None
    xa, xb, ya, yb = train_test_split(x, y, test_size=0.5, random_state=seed, stratify=y)
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    probe.fit(xa, ya)
    return float(probe.score(xb, yb))


def snapshot_steps(num_steps: int, valid_freq: int) -> set[int]:
    """The evaluation steps at which W of every training sample is kept (a few, spread over training)."""
    evals = sorted(set(range(valid_freq, num_steps + 1, valid_freq)) | {num_steps})
    return {min(evals, key=lambda s: abs(s - f * num_steps)) for f in SNAPSHOT_FRACTIONS}


def save_w_snapshot(
    run_dir: Path, step: int, w: torch.Tensor, conflicting: torch.Tensor | None
) -> None:
    from debiaslab.io import atomic_torch_save

    path = RunDir(run_dir).w_snapshots_file
    blob = (
        torch.load(path, weights_only=True) if path.exists() else {"steps": {}, "conflicting": None}
    )
    blob["steps"] = {
        s: v for s, v in blob["steps"].items() if s < step
    }  # a resumed run rewrites later steps
    blob["steps"][step] = w.detach().to("cpu", torch.float16)
    if conflicting is not None:
        blob["conflicting"] = conflicting.detach().cpu().bool()
    atomic_torch_save(blob, path)


def load_w_snapshots(run_dir: Path) -> dict | None:
    path = RunDir(run_dir).w_snapshots_file
    return torch.load(path, weights_only=True) if path.exists() else None
