"""LC as its authors run it (the default ``lc_variant``; algorithms.md, "The later methods as
their authors ran them") against computations written here: by hand, or by plain Python loops."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from debiaslab.config import TrainConfig
from debiaslab.methods.lc import (
    VARIANTS,
    minority_partners,
    mixed_correction_log,
    mixup_alpha,
    prior_table_update,
)
from tests.conftest import (
    BATCH,
    N_CLASSES,
    assert_same_tensors,
    make_method,
    method_batches,
    method_state_of,
)


def make_lc(**kw):
    return make_method("lc", **kw)


# -- the prior table -------------------------------------------------------------------------------
def table_by_loop(table, seen, y, a, p_true, ema):
    """The authors' update, one sample after another in batch order."""
    table, seen = [list(r) for r in table.tolist()], [list(r) for r in seen.tolist()]
    for yi, ai, p in zip(y.tolist(), a.tolist(), p_true.tolist()):
        table[yi][ai] = ema * table[yi][ai] + (1 - ema) * p if seen[yi][ai] else p
        seen[yi][ai] = True
    return torch.tensor(table), torch.tensor(seen)


def test_prior_table_by_hand():
    table = torch.zeros(2, 2)
    seen = torch.zeros(2, 2, dtype=torch.bool)
    y, a = torch.tensor([0, 0, 1]), torch.tensor([0, 0, 0])
    got, got_seen = prior_table_update(table, seen, y, a, torch.tensor([0.9, 0.5, 0.2]), 0.99)
    # cell (0, 0): first visit sets 0.9, the second folds 0.5 in; cell (1, 0): set to 0.2
    assert got.flatten().tolist() == pytest.approx([0.99 * 0.9 + 0.01 * 0.5, 0.0, 0.2, 0.0])
    assert got_seen.tolist() == [[True, False], [True, False]]
    again, _ = prior_table_update(got, got_seen, y[:1], a[:1], torch.tensor([0.1]), 0.99)
    assert again[0, 0].item() == pytest.approx(0.99 * got[0, 0].item() + 0.01 * 0.1)
    assert again[1, 0].item() == pytest.approx(0.2)  # a cell not visited keeps its value


def test_prior_table_matches_the_sequential_loop_on_random_batches():
    g = torch.Generator().manual_seed(0)
    table, seen = torch.zeros(3, 3), torch.zeros(3, 3, dtype=torch.bool)
    for _ in range(30):
        y, a = torch.randint(0, 3, (16,), generator=g), torch.randint(0, 3, (16,), generator=g)
        p = torch.rand(16, generator=g)
        want, want_seen = table_by_loop(table, seen, y, a, p, 0.9)
        table, seen = prior_table_update(table, seen, y, a, p, 0.9)
        assert torch.allclose(table, want, atol=1e-6) and torch.equal(seen, want_seen)


def test_correction_is_floored_at_log_1e4_and_mixed_in_probability_space():
    delta = torch.tensor([[0.0, 0.5], [0.8, 0.1]])
    log_delta = mixed_correction_log(delta, torch.tensor([1, 0]), torch.tensor(0.25))
    mixed = [[0.25 * 0.0 + 0.75 * 0.8, 0.25 * 0.5 + 0.75 * 0.1]]
    assert log_delta[0].tolist() == pytest.approx([math.log(v + 1e-4) for v in mixed[0]])
    alone = mixed_correction_log(delta, torch.tensor([0, 1]), torch.tensor(1.0))
    assert alone[0, 0].item() == pytest.approx(math.log(1e-4))  # an empty cell: the floor


# -- Group MixUp: partners and the lambda ramp ------------------------------------------------------
def test_every_sample_takes_a_minority_partner_of_its_class():
    y = torch.tensor([0, 0, 0, 0, 1, 1, 2, 2])
    a = torch.tensor([0, 1, 2, 0, 1, 1, 0, 2])  # minority: 1 and 2 (class 0), 6 (class 2)
    scores = torch.full((8, 8), 0.5)
    scores[0, 2], scores[3, 1] = 0.9, 0.9
    keys = torch.tensor([0.3, 0.1, 0.2, 0.4, 0.9, 0.8, 0.5, 0.6])
    partner = minority_partners(y, a, scores, keys)
    assert partner[[0, 1, 2, 3]].tolist() == [2, 1, 1, 1]  # 1 and 2 tie at 0.5 -> the first
    assert partner[[6, 7]].tolist() == [6, 6]  # class 2's one minority sample, itself included
    # class 1 has no minority sample: a permutation of its samples in key order (5 before 4)
    assert partner[[4, 5]].tolist() == [5, 4]


