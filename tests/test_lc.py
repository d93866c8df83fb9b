"""LC's earlier_reading variant (debiaslab's first LC, kept as ``lc_variant="earlier_reading"``)
against computations written here: by hand, or by plain Python loops. The authors' variant, the
default: tests/test_lc_authors.py."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from debiaslab.methods.lc import (
    choose_partners,
    corrected_ce,
    correction_terms,
    group_mixup,
    log_class_given_attribute,
    prior_batch_estimate,
    prior_update,
)
from tests.conftest import (
    BATCH,
    N_CLASSES,
    make_method,
    method_batches,
)


def make_lc(model="mlp", **kw):
    return make_method("lc", model=model, **{"lc_variant": "earlier_reading", **kw})


# -- Eq. 9-11: the prior ------------------------------------------------------------------------------
def test_prior_batch_estimate_by_hand():
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.5, 0.25, 0.25], [0.0, 0.4, 0.6]])
    y = torch.tensor([0, 1, 0, 2])
    # rows y, columns a: each sample's P(a | x) lands in its own label's row, divided by B = 4
    expected = torch.tensor(
        [
            [(0.7 + 0.5) / 4, (0.2 + 0.25) / 4, (0.1 + 0.25) / 4],
            [0.1 / 4, 0.8 / 4, 0.1 / 4],
            [0.0, 0.4 / 4, 0.6 / 4],
        ]
    )
    got = prior_batch_estimate(probs, y, 3)
    assert torch.allclose(got, expected, atol=1e-7)
    assert torch.allclose(got.sum(), torch.tensor(1.0))


def test_prior_moving_average_by_hand():
    b1 = torch.tensor([[0.5, 0.1], [0.1, 0.3]])
    b2 = torch.tensor([[0.2, 0.2], [0.4, 0.2]])
    start = torch.full((2, 2), 0.25)
    p1 = prior_update(start, torch.tensor(False), b1, 0.9)
    assert torch.equal(p1, b1)  # first step: the batch estimate itself
    p2 = prior_update(p1, torch.tensor(True), b2, 0.9)
    assert torch.allclose(
        p2,
        torch.tensor(
            [
                [0.9 * 0.5 + 0.1 * 0.2, 0.9 * 0.1 + 0.1 * 0.2],
                [0.9 * 0.1 + 0.1 * 0.4, 0.9 * 0.3 + 0.1 * 0.2],
            ]
        ),
        atol=1e-7,
    )


def test_log_class_given_attribute_by_hand():
    prior = torch.tensor([[0.4, 0.05], [0.1, 0.45]])
    got = log_class_given_attribute(prior)
    expected = torch.tensor(
        [[math.log(0.4 / 0.5), math.log(0.05 / 0.5)], [math.log(0.1 / 0.5), math.log(0.45 / 0.5)]]
    )
    assert torch.allclose(got, expected, atol=1e-6)
    assert torch.isfinite(log_class_given_attribute(torch.tensor([[1.0, 0.0], [0.0, 0.0]]))).all()


# -- Eq. 7: the corrected loss ---------------------------------------------------------------------
def test_corrected_loss_matches_the_hand_formula():
    logits = torch.tensor([[2.0, -1.0, 0.5], [0.1, 0.2, 0.3]])
    y = torch.tensor([0, 2])
    a = torch.tensor([1, 2])
    prior = torch.tensor([[0.30, 0.02, 0.01], [0.01, 0.30, 0.02], [0.02, 0.02, 0.30]])
    tau = 0.5
    got = corrected_ce(logits, correction_terms(log_class_given_attribute(prior), a), y, tau)
    for i in range(2):
        col = [prior[c, a[i]].item() for c in range(3)]
        z = [logits[i, c].item() + tau * math.log(col[c] / sum(col)) for c in range(3)]
        expected = -z[y[i]] + math.log(sum(math.exp(v) for v in z))
        assert got[i].item() == pytest.approx(expected, abs=1e-5)


def test_joint_or_conditional_prior_column_gives_the_same_loss():
    """ln P(y, a) and ln P(y | a) differ by ln P(a), the same for every class: the softmax cancels it."""
    g = torch.Generator().manual_seed(0)
    logits, prior = torch.randn(6, 4, generator=g), torch.rand(4, 4, generator=g) + 0.01
    prior = prior / prior.sum()
    y, a = torch.randint(0, 4, (6,), generator=g), torch.randint(0, 4, (6,), generator=g)
    conditional = corrected_ce(
        logits, correction_terms(log_class_given_attribute(prior), a), y, 1.0
    )
    joint = F.cross_entropy(logits + torch.log(prior)[:, a].t(), y, reduction="none")
    assert torch.allclose(conditional, joint, atol=1e-5)


# -- Group MixUp: partners and mixing --------------------------------------------------------------
def partners_by_loop(y, a, scores):
    partner, mixed = [], []
    for i in range(len(y)):
        candidates = [j for j in range(len(y)) if y[j] == y[i] and a[j] == y[j]]
        if a[i] != y[i] and candidates:
            partner.append(max(candidates, key=lambda j: scores[i][j]))
            mixed.append(True)
        else:
            partner.append(i)
            mixed.append(False)
    return partner, mixed


def test_partner_choice_by_hand():
    y = torch.tensor([0, 0, 0, 1, 1, 2, 2, 0])
    a = torch.tensor([1, 0, 0, 1, 1, 0, 1, 2])
    # 0: minority of class 0, majority candidates 1 and 2 -> the higher score, 2; 7: same, -> 1
    # 5, 6: minority of class 2 with no majority sample of class 2 -> themselves, unmixed
    # 1-4: majority -> themselves
    scores = torch.full((8, 8), 0.5)
    scores[0, 1], scores[0, 2], scores[0, 3] = 0.1, 0.6, 0.99  # 3 is class 1: not a candidate of 0
    scores[7, 1], scores[7, 2] = 0.8, 0.3
    partner, mixed = choose_partners(y, a, scores)
    assert partner.tolist() == [2, 1, 2, 3, 4, 5, 6, 1]
    assert mixed.tolist() == [True, False, False, False, False, False, False, True]


def test_partner_choice_matches_a_loop_on_random_batches():
    g = torch.Generator().manual_seed(3)
    for _ in range(50):
        y, a = torch.randint(0, 3, (12,), generator=g), torch.randint(0, 3, (12,), generator=g)
        scores = torch.rand(12, 12, generator=g)
        partner, mixed = choose_partners(y, a, scores)
        exp_partner, exp_mixed = partners_by_loop(y.tolist(), a.tolist(), scores.tolist())
        assert partner.tolist() == exp_partner and mixed.tolist() == exp_mixed


def test_partner_choice_is_uniform_over_the_candidates():
    """Sample 0 (minority, class 0) has three majority candidates (1, 2, 3): each is drawn about a
    third of the time over uniform scores; never a sample of another class or a minority one."""
    y = torch.tensor([0, 0, 0, 0, 0, 1])
    a = torch.tensor([1, 0, 0, 0, 2, 1])
    g = torch.Generator().manual_seed(0)
    counts = torch.zeros(6)
    n = 3000
    for _ in range(n):
        partner, mixed = choose_partners(y, a, torch.rand(6, 6, generator=g))
        assert bool(mixed[0]) and bool(mixed[4])
        counts[partner[0]] += 1
    assert counts[0] == counts[4] == counts[5] == 0
    assert ((counts[1:4] / n - 1 / 3).abs() < 0.04).all(), counts


def test_group_mixup_of_inputs_and_correction_terms_by_hand():
    x = torch.arange(3 * 2 * 2, dtype=torch.float32).view(3, 1, 2, 2)
    corr = torch.tensor([[-1.0, -2.0], [-3.0, -4.0], [-5.0, -6.0]])
    partner, mixed = torch.tensor([2, 1, 2]), torch.tensor([True, False, False])
    lam = torch.tensor([0.75, 0.6, 0.9])
    x_mix, c_mix = group_mixup(x, corr, partner, mixed, lam)
    for k in range(4):
        assert x_mix.view(3, 4)[0, k].item() == pytest.approx(0.75 * k + 0.25 * (8 + k))
    assert torch.equal(x_mix[1:], x[1:])  # unmixed rows are untouched, bit for bit
    assert c_mix[0].tolist() == pytest.approx([0.75 * -1 + 0.25 * -5, 0.75 * -2 + 0.25 * -6])
    assert torch.equal(c_mix[1:], corr[1:])


def test_draw_gives_lam_in_half_open_upper_half_and_scores():
    method, _ = make_lc()
    d = method.draw(BATCH, 0)
    assert d["lam"].shape == (BATCH,) and d["scores"].shape == (BATCH, BATCH)
    assert ((d["lam"] >= 0.5) & (d["lam"] < 1.0)).all()
    assert make_lc(lc_mixup=False)[0].draw(BATCH, 0) == {}


# -- the whole step against a loop re-implementation ----------------------------------------------
def ref_adam(models, lr=0.01):
    return [torch.optim.Adam(m.parameters(), lr=lr) for m in models]


class LoopLC:
    """LC's step written out sample by sample: EMA of softmax(f_hat), prior, correction, mixup."""

    def __init__(self, method, targets, tau, prior_alpha, ema_alpha, mixup, q=0.7):
        self.mb, self.mf = (copy.deepcopy(method.models[n]) for n in ("biased", "model"))
        self.opts = ref_adam([self.mb, self.mf])
        self.tau, self.prior_alpha, self.ema_alpha, self.mixup, self.q = (
            tau,
            prior_alpha,
            ema_alpha,
            mixup,
            q,
        )
        self.ema = {}  # sample -> list of C probabilities
        self.prior = None
        self.gen = torch.Generator().manual_seed(5)  # the stream the method draws from
        self.n_mixed = 0

    def step(self, x, y, idx):
        C, B = N_CLASSES, len(y)
        if self.mixup:
            lam = (0.5 + 0.5 * torch.rand(B, generator=self.gen)).tolist()
            scores = torch.rand(B, B, generator=self.gen).tolist()
        lb = self.mb(x)
        p = F.softmax(lb.detach(), 1).tolist()
        probs = []
        for i, s in enumerate(idx.tolist()):
            old = self.ema.get(s)
            self.ema[s] = (
                p[i]
                if old is None
                else [self.ema_alpha * o + (1 - self.ema_alpha) * v for o, v in zip(old, p[i])]
            )
            probs.append(self.ema[s])
        a = [max(range(C), key=lambda c: pr[c]) for pr in probs]
        yl = y.tolist()
        batch = [
            [sum(probs[i][c_a] for i in range(B) if yl[i] == c_y) / B for c_a in range(C)]
            for c_y in range(C)
        ]
        if self.prior is None:
            self.prior = batch
        else:
            self.prior = [
                [
                    self.prior_alpha * self.prior[r][c] + (1 - self.prior_alpha) * batch[r][c]
                    for c in range(C)
                ]
                for r in range(C)
            ]
        col_sum = [sum(self.prior[r][c] for r in range(C)) for c in range(C)]
        logc = [
            [math.log(max(self.prior[r][c], 1e-12)) - math.log(col_sum[c]) for c in range(C)]
            for r in range(C)
        ]
        corr = [[logc[r][a[i]] for r in range(C)] for i in range(B)]
        rows_x, rows_c = [], []
        for i in range(B):
            partner = None
            if self.mixup and a[i] != yl[i]:
                cands = [j for j in range(B) if yl[j] == yl[i] and a[j] == yl[j]]
                partner = max(cands, key=lambda j: scores[i][j]) if cands else None
            if partner is None:
                rows_x.append(x[i])
                rows_c.append(corr[i])
            else:
                self.n_mixed += 1
                rows_x.append(lam[i] * x[i] + (1 - lam[i]) * x[partner])
                rows_c.append(
                    [lam[i] * u + (1 - lam[i]) * v for u, v in zip(corr[i], corr[partner])]
                )
        z = self.mf(torch.stack(rows_x)) + self.tau * torch.tensor(rows_c)
        loss_lc = sum(torch.logsumexp(z[i], 0) - z[i, yl[i]] for i in range(B)) / B
        ce_b = F.cross_entropy(lb, y, reduction="none")
        p_y = F.softmax(lb, 1).gather(1, y[:, None]).squeeze(1)
        loss_b = (ce_b * p_y.detach() ** self.q * self.q).mean()
        loss = loss_b + loss_lc
        for o in self.opts:
            o.zero_grad()
        loss.backward()
        for o in self.opts:
            o.step()
        return {"loss_b": loss_b.item(), "loss_lc": loss_lc.item()}


