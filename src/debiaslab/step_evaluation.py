"""What the training loop does at an evaluation step (``train.TrainingLoop.evaluate`` and
``select``): the models' metrics on the valid and test splits, raw and averaged, and the
checkpoint of the models a selection rule picked. (``evaluate.py`` loads a saved checkpoint.)"""

from __future__ import annotations

import functools
from pathlib import Path

import torch

from debiaslab import checkpoints
from debiaslab.averaging import WeightAverage
from debiaslab.config import TrainConfig
from debiaslab.data.splits import Split
from debiaslab.data.transforms import BatchTransform
from debiaslab.diagnostics import weight_report
from debiaslab.metrics import predict_split
from debiaslab.prepare import autocast_logits, evaluate
from debiaslab.selection import WA_PREFIX, evaluation_of


def evaluate_all(
    method,
    valid_split,
    test_split,
    transform,
    C,
    cfg,
    train_split,
    average: WeightAverage | None = None,
) -> dict:
    """The raw models' valid and test metrics and, once averaging has started, the averaged
    models' under ``"wa"``; the valid split's pseudo bias labels come from the method's biased
    branch (as it is now), the same for both."""
    method.eval()
    pseudo = pseudo_biases(method, valid_split, transform, cfg)
    record = evaluate_pair(
        method.eval_predict, valid_split, test_split, transform, C, cfg, method.amp, pseudo
    )
    if average is not None and average.started:
        averaged = functools.partial(type(method).predict, average.models)
        record["wa"] = evaluate_pair(
            averaged, valid_split, test_split, transform, C, cfg, method.amp, pseudo
        )
    method.train()
    w = method.sample_weights()
    if w is not None and train_split.biases is not None:  # bias labels read for logging only
        record["train_w"] = weight_report(w, train_split.targets != train_split.biases)
    return record


def pseudo_biases(method, split: Split, transform: BatchTransform, cfg: TrainConfig):
    """The class the method's biased branch predicts for each sample of ``split`` (None without one)."""
    with torch.no_grad():
        if method.bias_logits(transform.eval(split.images[:1])) is None:  # a one-sample probe
            return None
    return predict_split(
        autocast_logits(method.bias_logits, method.amp),
        split.images,
        transform.eval,
        cfg.eval_batch_size,
    )


def evaluate_pair(logits_of, valid_split, test_split, transform, C, cfg, amp, pseudo) -> dict:
    return {
        "valid": evaluate(logits_of, valid_split, transform, C, cfg.eval_batch_size, amp, pseudo),
        "test": evaluate(logits_of, test_split, transform, C, cfg.eval_batch_size, amp),
    }


def save_pick(
    run_dir: Path, rules: list[str], cfg: TrainConfig, done: int, method, average, record: dict
):
    """checkpoint_<rule>.pt for each of ``rules``: the models (raw, or averaged for wa_*, never
    both in one call) that these selections picked at ``done``, written once."""
    models = average.models if rules[0].startswith(WA_PREFIX) else method.models
    evaluation = evaluation_of(record, rules[0])
    checkpoints.save_models(
        run_dir,
        rules,
        {
            "config": cfg.to_dict(),
            "method": cfg.method,
            "step": done,
            "models": {n: models[n].state_dict() for n in type(method).model_names},
            "metrics": {k: evaluation[k] for k in ("valid", "test")},
        },
    )
