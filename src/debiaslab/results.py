"""What a finished run's ``results.json`` says (the schema; ``TrainingLoop.results`` adds the
loop's own figures) and what config.json and results.json say about the data."""

from __future__ import annotations

from debiaslab.config import TrainConfig
from debiaslab.data.splits import DatasetBundle
from debiaslab.metrics import primary_key, primary_metric
from debiaslab.selection import SelectionTracker, default_selection, describe, selection_reads


def data_info(bundle: DatasetBundle) -> dict:
    """What config.json and results.json say about the data (no per-file checksums)."""
    info = {
        "name": bundle.name,
        "num_classes": bundle.num_classes,
        "counts": bundle.counts(),
        "sha256": bundle.checksums(),
        **bundle.info,
    }
    return {k: v for k, v in info.items() if not k.startswith("sha256_")}


def results_record(
    cfg: TrainConfig,
    tracker: SelectionTracker,
    data: dict,
    train_seconds: float,
    total_seconds: float,
    skipped: list[int],
) -> dict:
    """The run's settings, each selection rule's pick (None: it picked nothing), ``data``
    (``data_info``) and the time it took, in the order results.json lists them."""
    selections = {}
    for rule in tracker.names:
        pick = tracker.best.get(rule)
        selections[rule] = (
            None
            if pick is None
            else {
                "description": describe(rule),
                "reads": selection_reads(rule, data),
                "step": pick["step"],
                "valid": pick["valid"],
                "test": pick["test"],
                "test_primary": primary_metric(pick["test"], cfg.dataset),
            }
        )
    return {
        "method": cfg.method,
        "dataset": cfg.dataset,
        "percent": cfg.percent if cfg.uses_percent() else None,
        "seed": cfg.seed,
        "steps": cfg.num_steps,
        "default_selection": default_selection(cfg.dataset, selections),
        "primary_metric": f"{primary_key(cfg.dataset)} accuracy"
        if "conflicting" in data["counts"]["test"]
        else "accuracy (no bias labels)",
        "selections": selections,
        "data": data,
        "config": cfg.to_dict(),
        "skipped_steps": skipped,  # steps whose loss was NaN / inf, skipped under --on_nonfinite skip
        "train_seconds": round(train_seconds, 2),
        "total_seconds": round(total_seconds, 2),
    }