@pytest.mark.parametrize("mixup", [True, False])
def test_lc_matches_a_loop_reimplementation(mixup):
    kw = dict(lc_tau=0.5, lc_prior_alpha=0.8, ema_alpha=0.6, lc_mixup=mixup)
    method, targets = make_lc(**kw)
    ref = LoopLC(method, targets, tau=0.5, prior_alpha=0.8, ema_alpha=0.6, mixup=mixup)
    for step, (x, y, idx) in enumerate(method_batches(targets, 8)):
        terms = method.update(x, y, idx, step).terms
        expected = ref.step(x, y, idx)
        for k, v in expected.items():
            assert terms[k].item() == pytest.approx(v, rel=1e-4, abs=1e-5), (step, k)
    assert (ref.n_mixed > 0) == mixup  # the mixup did happen (and only when on)
    for name, model in (("biased", ref.mb), ("model", ref.mf)):
        for (k, got), want in zip(
            method.models[name].state_dict().items(), model.state_dict().values()
        ):
            assert torch.allclose(got, want, atol=1e-4), (name, k)
    ema = method.ema.values()
    for s, probs in ref.ema.items():
        assert torch.allclose(ema[s], torch.tensor(probs), atol=1e-5)
    assert torch.allclose(method.prior, torch.tensor(ref.prior), atol=1e-6)


