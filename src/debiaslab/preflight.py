"""What is checked before a run writes anything: that its models build for its data, and which
of its settings cannot take effect in its steps (each a warning, printed at start and kept in
config.json)."""

from __future__ import annotations

import torch

from debiaslab.averaging import DEFAULT_DECAY
from debiaslab.config import TrainConfig
from debiaslab.data.sampler import check_batch_fits
from debiaslab.data.splits import DatasetBundle
from debiaslab.errors import UserError
from debiaslab.methods import METHODS
from debiaslab.methods.base import StagePlan
from debiaslab.models import BUILTIN_MODELS, check_model


def check_models(method_cls, cfg: TrainConfig, bundle: DatasetBundle) -> None:
    """A user's model factories build models that read the data's images and feed their heads
    (UserError otherwise); built-in models are known to. The global RNG is left as it was, so
    the run's own models are the ones its seed gives."""
    heads = method_cls.model_heads(cfg)
    archs = {n: method_cls.model_architecture(cfg, n).lower() for n in heads}
    users = {n: arch for n, arch in archs.items() if arch not in BUILTIN_MODELS}
    in_shape = tuple(bundle.train.images.shape[1:])
    rgb = in_shape[0] == 3
    if not rgb:
        check_not_rgb(cfg, in_shape[0])
    if rgb and not users:  # built-in models read RGB as built
        return
    builtin_fix = f"{TO_RGB}, or pass a model of your own (a factory of in_shape)"
    with torch.random.fork_rng(devices=[]):
        models = method_cls.build_models(cfg, bundle.num_classes, in_shape)
        for name, model in models.items():
            if name in users or not rgb:
                fix = None if name in users else builtin_fix
                check_model(archs[name], model, heads[name], in_shape, fix=fix)


def check_batch_size(cfg: TrainConfig, bundle: DatasetBundle) -> None:
    """The sampler's own check, before anything is written."""
    check_batch_fits(len(bundle.train.targets), cfg.batch_size)


TO_RGB = (
    "convert the images to RGB (images[:, :3] drops an alpha channel, images.expand(-1, 3, -1, "
    "-1) makes grey RGB)"
)


def check_not_rgb(cfg: TrainConfig, channels: int) -> None:
    """The normalisation subtracts an RGB mean: images of other channels are refused up front."""
    if cfg.normalize:
        raise UserError(
            f"normalize subtracts an RGB mean and the images have {channels} channels; {TO_RGB}, "
            "or train without it (normalize=False)"
        )


def setting_warnings(cfg: TrainConfig) -> list[str]:
    """One line per setting of ``cfg`` (resolved) that its steps never reach."""
    method_cls = METHODS[cfg.method]
    steps = cfg.num_steps
    out = [
        f"{name} {getattr(cfg, name)}: {effect} would come at step {value}, at or beyond "
        f"num_steps {steps}, so never in this run; lower {name} or raise num_steps"
        for name, (value, effect) in method_cls.step_settings(cfg).items()
        if value >= steps
    ]
    decay = DEFAULT_DECAY if cfg.wa_decay is None else cfg.wa_decay
    start = method_cls.average_start(cfg) if cfg.wa_start is None else cfg.wa_start
    if decay and start >= steps:
        out.append(
            f"weight averaging starts at step {start}, at or beyond num_steps {steps}: no "
            "averaged model, no wa_* pick, and the run ships its last model; lower wa_start "
            "(or curr_step) or raise num_steps"
        )
    elif decay and decay ** (steps - start) > 0.5:
        n = steps - start
        out.append(
            f"weight averaging (wa_decay {decay:g}) runs over the last {n} steps only: the "
            f"wa_* models still hold {decay ** (n - 1):.0%} of step {start}'s weights (it "
            f"averages over about {1 / (1 - decay):,.0f} steps), so they lag the run; "
            + (f"lower wa_decay (e.g. {1 - 5 / n:.3g}) or " if n >= 20 else "")
            + "turn it off (wa_decay 0)"
        )
    total = StagePlan(method_cls.stages(cfg)).total
    if cfg.valid_freq >= total:
        out.append(
            f"valid_freq {cfg.valid_freq} is at or beyond the run's {total} steps: it evaluates "
            "only at its last step, so every selection rule picks the last model; lower "
            f"valid_freq (e.g. {max(1, total // 10)})"
        )
    return out
