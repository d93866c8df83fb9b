"""LC, Logit Correction (Liu et al., ICLR 2023, "Avoiding spurious correlations via logit
correction", arXiv 2212.01433), label-free, as its authors run it (algorithms.md, "The later
methods as their authors ran them": "LC"; written from that description, never from the authors'
code, whose licence is non-commercial).

Two networks train together: a biased network f_hat (GCE, ``cfg.q``, weight
``lambda_dis_align``) and the robust network f, which alone predicts. Per step, on (x_i, y_i):

1. **Optimizers:** Adam for f at ``lr``, for f_hat at 0.1 x ``lr`` (same weight decay).
2. **Attribute posterior:** P(a | x_i) = softmax(f_hat(x_i)) of this step; a_i = its argmax (a
   temperature would not move the argmax, so there is none).
3. **Prior table** (C x C, rows y, columns a): for each sample in batch order, cell (y_i, a_i)
   becomes ema * cell + (1 - ema) * p_hat(y_i | x_i), the biased network's probability of the
   true class; the first visit sets the cell (``lc_prior_alpha`` = ema, 0.995).
   ``prior_table_update`` does the batch's sequential updates in one vectorised step.
4. **Group MixUp:** sample i is minority when a_i != y_i. EVERY sample of class k gets a partner
   drawn uniformly, with replacement, from the batch's minority samples of class k, or, where
   the batch has none, from a random permutation of the batch's class-k samples. One lambda per
   batch, lambda ~ U(1 - 2 alpha, 1 - alpha) (the sample's own weight), alpha = 0.5 *
   rampup(step, curr_step), rampup(t, T) = exp(-5 (1 - min(t, T) / T)^2) (alpha = 0.5 at T = 0):
   x' = lambda x_i + (1 - lambda) x_partner, and the correction columns mixed the same way.
5. **Corrected loss:** CE(f(x') + tau log(Delta' + 1e-4), y_i), Delta' the mixed column a of
   the table (the partner has the same class, so lambda CE(., y_i) + (1 - lambda) CE(., y_p) is
   this one term); f sees only the mixed batch. tau (``lc_tau``) is 1 as the paper derives it.

``lc_variant = "earlier_reading"`` keeps debiaslab's first implementation, from an earlier
summary of the paper (runs recorded before ``lc_variant`` existed are that variant): P(a | x)
folded into a per-sample EMA (``ema_alpha``); a prior P(y, a) that is the moving average
(``lc_prior_alpha``, 0.9) of the batch estimates 1/B sum_i P(a | x_i) [y = y_i], its log taken as
ln P(y | a) (floored at 1e-12); only minority samples mixed, each with a random majority sample
of its class, lambda_i ~ U(0.5, 1) per sample (own weight), from step 0; f_hat at ``lr``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from debiaslab.methods.base import Method
from debiaslab.methods.disent import LAMBDA_DIS_ALIGN
from debiaslab.methods.losses import PerSampleEMA, gce_from_ce
from debiaslab.methods.options import Option

VARIANTS = ("authors", "earlier_reading")
LOG_EPS = 1e-12  # earlier_reading: the floor of its log prior
DELTA_FLOOR = 1e-4  # authors: log(Delta + 1e-4)
BIASED_LR_FACTOR = 0.1  # authors: f_hat trains at 0.1 x lr


# -- the authors' formulas, each on plain tensors ---------------------------------------------------
def prior_table_update(
    table: torch.Tensor,
    seen: torch.Tensor,
    y: torch.Tensor,
    a: torch.Tensor,
    p_true: torch.Tensor,
    ema: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The table after its per-sample updates in batch order: cell (y_i, a_i) <- ema * cell +
    (1 - ema) * p_true_i, the first visit of a cell (``seen`` [C, C] false) setting it to p_true_i.

    A cell visited m times in the batch ends at ema^m * old + sum_k (1 - ema) ema^(m - k) p_k (k the
    visit's rank); an unseen one at ema^(m - 1) p_1 + sum_{k >= 2} (1 - ema) ema^(m - k) p_k.
    Returns the new table and ``seen``."""
    C = table.shape[0]
    cell = y * C + a
    visits_of = F.one_hot(cell, C * C).to(p_true.dtype)  # [B, C * C]
    visits = visits_of.sum(0)
    rank = visits_of.cumsum(0).gather(1, cell[:, None]).squeeze(1)  # 1 for a cell's first visit
    later = visits[cell] - rank  # the visits of the same cell after this one
    was_seen = seen.flatten()
    first_ever = (rank == 1) & ~was_seen[cell]
    weight = torch.where(first_ever, 1.0, 1.0 - ema) * torch.pow(ema, later)
    kept = torch.where(was_seen, torch.pow(ema, visits), 0.0)
    new = table.flatten() * kept + torch.zeros_like(kept).index_add(0, cell, weight * p_true)
    return new.view(C, C), (was_seen | (visits > 0)).view(C, C)