def test_partners_are_uniform_over_the_class_minority_with_replacement():
    y = torch.tensor([0, 0, 0, 0, 0, 1])
    a = torch.tensor([1, 2, 0, 0, 0, 1])  # class 0's minority: 0 and 1
    g = torch.Generator().manual_seed(0)
    counts, n = torch.zeros(6, 6), 2000
    for _ in range(n):
        p = minority_partners(y, a, torch.rand(6, 6, generator=g), torch.rand(6, generator=g))
        counts[torch.arange(6), p] += 1
    assert counts[:5, 2:].sum() == 0  # never a majority sample or another class
    assert ((counts[:5, :2] / n - 0.5).abs() < 0.04).all(), counts
    assert counts[5, 5] == n


def test_without_minority_the_partners_permute_the_class():
    g = torch.Generator().manual_seed(1)
    for _ in range(50):
        y = torch.randint(0, 3, (12,), generator=g)
        p = minority_partners(
            y, y.clone(), torch.rand(12, 12, generator=g), torch.rand(12, generator=g)
        )
        assert sorted(p.tolist()) == list(range(12))  # a permutation ...
        assert torch.equal(y[p], y)  # ... within each class


def test_lambda_ramp_by_hand():
    assert mixup_alpha(0, 0) == 0.5 and mixup_alpha(123, 0) == 0.5
    assert mixup_alpha(0, 100) == pytest.approx(0.5 * math.exp(-5))
    assert mixup_alpha(50, 100) == pytest.approx(0.5 * math.exp(-5 * 0.25))
    assert mixup_alpha(100, 100) == mixup_alpha(10**6, 100) == 0.5


@pytest.mark.parametrize("step", [0, 40, 100])
def test_draw_gives_one_lambda_per_batch_in_its_ramped_range(step):
    method, _ = make_lc(curr_step=100)
    alpha = mixup_alpha(step, 100)
    for _ in range(20):
        d = method.draw(BATCH, step)
        assert d["lam"].shape == () and d["scores"].shape == (BATCH, BATCH)
        assert 1 - 2 * alpha <= d["lam"].item() <= 1 - alpha
    assert make_lc(lc_mixup=False)[0].draw(BATCH, 0) == {}


# -- settings ---------------------------------------------------------------------------------------
def test_biased_network_trains_at_a_tenth_of_the_lr():
    method, _ = make_lc(lr=0.02)
    lrs = {n: float(o.param_groups[0]["lr"]) for n, o in method.optimizers.items()}
    assert lrs == pytest.approx({"biased": 0.002, "model": 0.02})
    earlier, _ = make_lc(lr=0.02, lc_variant="earlier_reading")
    assert float(earlier.optimizers["biased"].param_groups[0]["lr"]) == pytest.approx(0.02)


def test_defaults_and_saved_configs_name_their_variant():
    cfg = TrainConfig(method="lc").resolved()
    assert (cfg.lc_variant, cfg.lc_prior_alpha) == ("authors", 0.995)
    earlier = TrainConfig(method="lc", lc_variant="earlier_reading").resolved()
    assert earlier.lc_prior_alpha == 0.9
    old = TrainConfig(method="lc").resolved().to_dict()
    del old["lc_variant"]  # a run recorded before the authors' LC landed
    assert TrainConfig.from_saved(old).lc_variant == "earlier_reading"
    assert cfg.config_hash() != earlier.config_hash()


def test_an_unknown_variant_is_refused():
    from debiaslab.errors import UserError

    with pytest.raises(
        UserError,
        match="--lc_variant 'paper' is not one of its choices; choose one of authors, earlier_",
    ):
        TrainConfig(method="lc", lc_variant="paper").resolved().validate()


