from debiaslab.methods.base import Method
from debiaslab.methods.losses import mean_ce


class Vanilla(Method):
    """Empirical risk minimisation: one model, mean cross-entropy."""

    name = "vanilla"
    color = "tab:gray"

    def loss(self, x, y, idx, draws):
        loss = mean_ce(self.models["model"](x), y)
        return loss, {"loss": loss}