def mixup_alpha(step: int, curr_step: int) -> float:
    """alpha = 0.5 * rampup(step, curr_step), rampup(t, T) = exp(-5 (1 - min(t, T) / T)^2)."""
    if curr_step <= 0:
        return 0.5
    return 0.5 * math.exp(-5.0 * (1.0 - min(step, curr_step) / curr_step) ** 2)


def minority_partners(
    y: torch.Tensor, a: torch.Tensor, scores: torch.Tensor, keys: torch.Tensor
) -> torch.Tensor:
    """Each sample's Group MixUp partner, with fixed shapes: the minority sample (a_j != y_j) of its
    class with the highest ``scores[i, j]`` (uniform draws: a uniform choice, with replacement);
    where its class has no minority sample in the batch, its image under a random permutation of
    its class's samples (the order of ``keys``, uniform draws)."""
    minority = a != y
    candidates = (y[:, None] == y[None, :]) & minority[None, :]
    chosen = torch.where(candidates, scores, torch.full_like(scores, -1.0)).argmax(1)
    by_index = torch.argsort(y, stable=True)  # class by class, each in index order
    by_key = torch.argsort(keys)
    by_key = by_key[torch.argsort(y[by_key], stable=True)]  # class by class, each in key order
    shuffled = by_key[torch.argsort(by_index)]  # sample by_index[k] gets by_key[k]
    return torch.where(candidates.any(1), chosen, shuffled)


def mixed_correction_log(delta: torch.Tensor, partner: torch.Tensor, lam: torch.Tensor):
    """log(lam Delta_i + (1 - lam) Delta_partner + 1e-4): mixed in probability space, then the log."""
    return torch.log(lam * delta + (1 - lam) * delta[partner] + DELTA_FLOOR)


# -- earlier_reading's formulas, each on plain tensors ----------------------------------------------
def prior_batch_estimate(probs: torch.Tensor, y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Eq. 9-10: P_B(y, a) = 1/B sum_i P(a | x_i) [y = y_i], from ``probs`` [B, A] = P(a | x_i).
    Returns [num_classes, A] (rows: class y, columns: attribute a); it sums to 1."""
    table = torch.zeros(num_classes, probs.shape[1], device=probs.device, dtype=probs.dtype)
    return table.index_add(0, y, probs) / len(y)


def prior_update(
    prior: torch.Tensor, seen: torch.Tensor, batch: torch.Tensor, alpha: float
) -> torch.Tensor:
    """Eq. 11: the moving average of the batch estimates, alpha * prior + (1 - alpha) * batch;
    the batch estimate itself where ``seen`` (0-d bool) is false (the first step)."""
    return torch.where(seen, alpha * prior + (1.0 - alpha) * batch, batch)


def log_class_given_attribute(prior: torch.Tensor) -> torch.Tensor:
    """ln P(y | a) = ln P(y, a) - ln sum_y' P(y', a), [C, A]; cells clamped at 1e-12 before the log."""
    return torch.log(prior.clamp_min(LOG_EPS)) - torch.log(
        prior.sum(0, keepdim=True).clamp_min(LOG_EPS)
    )


def correction_terms(log_prior: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """Each sample's correction: row i is column a_i of ``log_prior`` [C, A], i.e. [B, C]."""
    return log_prior[:, a].t()


def corrected_ce(
    logits: torch.Tensor, correction: torch.Tensor, y: torch.Tensor, tau: float
) -> torch.Tensor:
    """Eq. 7, per sample: CE(f(x) + tau * ln P(. | a_x), y)."""
    return F.cross_entropy(logits + tau * correction, y, reduction="none")


