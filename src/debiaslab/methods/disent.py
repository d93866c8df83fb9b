import torch
import torch.nn.functional as F

from debiaslab.methods.options import Option
from debiaslab.methods.reweighting import RelativeDifficultyMethod

# DisEnt's loss weights (the paper's lambdas). They were general settings when the first runs were
# recorded, so every config keeps them at their default (in_every_config): those runs' hashes hold
# them. LC's biased model takes lambda_dis_align as its GCE weight.
LAMBDA_SWAP = Option(
    "lambda_swap", float, 1.0, "DisEnt: the weight of the swapped features' losses",
    "the paper code's default", "non-negative", in_every_config=True,
)  # fmt: skip
LAMBDA_DIS_ALIGN = Option(
    "lambda_dis_align", float, 1.0,
    "DisEnt: the weight of the bias branch's loss on the original features (LC: of the biased "
    "model's GCE)", "the paper code's default", "non-negative", in_every_config=True,
)  # fmt: skip
LAMBDA_SWAP_ALIGN = Option(
    "lambda_swap_align", float, 1.0,
    "DisEnt: the weight of the bias branch's loss on the swapped features",
    "the paper code's default", "non-negative", in_every_config=True,
)  # fmt: skip


def _paper(*, lr, lambda_swap, lambda_dis_align, lambda_swap_align, lr_gamma) -> dict:
    """One of the paper's DisEnt settings (algorithms.md): its learning rate, loss weights and
    decay factor, with the swap and the LR decay both from step 10,000 (in the flags' order)."""
    return {
        "lr": lr,
        "curr_step": 10_000,
        "lambda_swap": lambda_swap,
        "lambda_dis_align": lambda_dis_align,
        "lambda_swap_align": lambda_swap_align,
        "use_lr_decay": True,
        "lr_decay_step": 10_000,
        "lr_gamma": lr_gamma,
    }


class DisEnt(RelativeDifficultyMethod):
    """Disentangled Feature Augmentation (Lee et al., NeurIPS 2021), algorithms.md steps 1-8.

    Two encoders (intrinsic ``E_i``, bias ``E_b``); each classifier sees ``[z_i, z_b]`` with the
    other branch's feature detached. After ``curr_step`` the bias features are swapped across the
    batch to synthesise bias-conflicting feature pairs.
    """

    name = "disent"
    model_names = ("intrinsic", "bias")
    head_inputs = 2
    color = "tab:red"
    options = (LAMBDA_SWAP, LAMBDA_DIS_ALIGN, LAMBDA_SWAP_ALIGN)
    # the paper's settings per dataset, per ratio where they differ (presets.py)
    presets = {
        "cmnist": _paper(
            lr=0.01, lambda_swap=1.0, lambda_dis_align=10.0, lambda_swap_align=10.0, lr_gamma=0.5
        ),
        ("cifar10c", "0.5pct"): _paper(
            lr=0.0005, lambda_swap=1.0, lambda_dis_align=1.0, lambda_swap_align=1.0, lr_gamma=0.5
        ),
        ("cifar10c", "1pct"): _paper(
            lr=0.001, lambda_swap=1.0, lambda_dis_align=5.0, lambda_swap_align=5.0, lr_gamma=0.5
        ),
        ("cifar10c", "2pct"): _paper(
            lr=0.001, lambda_swap=1.0, lambda_dis_align=5.0, lambda_swap_align=5.0, lr_gamma=0.5
        ),
        ("cifar10c", "5pct"): _paper(
            lr=0.001, lambda_swap=1.0, lambda_dis_align=1.0, lambda_swap_align=1.0, lr_gamma=0.5
        ),
        "bffhq": _paper(
            lr=0.0001, lambda_swap=0.1, lambda_dis_align=2.0, lambda_swap_align=2.0, lr_gamma=0.1
        ),
    }

    def draw(self, batch_size, step):
        """The swap's permutation, drawn on the generator's device, from the first step after
        ``curr_step`` (strictly greater, as in the reference)."""
        if step <= self.cfg.curr_step:
            return {}
        g = self.generator
        return {"perm": torch.randperm(batch_size, generator=g, device=g.device)}

    def loss(self, x, y, idx, draws):
        cfg = self.cfg
        m_i, m_b = self.models["intrinsic"], self.models["bias"]
        z_i, z_b = m_i.extract(x), m_b.extract(x)
        n = len(y)
        swap = "perm" in draws
        if swap:
            # Feature swap: a random permutation p of the batch gives pairs [z_i, z_b[p]]. Both
            # classifiers see the original pairs (rows :n) and the swapped pairs (rows n:) in one
            # batch. The intrinsic side keeps its own label y; the bias side takes y[p], the label
            # of the bias features it received.
            perm = draws["perm"].to(y.device)
            z_i, z_b = torch.cat([z_i, z_i]), torch.cat([z_b, z_b[perm]])
            idx_b = idx[perm]  # the samples the swapped-in bias features come from
            y_i, y_b = torch.cat([y, y]), torch.cat([y, y[perm]])
        else:
            y_i = y_b = y
        # each classifier sees [z_i, z_b] with the other branch's feature detached
        ce_i = F.cross_entropy(m_i.fc(torch.cat([z_i, z_b.detach()], 1)), y_i, reduction="none")
        ce_b = F.cross_entropy(m_b.fc(torch.cat([z_i.detach(), z_b], 1)), y_b, reduction="none")
        w = self.weights(ce_b[:n], ce_i[:n], y, idx)  # from the original pairs only
        loss_dis_conflict = (w * ce_i[:n]).mean()
        loss_dis_align = self.biased_branch_loss(ce_b[:n], idx)
        loss = loss_dis_conflict + cfg.lambda_dis_align * loss_dis_align
        terms = {"loss_dis_conflict": loss_dis_conflict, "loss_dis_align": loss_dis_align}
        if swap:
            loss_swap_conflict = (w * ce_i[n:]).mean()
            loss_swap_align = self.biased_branch_loss(ce_b[n:], idx_b)
            loss = loss + cfg.lambda_swap * (
                loss_swap_conflict + cfg.lambda_swap_align * loss_swap_align
            )
            terms.update(loss_swap_conflict=loss_swap_conflict, loss_swap_align=loss_swap_align)
        terms.update(loss=loss, w_mean=w.mean())
        return loss, terms

    @classmethod
    def step_settings(cls, cfg) -> dict[str, tuple[int, str]]:
        return {"curr_step": (cfg.curr_step, "the feature swap"), **super().step_settings(cfg)}

    @classmethod
    def swap_start(cls, cfg) -> int:
        return cfg.curr_step

    @classmethod
    def average_start(cls, cfg) -> int:
        """From the feature swap on: before ``curr_step`` DisEnt trains without it."""
        return cfg.curr_step

    def bias_logits(self, x):
        z = torch.cat([self.models["intrinsic"].extract(x), self.models["bias"].extract(x)], 1)
        return self.models["bias"].fc(z)

    @staticmethod
    def predict(models, x):
        z = torch.cat([models["intrinsic"].extract(x), models["bias"].extract(x)], 1)
        return models["intrinsic"].fc(z)
