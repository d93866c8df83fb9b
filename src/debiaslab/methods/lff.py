import torch.nn.functional as F

from debiaslab.methods.reweighting import RelativeDifficultyMethod


class LfF(RelativeDifficultyMethod):
    """Learning from Failure (Nam et al., 2020): a GCE-trained biased model re-weights a debiased one.

    ``loss = mean(GCE(f_b(x), y)) + mean(W * CE(f_d(x), y))``; predictions come from ``f_d``.
    """

    name = "lff"
    color = "tab:blue"
    model_names = ("biased", "debiased")
    # LfF's Colored MNIST recipe from its own code, beside the paper presets: LfF's formulas are
    # ours, but the DisEnt paper's LfF recipe was never released, and our cmnist-*-lff preset is
    # the BiasEnsemble authors' (lr 0.01, 50,000 steps, 100-100-16 MLP)
    recipes = {
        "cmnist": {
            "lff_code": {
                "config": {"lr": 0.001, "num_steps": 23_500, "model": "mlp_lff"},
                "source": "LfF's own code (Nam et al. 2020): lr 0.001, 23,500 steps, 100-100-100 MLP",
            },
            "lff_code_lr": {
                "config": {"lr": 0.001},
                "source": "LfF's own code's learning rate (0.001) alone, the rest as cmnist-*-lff",
            },
        }
    }

    def loss(self, x, y, idx, draws):
        ce_b = F.cross_entropy(self.models["biased"](x), y, reduction="none")
        ce_d = F.cross_entropy(self.models["debiased"](x), y, reduction="none")
        w = self.weights(ce_b, ce_d, y, idx)
        loss_b = self.biased_branch_loss(ce_b, idx)
        loss_d = (w * ce_d).mean()
        loss = loss_b + loss_d
        return loss, {"loss": loss, "loss_b": loss_b, "loss_d": loss_d, "w_mean": w.mean()}

    @staticmethod
    def predict(models, x):
        return models["debiased"](x)

    def bias_logits(self, x):
        return self.models["biased"](x)
