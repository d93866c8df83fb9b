import torch
import torch.nn.functional as F

from debiaslab.methods.base import Method
from debiaslab.methods.options import Option

SAMPLERS = ("balanced", "epochs")
OPTIMIZERS = ("adam", "sgd")
SGD_MOMENTUM = 0.9  # GroupDRO's image commands


class GroupDRO(Method):
    """Group distributionally robust optimisation (Sagawa et al., ICLR 2020). USES BIAS LABELS.

    Groups are the (target, bias) cells of the training set. Each step first moves the group
    weights, ``q_g <- q_g * exp(eta * loss_g)`` normalised (``loss_g``: the batch's mean CE of
    group g, 0 for a group absent from the batch, whose weight then only renormalises), then
    trains on ``sum_g q_g * loss_g``.

    Batches are group-balanced, as every official command runs it (``groupdro_sampler
    "balanced"``): sample i is drawn with probability proportional to 1 / |its group|, with
    replacement, so each present group fills about the same share of a batch. ``"epochs"``:
    shuffled epochs (debiaslab's first GroupDRO; runs recorded before the option existed).

    ``groupdro_optimizer "sgd"``: SGD with momentum 0.9 at the run's ``lr`` and ``weight_decay``,
    GroupDRO's image recipe (weight decay 1e-4 standard, up to 1.0 for its "strong l2"); the
    default is the preset's Adam.
    """

    name = "groupdro"
    color = "tab:brown"
    uses_bias_labels = True
    step_state = ("q", "groups")  # the group weights it moves, each sample's group it reads
    options = (
        Option(
            "groupdro_eta", float, 0.01, "GroupDRO: step size of the group weights",
            "GroupDRO's eta", "positive",
        ),
        Option(
            "groupdro_sampler", str, "balanced",
            "GroupDRO: how batches are drawn: group-balanced with replacement, or shuffled epochs",
            "every official GroupDRO command", choices=SAMPLERS, saved_before="epochs",
        ),
        Option(
            "groupdro_optimizer", str, "adam",
            "GroupDRO: Adam, or SGD with momentum 0.9 (GroupDRO's image recipe; pair it with "
            "--weight_decay, 1e-4 to 1.0)", "the presets' optimizer; sgd: GroupDRO's image commands",
            choices=OPTIMIZERS, hashed_at_default=False,
        ),
    )  # fmt: skip

    def __init__(self, cfg, models, train_targets, num_classes, generator, train_biases=None):
        super().__init__(cfg, models, train_targets, num_classes, generator)
        width = max(num_classes, int(train_biases.max()) + 1)
        self.groups = (train_targets * width + train_biases.to(train_targets.device)).long()
        self.num_groups = num_classes * width
        self.q = torch.full((self.num_groups,), 1.0 / self.num_groups, device=train_targets.device)

    def make_optimizer(self, name, model):
        if self.cfg.groupdro_optimizer == "sgd":
            lr, weight_decay = self.optimizer_settings(name)
            return torch.optim.SGD(
                model.parameters(), lr=lr, momentum=SGD_MOMENTUM, weight_decay=weight_decay
            )
        return super().make_optimizer(name, model)

    def loss(self, x, y, idx, draws):
        ce = F.cross_entropy(self.models["model"](x), y, reduction="none")
        group_loss = group_means(ce, self.groups[idx], self.num_groups)
        q = exponentiated_step(self.q, group_loss.detach(), self.cfg.groupdro_eta)
        self.q.copy_(q)  # q itself stays as backward saw it: keep_sample_state may write self.q
        loss = (q * group_loss).sum()
        return loss, {"loss": loss, "mean_ce": ce.mean(), "q_max": q.max()}

    def sample_probabilities(self):
        if self.cfg.groupdro_sampler != "balanced":
            return None
        return balanced_probabilities(self.groups, self.num_groups)

    def sample_state(self, idx):
        return self.q.clone()

    def keep_sample_state(self, idx, saved, keep) -> None:
        self.q.copy_(torch.where(keep, self.q, saved))

    def extra_state(self) -> dict:
        return {"q": self.q.clone()}

    def load_extra_state(self, state: dict) -> None:
        self.q.copy_(state["q"].to(self.q.device))


def balanced_probabilities(groups: torch.Tensor, num_groups: int) -> torch.Tensor:
    """Each sample's chance of a group-balanced draw: 1 / |its group|, over the number of groups
    present (so they sum to 1)."""
    sizes = torch.bincount(groups, minlength=num_groups).double()
    return 1.0 / (sizes[groups] * int((sizes > 0).sum()))


def group_means(values: torch.Tensor, groups: torch.Tensor, num_groups: int) -> torch.Tensor:
    """Mean of ``values`` over the samples of each group; 0 for a group with no sample."""
    sums = torch.zeros(num_groups, device=values.device, dtype=values.dtype).index_add(
        0, groups, values
    )
    # counts by index_add rather than bincount: the same counts, and vmap (fused runs) batches it
    counts = torch.zeros_like(sums).index_add(0, groups, torch.ones_like(values))
    return sums / counts.clamp_min(1)


def exponentiated_step(q: torch.Tensor, group_loss: torch.Tensor, eta: float) -> torch.Tensor:
    """GroupDRO's update of the group weights: ``q * exp(eta * loss)``, renormalised to sum 1."""
    q = q * torch.exp(eta * group_loss)
    return q / q.sum()
