"""The per-sample EMA + class-max normalisation + W machinery shared by LfF and DisEnt."""

from __future__ import annotations

import torch

from debiaslab.methods.base import Method
from debiaslab.methods.losses import PerSampleEMA, gce_from_ce, relative_difficulty


class RelativeDifficultyMethod(Method):
    """A method with a biased and a debiased branch, weighted by LfF's relative difficulty W."""

    step_state = ("ema",)  # both branches' loss EMAs, with their alpha
    step_floats = ("q",)  # the biased branch's GCE

    def __init__(self, cfg, models, train_targets, num_classes, generator):
        super().__init__(cfg, models, train_targets, num_classes, generator)
        # channel 0: the biased branch's loss EMA (L_b); channel 1: the debiased branch's (L_d)
        self.ema = PerSampleEMA(train_targets, num_classes, cfg.ema_alpha, channels=2)

    def weights(
        self, ce_b: torch.Tensor, ce_d: torch.Tensor, y: torch.Tensor, idx: torch.Tensor
    ) -> torch.Tensor:
        """Update both EMAs with the batch's detached CE, class-max normalise each, return W."""
        loss = self.ema.normalize(self.ema.update(idx, torch.stack([ce_b, ce_d], 1)), y)
        return relative_difficulty(loss[:, 0], loss[:, 1])

    def biased_branch_loss(self, ce_b: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """The biased branch's training term from its per-sample CE ``ce_b``, row ``r`` of which
        comes from the (bias features of) training sample ``idx[r]``: mean GCE over the rows."""
        return gce_from_ce(ce_b, self.cfg.q, self.cfg.gce_form).mean()

    def sample_weights(self) -> torch.Tensor:
        loss = self.ema.normalize(self.ema.values(), self.ema.targets)
        return relative_difficulty(loss[:, 0], loss[:, 1])

    def sample_state(self, idx):
        return self.ema.rows(idx)

    def keep_sample_state(self, idx, saved, keep) -> None:
        self.ema.keep_rows(idx, saved, keep)

    def extra_state(self) -> dict:
        return {"ema": self.ema.state_dict()}

    def load_extra_state(self, state: dict) -> None:
        self.ema.load_state_dict(state["ema"])
