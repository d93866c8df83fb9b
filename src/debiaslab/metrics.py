"""Every metric, defined once (docs/runs.md repeats these definitions).

- ``accuracy``: plain top-1 accuracy on the split.
- ``aligned`` / ``conflicting``: accuracy on samples with bias == target / bias != target.
- ``unbiased``: mean over the (target, bias) grid cells that hold samples of the per-cell accuracy (LfF).
- ``worst_group``: the lowest per-cell accuracy over those cells.
- ``per_class``: accuracy of each target class; ``worst_class(m)`` is the lowest of them.
- ``pseudo_unbiased`` (validation only, for methods with a biased branch): ``unbiased`` with the
  bias label of each sample replaced by the class the method's biased branch predicts for it, so it
  reads no bias label.
Metrics that need bias labels are ``None`` when the split has none.
"""

from __future__ import annotations

import torch


def group_accuracy(
    correct: torch.Tensor, targets: torch.Tensor, biases: torch.Tensor, num_classes: int
):
    """Per-(target, bias) cell counts and correct counts, each [C, C_bias]."""
    nb = max(num_classes, int(biases.max()) + 1)
    cell = targets * nb + biases
    total = torch.bincount(cell, minlength=num_classes * nb).view(num_classes, nb)
    hits = torch.bincount(cell, weights=correct.double(), minlength=num_classes * nb).view(
        num_classes, nb
    )
    return hits, total


def cell_mean_accuracy(
    correct: torch.Tensor, targets: torch.Tensor, groups: torch.Tensor, num_classes: int
) -> tuple[float, float]:
    """(mean, min) over the (target, group) cells that hold samples of the per-cell accuracy."""
    hits, total = group_accuracy(correct, targets, groups, num_classes)
    filled = total > 0
    cell_acc = hits[filled] / total[filled]
    return float(cell_acc.mean()), float(cell_acc.min())


def compute_metrics(
    preds: torch.Tensor,
    targets: torch.Tensor,
    biases: torch.Tensor | None,
    num_classes: int,
    pseudo_biases: torch.Tensor | None = None,
) -> dict:
    """Every metric above; ``pseudo_unbiased`` only where ``pseudo_biases`` are given."""
    preds, targets = preds.cpu(), targets.cpu()
    correct = preds == targets
    n_class = torch.bincount(targets, minlength=num_classes).double()
    hit_class = torch.bincount(targets, weights=correct.double(), minlength=num_classes)
    per_class = [float(h / n) if n > 0 else None for h, n in zip(hit_class, n_class)]
    out = {
        "n": len(targets),
        "accuracy": float(correct.double().mean()),
        "aligned": None,
        "conflicting": None,
        "unbiased": None,
        "worst_group": None,
        "per_class": per_class,
    }
    if pseudo_biases is not None:
        out["pseudo_unbiased"] = cell_mean_accuracy(
            correct, targets, pseudo_biases.cpu(), num_classes
        )[0]
    if biases is None:
        return out
    biases = biases.cpu()
    aligned = targets == biases
    if aligned.any():
        out["aligned"] = float(correct[aligned].double().mean())
    if (~aligned).any():
        out["conflicting"] = float(correct[~aligned].double().mean())
    out["unbiased"], out["worst_group"] = cell_mean_accuracy(correct, targets, biases, num_classes)
    return out


def worst_class(metrics: dict) -> float:
    """The lowest per-class accuracy of a split's metrics (classes without samples left out)."""
    return min(a for a in metrics["per_class"] if a is not None)


@torch.no_grad()
def predict_split(predict, images: torch.Tensor, prepare, batch_size: int = 2048) -> torch.Tensor:
    """Predicted classes for a whole uint8 image tensor, evaluated in batches."""
    out = []
    for i in range(0, len(images), batch_size):
        out.append(predict(prepare(images[i : i + batch_size])).argmax(1))
    return torch.cat(out)


def primary_key(dataset: str) -> str:
    """The metric a dataset is reported by: unbiased accuracy; BFFHQ reports conflicting accuracy."""
    return "conflicting" if dataset == "bffhq" else "unbiased"


def primary_metric(metrics: dict, dataset: str) -> float:
    """The headline number of a dataset (``primary_key``), plain accuracy where bias labels are missing."""
    value = metrics.get(primary_key(dataset))
    return metrics["accuracy"] if value is None else value
