"""DeNetDM (Vadakkeeveetil Sreelatha et al., NeurIPS 2024, "Debiasing by network depth
modulation"), label-free; algorithms.md, "DeNetDM".

Stage ``poe`` (``denetdm_stage1_steps``): a DEEP and a SHALLOW branch (``denetdm_deep`` /
``denetdm_shallow``: CMNIST a 5- vs a 3-linear-layer MLP; C-CIFAR10 ResNet-20 vs a 3-layer CNN;
BFFHQ ResNet-18 vs a 4-layer CNN) that share one linear classifier (the shallow model's ``fc``),
trained as a product of experts: CE of the classifier on the SUM of their features,
``CE(W (z_deep + z_shallow) + b, y)``, i.e. of the sum of the two experts' logits ``W z + b`` (less
one ``b``): softmax of a sum of logits is the normalised product of the two softmaxes. Given
distinct depths, the deep branch takes the bias, the shallow one the core attribute. Adam at
``denetdm_stage1_lr`` / ``denetdm_stage1_weight_decay``, no LR schedule. Evaluations in this stage
score the shallow expert alone, ``W z_shallow + b`` (the debiased one).

Stage ``main``: both branches and the shared classifier frozen (eval mode, no gradient); the target
``model`` (the usual architecture, fresh, its own head) trains with a product of experts with the
biased expert ``f_b = W z_deep + b`` plus a distillation from the shallow expert
``f_s = W z_shallow + b``, at temperature T:

    L = CE(f_t(x) + f_b(x), y) + w * T^2 * mean_i sum_c -softmax(f_s(x_i) / T)_c
                                                   * log_softmax(f_t(x_i) / T)_c

At test time the target alone predicts. The run's ``lr`` / ``weight_decay`` / LR schedule apply to
it. (The deep model's own ``fc`` is never used.)

Why one shared classifier: with one head per branch instead, measured on CMNIST (10,000 stage-1
steps, seed 0), the shallow expert alone reached 0.26-0.30 unbiased test accuracy at 0.5pct and
0.64-0.69 at 5pct, against 0.44-0.46 and 0.79-0.85 with the shared one.

Where we differ from the authors' code (read, not copied): their stage 2 sums the target's
features with the deep branch's into the stage-1 classifier, which it goes on training (moving the
frozen bias expert too); here the target has its own head and the experts stay frozen, so the
target may be any model. They keep the stage-1 state of best validation accuracy, on a validation
split that is their test set; here stage 1 ends with its last state, and no stage reads test
labels. Their CNNs use no padding; ours pad, so they run on inputs of any size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from debiaslab.errors import UserError
from debiaslab.methods.base import Method, Stage
from debiaslab.methods.losses import mean_ce
from debiaslab.methods.options import Option

BRANCHES = ("deep", "shallow")


def default_branches(model: str, dataset: str) -> tuple[str, str]:
    """The deep and shallow architectures of the paper for a run's model and dataset."""
    if model.startswith("mlp"):
        return "mlp_deep", "mlp_shallow"
    if model == "resnet20" or dataset == "cifar10c":
        return "resnet20", "cnn3"
    return model, "cnn4"


def product_of_experts_loss(
    logits_a: torch.Tensor, logits_b: torch.Tensor, y: torch.Tensor
) -> torch.Tensor:
    """CE of the product of the two experts' softmaxes, renormalised: CE of the summed logits."""
    return mean_ce(logits_a + logits_b, y)


def distillation_loss(
    student: torch.Tensor, teacher: torch.Tensor, temperature: float
) -> torch.Tensor:
    """``T^2`` times the batch mean of the cross-entropy of the student's tempered softmax against
    the teacher's (Hinton et al. 2015; the T^2 keeps its gradient's scale independent of T)."""
    soft_targets = F.softmax(teacher.float() / temperature, dim=1)
    log_probs = F.log_softmax(student.float() / temperature, dim=1)
    return -(soft_targets * log_probs).sum(1).mean() * temperature**2


