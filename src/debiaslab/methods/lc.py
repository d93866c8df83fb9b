"""LC, Logit Correction (Liu et al., ICLR 2023, "Avoiding spurious correlations via logit
correction", arXiv 2212.01433), label-free. Written from the paper's description as summarised in
algorithms.md ("LC"); the authors' code (non-commercial licence) was not consulted.

Two branches train together, as in LfF: a biased network f_hat (GCE, ``cfg.q``) and the robust
network f, which predicts. Per step, on a batch (x_i, y_i):

1. P(a | x_i) = softmax(f_hat(x_i)), folded into a per-sample EMA (``cfg.ema_alpha``, LfF's
   bookkeeping: first visit = value); the pseudo-attribute a_i = argmax_a of that EMA. One-to-one
   case: as many attribute values as classes (attribute a is "the class f_hat reads off the bias").
2. Prior (Eq. 9-11): the batch estimate P_B(y, a) = 1/B sum_i P(a | x_i) [y = y_i], folded into a
   moving average P(y, a) <- alpha P(y, a) + (1 - alpha) P_B(y, a) (``lc_prior_alpha``; first
   step: P_B).
3. Corrected loss (Eq. 7): CE(f(x_i) + tau ln P(. | a_i), y_i), the log of column a_i of the prior,
   normalised over y. ln P(y, a_i) and ln P(y | a_i) differ by ln P(a_i), the same for every class,
   which the softmax cancels: the loss is the same either way. Prediction: f(x), uncorrected.
4. Group MixUp (Eq. 13): a sample is minority when a_i != y_i. Each minority sample i is mixed with
   a majority sample j of its class (a_j = y_j = y_i) drawn at random from the batch:
   x'_i = lam_i x_i + (1 - lam_i) x_j, lam_i ~ U(0.5, 1), and its correction term likewise,
   lam_i ln P(. | a_i) + (1 - lam_i) ln P(. | a_j); label y_i.

Choices the paper's summary leaves open, made here (each a place to revisit against the paper):

- Minority / majority use the EMA'd pseudo-attribute a_i (step 1), not the argmax of this step's
  f_hat(x_i): one notion of group for the correction and for the mixup.
- The prior's batch estimate uses the EMA'd P(a | x_i) of step 1 (after this batch is folded in),
  the same probabilities that give a_i; this step's prior is used in this step's loss.
- Group MixUp REPLACES the minority samples of the batch by their mixtures: f sees B inputs per
  step (majority samples as they are, minority samples mixed); the loss of f is the batch mean of
  the corrected CE. No extra weight for a mixup term. ``lc_mixup = False`` turns the mixup off.
- Partner choice with fixed shapes (no host read): for each i, scores s_ij ~ U(0, 1) (drawn in
  ``draw``) are masked to the candidates j (same label, majority) and the argmax taken. A minority
  sample with no candidate in the batch is left unmixed (its "partner" is itself, lam unused).
  Majority samples are never mixed.
- ln of the prior is taken of max(P, 1e-12) (only to keep an empty cell finite).
- tau (``lc_tau``) multiplies the log prior; tau = 1 is the correction Eq. 7 derives.
- Mixup starts at step 0 (no warm-up), as the correction does.

Hyper-parameters. The stored copies of the paper reachable from this project's search tool hold its
abstract and introduction only, so the appendix values below could not be checked against the
paper's tables; they are algorithms.md's: Adam, batch 256; lr 1e-2 (Colored MNIST, MLP), 1e-3
(Corrupted CIFAR-10, ResNet18), 1e-4 (BFFHQ); GCE q = 0.7 for f_hat. Not found and defaulted here:
tau = 1.0, the prior's moving-average factor 0.9, the per-sample EMA factor ``ema_alpha`` (LfF's,
0.7), mixup on. Equation numbers are those algorithms.md and the task give (Eq. 7, 9-11, 13).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from debiaslab.methods.base import Method
from debiaslab.methods.losses import PerSampleEMA, gce_from_ce
from debiaslab.methods.options import Option

LOG_EPS = 1e-12


# -- the formulas, each on plain tensors ------------------------------------------------------------
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
    """Logit Correction with Group MixUp (module docstring: the formulas and the open choices).

    ``loss = mean(GCE(f_hat(x), y)) + mean(CE(f(x') + tau ln P(. | a'), y))`` where x' and the
    correction are Group-MixUp'd for minority samples; predictions come from f (``models["model"]``).
    """

    name = "lc"
    model_names = ("biased", "model")
    options = (
        Option(
            "lc_tau", float, 1.0, "LC: weight of the log-prior correction of the logits",
            "LC's", "non-negative",
        ),
        Option(
            "lc_prior_alpha", float, 0.9,
            "LC: moving-average factor of the group prior estimate", "ours, fixed before any run",
            "fraction",
        ),
        Option(
            "lc_mixup", bool, True,
            "LC: Group MixUp of minority samples with majority samples of their class",
            "LC's Group MixUp",
        ),
    )  # fmt: skip
    head_inputs = 1

    def __init__(self, cfg, models, train_targets, num_classes, generator, train_biases=None):
        super().__init__(cfg, models, train_targets, num_classes, generator)
        self.tau, self.prior_alpha, self.mixup = (
            float(cfg.lc_tau),
            float(cfg.lc_prior_alpha),
            bool(cfg.lc_mixup),
        )
        # the per-sample EMA of P(a | x) = softmax(f_hat(x)): one channel per attribute value
        self.ema = PerSampleEMA(train_targets, num_classes, cfg.ema_alpha, channels=num_classes)
        device = train_targets.device
        self.prior = torch.full((num_classes, num_classes), 1.0 / num_classes**2, device=device)
        self.prior_seen = torch.zeros((), dtype=torch.bool, device=device)

    def draw(self, batch_size, step):
        """Group MixUp's randomness: lam ~ U(0.5, 1) per sample, then a [B, B] matrix of U(0, 1)
        scores that picks each minority sample's partner."""
        if not self.mixup:
            return {}
        g = self.generator
        lam = 0.5 + 0.5 * torch.rand(batch_size, generator=g, device=g.device)
        scores = torch.rand(batch_size, batch_size, generator=g, device=g.device)
        return {"lam": lam, "scores": scores}

    def loss(self, x, y, idx, draws):
        logits_b = self.models["biased"](x)
        ce_b = F.cross_entropy(logits_b, y, reduction="none")
        probs = self.ema.update(idx, F.softmax(logits_b.detach().float(), 1))  # EMA'd P(a | x_i)
        a = probs.argmax(1)
        prior = prior_update(
            self.prior,
            self.prior_seen,
            prior_batch_estimate(probs, y, self.num_classes),
            self.prior_alpha,
        )
        # the state takes copies; the loss reads ``prior`` (keep_sample_state may write the state)
        self.prior.copy_(prior)
        self.prior_seen.fill_(True)
        correction = correction_terms(log_class_given_attribute(prior), a)
        mixed_frac = torch.zeros((), device=y.device)
        if "lam" in draws:
            partner, mixed = choose_partners(y, a, draws["scores"].to(y.device))
            x, correction = group_mixup(x, correction, partner, mixed, draws["lam"].to(y.device))
            mixed_frac = mixed.float().mean()
        loss_lc = corrected_ce(self.models["model"](x), correction, y, self.tau).mean()
        loss_b = gce_from_ce(ce_b, self.cfg.q, self.cfg.gce_form).mean()
        loss = loss_b + loss_lc
        return loss, {
            "loss": loss,
            "loss_b": loss_b,
            "loss_lc": loss_lc,
            "minority": (a != y).float().mean(),
            "mixed": mixed_frac,
        }

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
        """1 - EMA'd P(a = y_i | x_i) under f_hat: high where f_hat does not read the label off the
        bias (likely bias-conflicting); 0 for a sample not yet visited."""
        p_true = self.ema.values().gather(1, self.ema.targets[:, None]).squeeze(1)
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