def choose_partners(
    y: torch.Tensor, a: torch.Tensor, scores: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Group MixUp's pairs, with fixed shapes. Sample i is minority when a_i != y_i; its candidates
    are the majority samples j (a_j == y_j) with y_j == y_i; it takes the candidate of highest
    ``scores[i, j]`` (uniform draws in [0, 1): a uniformly random candidate). Returns ``partner``
    [B] (i itself where i is not mixed) and ``mixed`` [B] bool (minority with a candidate)."""
    majority = a == y
    candidates = (y[:, None] == y[None, :]) & majority[None, :]
    best = torch.where(candidates, scores, torch.full_like(scores, -1.0)).argmax(1)
    mixed = ~majority & candidates.any(1)
    partner = torch.where(mixed, best, torch.arange(len(y), device=y.device))
    return partner, mixed


def group_mixup(
    x: torch.Tensor,
    correction: torch.Tensor,
    partner: torch.Tensor,
    mixed: torch.Tensor,
    lam: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 13: x'_i = lam_i x_i + (1 - lam_i) x_p(i) and the same mixture of the correction terms,
    where ``mixed``; elsewhere x_i and its own correction, exactly."""
    lam_x = lam.view(-1, *([1] * (x.dim() - 1))).to(x.dtype)
    x_mix = torch.where(mixed.view_as(lam_x), lam_x * x + (1 - lam_x) * x[partner], x)
    lam_c = lam[:, None].to(correction.dtype)
    c_mix = torch.where(
        mixed[:, None], lam_c * correction + (1 - lam_c) * correction[partner], correction
    )
    return x_mix, c_mix


class LC(Method):
    """Logit Correction with Group MixUp (module docstring: the formulas and the variants).

    ``loss = lambda_dis_align * mean(GCE(f_hat(x), y)) + mean(CE(f(x') + tau log(Delta' + 1e-4),
    y))``; predictions come from f (``models["model"]``).
    """

    name = "lc"
    model_names = ("biased", "model")
    color = "tab:green"
    options = (
        Option(
            "lc_variant", str, "authors",
            "LC: which LC to train: as its authors run it, or debiaslab's first reading of the "
            "paper (kept to compare)", "algorithms.md, the later methods as their authors ran them",
            choices=VARIANTS, saved_before="earlier_reading",
        ),
        Option(
            "lc_tau", float, 1.0, "LC: weight of the log-prior correction of the logits",
            "LC's", "non-negative",
        ),
        Option(
            "lc_prior_alpha", float, None,
            "LC: moving-average factor of the prior table (authors: 0.995) or, earlier_reading, "
            "of its batch estimates (0.9)", "the authors' ema; earlier_reading: ours", "fraction",
        ),
        Option(
            "lc_mixup", bool, True, "LC: Group MixUp (off: the corrected loss alone)",
            "LC's Group MixUp",
        ),
        LAMBDA_DIS_ALIGN,  # the biased model's GCE weight
    )  # fmt: skip
    head_inputs = 1
    # tau and prior_alpha: the step reads the run's copies of lc_tau and lc_prior_alpha
    step_state = ("ema", "prior", "prior_seen", "tau", "prior_alpha")
    step_floats = ("q",)  # the biased model's GCE

    @classmethod
    def preset(cls, dataset, percent):
        """On every dataset: LC's code has no Colored MNIST command, so the Group MixUp ramp's
        length is ours, DisEnt's CMNIST curr_step, fixed before any run."""
        return {"curr_step": 10_000}

    @classmethod
    def resolve_options(cls, cfg) -> dict:
        authors = cfg.lc_variant == "authors"
        alpha = cfg.lc_prior_alpha
        return {"lc_prior_alpha": alpha if alpha is not None else (0.995 if authors else 0.9)}

    def __init__(self, cfg, models, train_targets, num_classes, generator, train_biases=None):
        self.authors = cfg.lc_variant == "authors"
        super().__init__(cfg, models, train_targets, num_classes, generator)
        self.tau, self.prior_alpha, self.mixup = (
            float(cfg.lc_tau),
            float(cfg.lc_prior_alpha),
            bool(cfg.lc_mixup),
        )
        C, device = num_classes, train_targets.device
        if self.authors:
            # per sample, f_hat's probability of the true class when last seen (sample_weights)
            self.ema = PerSampleEMA(train_targets, C, alpha=0.0)
            self.prior = torch.zeros(C, C, device=device)
            self.prior_seen = torch.zeros(C, C, dtype=torch.bool, device=device)
        else:  # the per-sample EMA of P(a | x): one channel per attribute value
            self.ema = PerSampleEMA(train_targets, C, cfg.ema_alpha, channels=C)
            self.prior = torch.full((C, C), 1.0 / C**2, device=device)
            self.prior_seen = torch.zeros((), dtype=torch.bool, device=device)

    def optimizer_settings(self, name):
        lr, weight_decay = super().optimizer_settings(name)
        if self.authors and name == "biased":
            return lr * BIASED_LR_FACTOR, weight_decay
        return lr, weight_decay

    def lr(self) -> float:
        """The robust network's learning rate (the biased one's is a tenth of it, authors)."""
        return float(self.optimizers["model"].param_groups[0]["lr"])

    def draw(self, batch_size, step):
        """Group MixUp's randomness. Authors: the batch's lambda, a [B, B] matrix of U(0, 1) scores
        that picks minority partners and U(0, 1) keys that order the fallback permutation.
        earlier_reading: lam ~ U(0.5, 1) per sample and the scores."""
        if not self.mixup:
            return {}
        g = self.generator
        if self.authors:
            alpha = mixup_alpha(step, self.cfg.curr_step)
            lam = 1 - 2 * alpha + alpha * torch.rand((), generator=g, device=g.device)
        else:
            lam = 0.5 + 0.5 * torch.rand(batch_size, generator=g, device=g.device)
        scores = torch.rand(batch_size, batch_size, generator=g, device=g.device)
        if not self.authors:
            return {"lam": lam, "scores": scores}
        return {
            "lam": lam,
            "scores": scores,
            "keys": torch.rand(batch_size, generator=g, device=g.device),
        }

    def loss(self, x, y, idx, draws):
        logits_b = self.models["biased"](x)
        gce = gce_from_ce(
            F.cross_entropy(logits_b, y, reduction="none"), self.cfg.q, self.cfg.gce_form
        )
        probs = F.softmax(logits_b.detach().float(), 1)
        if self.authors:
            loss_b = self.cfg.lambda_dis_align * gce.mean()
            loss_lc, a, mixed = self._corrected_loss_authors(x, y, idx, probs, draws)
        else:
            loss_b = gce.mean()
            loss_lc, a, mixed = self._corrected_loss_earlier(x, y, idx, probs, draws)
        loss = loss_b + loss_lc
        return loss, {
            "loss": loss,
            "loss_b": loss_b,
            "loss_lc": loss_lc,
            "minority": (a != y).float().mean(),
            "mixed": mixed,
        }

    def _corrected_loss_authors(self, x, y, idx, probs, draws):
        """The corrected loss and a_x; its third value is the partners' share of the mix."""
        a = probs.argmax(1)
        p_true = probs.gather(1, y[:, None]).squeeze(1)
        self.ema.update(idx, p_true)
        prior, seen = prior_table_update(
            self.prior, self.prior_seen, y, a, p_true, self.prior_alpha
        )
        # the state takes copies; the loss reads ``prior`` (keep_sample_state may write the state)
        self.prior.copy_(prior)
        self.prior_seen.copy_(seen)
        delta = prior[:, a].t()  # [B, C]: column a_i of the table
        partner, lam = torch.arange(len(y), device=y.device), torch.ones((), device=y.device)
        if "lam" in draws:
            lam = draws["lam"].to(y.device)
            scores, keys = draws["scores"].to(y.device), draws["keys"].to(y.device)
            partner = minority_partners(y, a, scores, keys)
            x = lam.to(x.dtype) * x + (1 - lam.to(x.dtype)) * x[partner]
        log_delta = mixed_correction_log(delta, partner, lam)
        loss = corrected_ce(self.models["model"](x), log_delta, y, self.tau).mean()
        return loss, a, 1 - lam

    def _corrected_loss_earlier(self, x, y, idx, probs, draws):
        probs = self.ema.update(idx, probs)  # EMA'd P(a | x_i)
        a = probs.argmax(1)
        batch = prior_batch_estimate(probs, y, self.num_classes)
        prior = prior_update(self.prior, self.prior_seen, batch, self.prior_alpha)
        self.prior.copy_(prior)
        self.prior_seen.fill_(True)
        correction = correction_terms(log_class_given_attribute(prior), a)
        mixed_frac = torch.zeros((), device=y.device)
        if "lam" in draws:
            partner, mixed = choose_partners(y, a, draws["scores"].to(y.device))
            x, correction = group_mixup(x, correction, partner, mixed, draws["lam"].to(y.device))
            mixed_frac = mixed.float().mean()
        return corrected_ce(self.models["model"](x), correction, y, self.tau).mean(), a, mixed_frac

    def bias_logits(self, x):
        return self.models["biased"](x)

    # -- state -----------------------------------------------------------------------------------
    def sample_state(self, idx):
        return self.ema.rows(idx), self.prior.clone(), self.prior_seen.clone()

    def keep_sample_state(self, idx, saved, keep) -> None:
        rows, prior, seen = saved
        self.ema.keep_rows(idx, rows, keep)
        self.prior.copy_(torch.where(keep, self.prior, prior))
        self.prior_seen.copy_(torch.where(keep, self.prior_seen, seen))

    def sample_weights(self) -> torch.Tensor:
        """1 - f_hat's probability of the label (authors: when last seen; earlier_reading: its
        EMA'd P(a = y_i | x_i)): high where f_hat does not read the label off the bias (likely
        bias-conflicting); 0 for a sample not yet visited."""
        values = self.ema.values()
        p_true = values if self.authors else values.gather(1, self.ema.targets[:, None]).squeeze(1)
        return torch.where(self.ema.visited, 1.0 - p_true, torch.zeros_like(p_true))

    def extra_state(self) -> dict:
        return {
            "ema": self.ema.state_dict(),
            "prior": self.prior.clone(),
            "prior_seen": self.prior_seen.clone(),
        }

    def load_extra_state(self, state: dict) -> None:
        self.ema.load_state_dict(state["ema"])
        self.prior.copy_(state["prior"].to(self.prior.device))
        self.prior_seen.copy_(state["prior_seen"].to(self.prior_seen.device))
