"""The per-sample EMA + class-max normalisation + W machinery shared by LfF and DisEnt."""
from __future__ import annotations

import torch

from debiaslab.methods.base import Method
from debiaslab.methods.losses import PerSampleEMA, relative_difficulty


class RelativeDifficultyMethod(Method):
    """A method with a biased and a debiased branch, weighted by LfF's relative difficulty W."""

    def __init__(self, cfg, models, train_targets, num_classes, generator):
        super().__init__(cfg, models, train_targets, num_classes, generator)
        self.ema_b = PerSampleEMA(train_targets, num_classes, cfg.ema_alpha)
        self.ema_d = PerSampleEMA(train_targets, num_classes, cfg.ema_alpha)

    def weights(self, ce_b: torch.Tensor, ce_d: torch.Tensor, y: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """Update both EMAs with the batch's detached CE, class-max normalise, return W."""
        loss_b = self.ema_b.normalize(self.ema_b.update(idx, ce_b), y)
        loss_d = self.ema_d.normalize(self.ema_d.update(idx, ce_d), y)
        return relative_difficulty(loss_b, loss_d)

    def sample_weights(self) -> torch.Tensor:
        t = self.ema_b.targets
        return relative_difficulty(self.ema_b.normalize(self.ema_b.values(), t), self.ema_d.normalize(self.ema_d.values(), t))

    def extra_state(self) -> dict:
        return {"ema_b": self.ema_b.state_dict(), "ema_d": self.ema_d.state_dict()}

    def load_extra_state(self, state: dict) -> None:
        self.ema_b.load_state_dict(state["ema_b"])
        self.ema_d.load_state_dict(state["ema_d"])