def test_prediction_is_the_robust_model_uncorrected():
    method, targets = make_lc()
    x, y, idx = next(method_batches(targets, 1))
    method.update(x, y, idx, 0)
    assert torch.equal(method.predict(method.models, x), method.models["model"](x))


def test_sample_weights_are_one_minus_the_ema_probability_of_the_label():
    method, targets = make_lc()
    x, y, idx = next(method_batches(targets, 1))
    method.update(x, y, idx, 0)
    w = method.sample_weights()
    probs = method.ema.values()
    seen = set(idx.tolist())
    for s in range(len(targets)):
        expected = 1 - probs[s, targets[s]].item() if s in seen else 0.0
        assert w[s].item() == pytest.approx(expected, abs=1e-6)


def test_defaults_and_flags_reach_the_method():
    from debiaslab.cli import build_parser, config_from_args
    from tests.conftest import method_from_config

    method, _ = make_lc()
    assert (method.tau, method.prior_alpha, method.mixup) == (1.0, 0.9, True)
    flags = [
        "train",
        "--method",
        "lc",
        "--lc_variant",
        "earlier_reading",
        "--lc_tau",
        "0.3",
        "--lc_prior_alpha",
        "0.5",
        "--no-lc_mixup",
    ]
    method, _ = method_from_config(config_from_args(build_parser().parse_args(flags)).resolved())
    assert (method.tau, method.prior_alpha, method.mixup) == (0.3, 0.5, False)
