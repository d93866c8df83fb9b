import torch.nn.functional as F

from debiaslab.methods.base import Method


class Vanilla(Method):
    """Empirical risk minimisation: one model, mean cross-entropy."""

    name = "vanilla"

    def loss(self, x, y, idx, draws):
        loss = F.cross_entropy(self.models["model"](x), y)
        return loss, {"loss": loss}