# -- the whole step against a loop re-implementation ----------------------------------------------
class LoopLC:
    """The authors' LC step written out sample by sample."""

    def __init__(self, method, lr, curr_step, ema, lambda_b, q=0.7):
        self.mb, self.mf = (copy.deepcopy(method.models[n]) for n in ("biased", "model"))
        self.opts = [
            torch.optim.Adam(self.mb.parameters(), lr=0.1 * lr),
            torch.optim.Adam(self.mf.parameters(), lr=lr),
        ]
        self.curr_step, self.ema, self.lambda_b, self.q = curr_step, ema, lambda_b, q
        self.table = [[None] * N_CLASSES for _ in range(N_CLASSES)]
        self.gen = torch.Generator().manual_seed(5)  # the stream the method draws from

    def step(self, x, y, idx, step):
        C, B, yl = N_CLASSES, len(y), y.tolist()
        t, T = min(step, self.curr_step), self.curr_step
        alpha = 0.5 * math.exp(-5 * (1 - t / T) ** 2)
        lam = 1 - 2 * alpha + alpha * torch.rand((), generator=self.gen).item()
        scores = torch.rand(B, B, generator=self.gen).tolist()
        keys = torch.rand(B, generator=self.gen).tolist()
        lb = self.mb(x)
        p = F.softmax(lb.detach(), 1).tolist()
        a = [max(range(C), key=lambda c: p[i][c]) for i in range(B)]
        for i in range(B):
            old = self.table[yl[i]][a[i]]
            p_true = p[i][yl[i]]
            self.table[yl[i]][a[i]] = (
                p_true if old is None else self.ema * old + (1 - self.ema) * p_true
            )
        cell = [[v or 0.0 for v in row] for row in self.table]
        partner = []
        for i in range(B):
            minority = [j for j in range(B) if yl[j] == yl[i] and a[j] != yl[j]]
            if minority:
                partner.append(max(minority, key=lambda j: scores[i][j]))
            else:  # a permutation of the class: k-th by index -> k-th by key
                by_index = [j for j in range(B) if yl[j] == yl[i]]
                by_key = sorted(by_index, key=lambda j: keys[j])
                partner.append(by_key[by_index.index(i)])
        x_mix = torch.stack([lam * x[i] + (1 - lam) * x[partner[i]] for i in range(B)])
        corr = [
            [
                math.log(lam * cell[c][a[i]] + (1 - lam) * cell[c][a[partner[i]]] + 1e-4)
                for c in range(C)
            ]
            for i in range(B)
        ]
        z = self.mf(x_mix) + torch.tensor(corr)
        loss_lc = sum(torch.logsumexp(z[i], 0) - z[i, yl[i]] for i in range(B)) / B
        ce_b = F.cross_entropy(lb, y, reduction="none")
        p_y = F.softmax(lb, 1).gather(1, y[:, None]).squeeze(1)
        loss_b = self.lambda_b * (ce_b * p_y.detach() ** self.q * self.q).mean()
        for o in self.opts:
            o.zero_grad()
        (loss_b + loss_lc).backward()
        for o in self.opts:
            o.step()
        return {"loss_b": loss_b.item(), "loss_lc": loss_lc.item(), "mixed": 1 - lam}


def test_lc_matches_a_loop_reimplementation():
    method, targets = make_lc(curr_step=4, lambda_dis_align=2.0, lc_prior_alpha=0.8)
    ref = LoopLC(method, lr=0.01, curr_step=4, ema=0.8, lambda_b=2.0)
    for step, (x, y, idx) in enumerate(method_batches(targets, 8)):
        terms = method.update(x, y, idx, step).terms
        for k, v in ref.step(x, y, idx, step).items():
            assert terms[k].item() == pytest.approx(v, rel=1e-4, abs=1e-5), (step, k)
    for name, model in (("biased", method.models["biased"]), ("model", method.models["model"])):
        want = (ref.mb if name == "biased" else ref.mf).state_dict().values()
        for (k, got), w in zip(model.state_dict().items(), want):
            assert torch.allclose(got, w, atol=1e-4), (name, k)
    want = torch.tensor([[v or 0.0 for v in row] for row in ref.table])
    assert torch.allclose(method.prior, want, atol=1e-6)


@pytest.mark.parametrize("variant", VARIANTS)
def test_state_dict_round_trip_continues_bit_for_bit(variant):
    steps = list(method_batches(make_lc()[1], 7))
    a, _ = make_lc(curr_step=3, lc_variant=variant)
    for s in range(3):
        a.update(*steps[s], s)
    saved = copy.deepcopy(a.state_dict())
    b, _ = make_lc(curr_step=3, lc_variant=variant)
    b.load_state_dict(saved)
    assert_same_tensors(method_state_of(b), method_state_of(a))
    for s in range(3, 7):
        assert_same_tensors(a.update(*steps[s], s).terms, b.update(*steps[s], s).terms, f"step {s}")
    assert_same_tensors(method_state_of(b), method_state_of(a))
    assert torch.equal(a.generator.get_state(), b.generator.get_state())


def test_sample_weights_are_one_minus_the_last_probability_of_the_label():
    method, targets = make_lc()
    x, y, idx = next(method_batches(targets, 1))
    p_true = F.softmax(method.models["biased"](x).detach(), 1).gather(1, y[:, None]).squeeze(1)
    method.update(x, y, idx, 0)
    w = method.sample_weights()
    assert torch.allclose(w[idx], 1 - p_true, atol=1e-6)
    unseen = torch.ones(len(targets), dtype=torch.bool)
    unseen[idx] = False
    assert (w[unseen] == 0).all()