class DeNetDM(Method):
    """Stage ``poe`` trains the deep and shallow branches together; ``main`` distils the target."""

    name = "denetdm"
    model_names = ("model",)
    options = (
        Option(
            "denetdm_stage1_steps", int, 10_000,
            "DeNetDM: steps of stage 1, the deep and shallow branches trained as a product of "
            "experts", "ours; the presets give the authors' epochs", "positive",
        ),
        Option(
            "denetdm_stage1_lr", float, 0.001,
            "DeNetDM: Adam learning rate of stage 1 (--lr is the target's, in stage 2)",
            "the authors' (CMNIST, C-CIFAR10)", "positive",
        ),
        Option(
            "denetdm_stage1_weight_decay", float, 0.001,
            "DeNetDM: Adam weight decay of stage 1 (--weight_decay is the target's)",
            "the authors' (CMNIST, C-CIFAR10)", "non-negative",
        ),
        Option(
            "denetdm_temperature", float, 2.0,
            "DeNetDM: temperature T of the distillation from the shallow branch in stage 2",
            "the authors'", "positive",
        ),
        Option(
            "denetdm_distill_weight", float, 1.0, "DeNetDM: weight of that distillation term",
            "the authors'", "non-negative",
        ),
        Option(
            "denetdm_deep", str, None,
            "DeNetDM: the deep (biased) branch's architecture (None: mlp_deep for an MLP, "
            "resnet20 on 32x32 images, else the run's --model)", "the authors' branches", "model",
        ),
        Option(
            "denetdm_shallow", str, None,
            "DeNetDM: the shallow (debiased) branch's architecture (None: mlp_shallow for an "
            "MLP, cnn3 on 32x32 images, else cnn4)", "the authors' branches", "model",
        ),
    )  # fmt: skip

    @classmethod
    def resolve_options(cls, cfg) -> dict:
        deep, shallow = default_branches(cfg.model, cfg.dataset)
        return {
            "denetdm_deep": cfg.denetdm_deep or deep,
            "denetdm_shallow": cfg.denetdm_shallow or shallow,
        }

    @classmethod
    def validate(cls, cfg) -> None:
        from debiaslab.models import MODELS

        deep, shallow = (
            MODELS[name](num_classes=2).feature_dim
            for name in (cfg.denetdm_deep, cfg.denetdm_shallow)
        )
        if deep != shallow:
            raise UserError(
                f"DeNetDM's branches share one classifier, so their features must have one size: "
                f"--denetdm_deep {cfg.denetdm_deep} has {deep}, --denetdm_shallow "
                f"{cfg.denetdm_shallow} has {shallow}; pick branches of equal feature size"
            )

    @classmethod
    def model_heads(cls, cfg) -> dict[str, int]:
        return {"model": 1, "deep": 1, "shallow": 1}

    @classmethod
    def model_architecture(cls, cfg, name: str) -> str:
        return {"deep": cfg.denetdm_deep, "shallow": cfg.denetdm_shallow}.get(name, cfg.model)

    @classmethod
    def stages(cls, cfg) -> tuple[Stage, ...]:
        return (
            Stage("poe", cfg.denetdm_stage1_steps, BRANCHES),
            Stage("main", cfg.num_steps, ("model",)),
        )

    def optimizer_settings(self, name: str) -> tuple[float, float]:
        if name in BRANCHES:
            return self.cfg.denetdm_stage1_lr, self.cfg.denetdm_stage1_weight_decay
        return super().optimizer_settings(name)

    def _main(self) -> bool:
        return self.stage.name == "main"

    def train(self) -> None:
        """Only the stage's models in training mode: a frozen branch's BatchNorm statistics stay."""
        for name, model in self.models.items():
            model.train(name in self.stage.models)

    def experts(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The deep and the shallow branch's feature vectors."""
        return self.models["deep"].extract(x), self.models["shallow"].extract(x)

    def loss(self, x, y, idx, draws):
        head = self.models["shallow"].fc
        if not self._main():
            z_deep, z_shallow = self.experts(x)
            loss = mean_ce(head(z_deep + z_shallow), y)
            return loss, {"loss": loss}
        with torch.no_grad():
            z_deep, z_shallow = self.experts(x)
            biased, teacher = head(z_deep), head(z_shallow)
        logits = self.models["model"](x)
        poe = product_of_experts_loss(logits, biased, y)
        distill = distillation_loss(logits, teacher, self.cfg.denetdm_temperature)
        loss = poe + self.cfg.denetdm_distill_weight * distill
        return loss, {"loss": loss, "poe": poe, "distill": distill}

    def bias_logits(self, x):
        """The deep expert through the shared classifier: the branch stage 1 leaves with the bias."""
        return self.models["shallow"].fc(self.models["deep"].extract(x))

    def eval_predict(self, x):
        return self.predict(self.models, x) if self._main() else self.models["shallow"](x)

    def _schedule(self, step: int) -> None:
        """The run's LR schedule is the target's; the branches keep their learning rate."""
        if self._main() and self.schedulers and step >= self.cfg.curr_step:
            self.schedulers["model"].step()

    def lr(self) -> float:
        return float(self.optimizers[self.stage.models[0]].param_groups[0]["lr"])
