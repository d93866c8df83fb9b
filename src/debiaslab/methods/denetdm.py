"""DeNetDM (Vadakkeeveetil Sreelatha et al., NeurIPS 2024, "Debiasing by network depth
modulation"), label-free; algorithms.md, "DeNetDM".

Stage ``poe`` (``denetdm_stage1_steps``): a DEEP and a SHALLOW branch (``denetdm_deep`` /
``denetdm_shallow``: CMNIST a 5- vs a 3-linear-layer MLP; C-CIFAR10 ResNet-20 vs a 3-layer CNN;
BFFHQ ResNet-18 vs a 4-layer CNN) trained as a product of experts: CE of the summed logits,
``CE(f_deep(x) + f_shallow(x), y)`` (softmax of a sum of logits = normalised product of the two
softmaxes). Given distinct capacities, the deep branch takes the bias, the shallow one the core
attribute. Adam at ``denetdm_stage1_lr`` / ``denetdm_stage1_weight_decay``, no LR schedule.
Evaluations in this stage score the shallow branch alone (the debiased one).

Stage ``main``: both branches frozen (eval mode, no gradient); the target ``model`` (the usual
architecture, fresh) trains with a product of experts with the biased branch plus a distillation
from the shallow branch, at temperature T:

    L = CE(f_t(x) + f_deep(x), y) + w * T^2 * mean_i sum_c -softmax(f_shallow(x_i) / T)_c
                                                   * log_softmax(f_t(x_i) / T)_c

At test time the target alone predicts. The run's ``lr`` / ``weight_decay`` / LR schedule apply to
it.

Where we differ from the authors' code (read, not copied): their branches sum FEATURES into one
shared linear classifier that stage 2 goes on training (which moves the frozen bias branch's
logits too); here each branch has its own head, so PoE sums logits and a frozen branch stays frozen.
They keep the stage-1 state of best validation accuracy, on a validation split that is their test
set; here stage 1 ends with its last state, and no stage reads test labels. Their CNNs use no
padding; ours pad, so they run on inputs of any size.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from debiaslab.methods.base import Method, Stage

BRANCHES = ("deep", "shallow")


def default_branches(model: str, dataset: str) -> tuple[str, str]:
    """The deep and shallow architectures of the paper for a run's model and dataset."""
    if model.startswith("mlp"):
        return "mlp_deep", "mlp_shallow"
    if model == "resnet20" or dataset == "cifar10c":
        return "resnet20", "cnn3"
    return model, "cnn4"


def product_of_experts_loss(logits_a: torch.Tensor, logits_b: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """CE of the product of the two experts' softmaxes, renormalised: CE of the summed logits."""
    return F.cross_entropy(logits_a + logits_b, y)


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T^2`` times the batch mean of the cross-entropy of the student's tempered softmax against
    the teacher's (Hinton et al. 2015; the T^2 keeps its gradient's scale independent of T)."""
    soft_targets = F.softmax(teacher.float() / temperature, dim=1)
    log_probs = F.log_softmax(student.float() / temperature, dim=1)
    return -(soft_targets * log_probs).sum(1).mean() * temperature**2


class DeNetDM(Method):
    """Stage ``poe`` trains the deep and shallow branches together; ``main`` distils the target."""

    name = "denetdm"
    model_names = ("model",)

    @classmethod
    def model_heads(cls, cfg) -> dict[str, int]:
        return {"model": 1, "deep": 1, "shallow": 1}

    @classmethod
    def model_architecture(cls, cfg, name: str) -> str:
        return {"deep": cfg.denetdm_deep, "shallow": cfg.denetdm_shallow}.get(name, cfg.model)

    @classmethod
    def stages(cls, cfg) -> tuple[Stage, ...]:
        return (Stage("poe", cfg.denetdm_stage1_steps, BRANCHES), Stage("main", cfg.num_steps, ("model",)))

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

    def loss(self, x, y, idx, draws):
        deep, shallow = self.models["deep"], self.models["shallow"]
        if not self._main():
            loss = product_of_experts_loss(deep(x), shallow(x), y)
            return loss, {"loss": loss}
        with torch.no_grad():
            biased, teacher = deep(x), shallow(x)
        logits = self.models["model"](x)
        poe = product_of_experts_loss(logits, biased, y)
        distill = distillation_loss(logits, teacher, self.cfg.denetdm_temperature)
        loss = poe + self.cfg.denetdm_distill_weight * distill
        return loss, {"loss": loss, "poe": poe, "distill": distill}

    def eval_predict(self, x):
        return self.predict(self.models, x) if self._main() else self.models["shallow"](x)

    def _schedule(self, step: int) -> None:
        """The run's LR schedule is the target's; the branches keep their learning rate."""
        if self._main() and self.schedulers and step >= self.cfg.curr_step:
            self.schedulers["model"].step()

    def lr(self) -> float:
        return float(self.optimizers[self.stage.models[0]].param_groups[0]["lr"])
