"""Methods against straightforward re-implementations of algorithms.md, on tiny tensors."""
import copy

import pytest
import torch
import torch.nn.functional as F

from debiaslab.config import TrainConfig
from debiaslab.methods import METHODS
from debiaslab.models import build_model

N, C, B = 24, 3, 8


def make(method, model="mlp", **kw):
    cfg = TrainConfig(method=method, **{"lr": 0.01, **kw}).resolved()
    torch.manual_seed(0)
    cls = METHODS[method]
    models = {n: build_model(model, C, cls.head_inputs, (3, 4, 4)) for n in cls.model_names}
    targets = torch.arange(N) % C
    return cls(cfg, models, targets, C, torch.Generator().manual_seed(5)), targets


def batches(targets, steps, seed=1):
    g = torch.Generator().manual_seed(seed)
    x_all = torch.rand(N, 3, 4, 4, generator=g)
    for _ in range(steps):
        idx = torch.randperm(N, generator=g)[:B]
        yield x_all[idx], targets[idx], idx


class RefEMA:
    """The reference's EMA: parameter[i] = alpha * p + (1 - alpha * updated[i]) * loss; max over class by a loop."""

    def __init__(self, labels, alpha):
        self.labels, self.alpha = labels, alpha
        self.p = torch.zeros(len(labels))
        self.updated = torch.zeros(len(labels))

    def update(self, loss, idx):
        self.p[idx] = self.alpha * self.p[idx] + (1 - self.alpha * self.updated[idx]) * loss
        self.updated[idx] = 1

    def max_loss(self, c):
        return self.p[self.labels == c].max()


def ref_weights(ema_b, ema_d, ce_b, ce_d, y, idx):
    ema_b.update(ce_b.detach(), idx)
    ema_d.update(ce_d.detach(), idx)
    lb, ld = ema_b.p[idx].clone(), ema_d.p[idx].clone()
    for c in range(C):
        sel = torch.where(y == c)[0]
        lb[sel] /= ema_b.max_loss(c)
        ld[sel] /= ema_d.max_loss(c)
    return lb / (lb + ld + 1e-8)


def ref_gce(logits, y, q=0.7):
    p = F.softmax(logits, 1).gather(1, y[:, None]).squeeze(1)
    return F.cross_entropy(logits, y, reduction="none") * p.detach() ** q * q


def adam(models, lr=0.01):
    return [torch.optim.Adam(m.parameters(), lr=lr) for m in models]


def ref_step(opts, loss):
    """The reference's step: zero both grads, one backward, step both optimizers."""
    for o in opts:
        o.zero_grad()
    loss.backward()
    for o in opts:
        o.step()


def assert_same_weights(method, refs):
    for name, ref in refs.items():
        for (k, a), b in zip(method.models[name].state_dict().items(), ref.state_dict().values()):
            assert torch.allclose(a, b, atol=1e-4), (name, k, (a - b).abs().max().item())


def test_lff_matches_a_loop_reimplementation():
    method, targets = make("lff")
    mb, md = (copy.deepcopy(method.models[n]) for n in ("biased", "debiased"))
    opts = adam([mb, md])
    eb, ed = RefEMA(targets, 0.7), RefEMA(targets, 0.7)
    for step, (x, y, idx) in enumerate(batches(targets, 6)):
        method.update(x, y, idx, step)
        lb, ld = mb(x), md(x)
        w = ref_weights(eb, ed, F.cross_entropy(lb, y, reduction="none"), F.cross_entropy(ld, y, reduction="none"), y, idx)
        loss = ref_gce(lb, y).mean() + (F.cross_entropy(ld, y, reduction="none") * w).mean()
        ref_step(opts, loss)
    assert_same_weights(method, {"biased": mb, "debiased": md})
    assert torch.allclose(method.ema.values()[:, 0], eb.p, atol=1e-6) and torch.allclose(method.ema.values()[:, 1], ed.p, atol=1e-6)


@pytest.mark.parametrize("curr_step", [0, 3, 100])
def test_disent_matches_a_loop_reimplementation(curr_step):
    kw = dict(curr_step=curr_step, lambda_swap=0.5, lambda_dis_align=10.0, lambda_swap_align=5.0)
    method, targets = make("disent", **kw)
    ml, mb = (copy.deepcopy(method.models[n]) for n in ("intrinsic", "bias"))
    opts = adam([ml, mb])
    eb, ed = RefEMA(targets, 0.7), RefEMA(targets, 0.7)
    perm_gen = torch.Generator().manual_seed(5)  # the same stream the method draws its permutations from
    for step, (x, y, idx) in enumerate(batches(targets, 6)):
        method.update(x, y, idx, step)
        z_l, z_b = ml.extract(x), mb.extract(x)
        pred_c = ml.fc(torch.cat([z_l, z_b.detach()], 1))
        pred_a = mb.fc(torch.cat([z_l.detach(), z_b], 1))
        w = ref_weights(eb, ed, F.cross_entropy(pred_a, y, reduction="none"), F.cross_entropy(pred_c, y, reduction="none"), y, idx)
        loss = (F.cross_entropy(pred_c, y, reduction="none") * w).mean() + 10.0 * ref_gce(pred_a, y).mean()
        if step > curr_step:
            p = torch.randperm(len(y), generator=perm_gen)
            pc = ml.fc(torch.cat([z_l, z_b[p].detach()], 1))
            pa = mb.fc(torch.cat([z_l.detach(), z_b[p]], 1))
            loss = loss + 0.5 * ((F.cross_entropy(pc, y, reduction="none") * w).mean() + 5.0 * ref_gce(pa, y[p]).mean())
        ref_step(opts, loss)
    assert_same_weights(method, {"intrinsic": ml, "bias": mb})


def test_disent_swap_labels_weights_and_no_gradient_leak():
    method, targets = make("disent", curr_step=0, lambda_swap=1.0, lambda_dis_align=1.0, lambda_swap_align=1.0)
    x, y, idx = next(batches(targets, 1))
    state = method.generator.get_state()
    loss, terms = method.loss(x, y, idx, method.draw(len(y), 1))
    method.generator.set_state(state)
    perm = torch.randperm(len(y), generator=method.generator)
    m_i, m_b = method.models["intrinsic"], method.models["bias"]
    z_i, z_b = m_i.extract(x), m_b.extract(x)
    w = method.sample_weights()[idx]
    # intrinsic side: its own label y and its own W; bias side: the label of the bias features it received
    ce_i = F.cross_entropy(m_i.fc(torch.cat([z_i, z_b[perm]], 1)), y, reduction="none")
    assert torch.allclose(terms["loss_swap_conflict"], (w * ce_i).mean(), atol=1e-6)
    gce_b = ref_gce(m_b.fc(torch.cat([z_i, z_b[perm]], 1)), y[perm])
    assert torch.allclose(terms["loss_swap_align"], gce_b.mean(), atol=1e-6)
    # no gradient through the detached features
    enc_i = list(m_i.feature.parameters())
    enc_b = list(m_b.feature.parameters())
    for term, foreign in (("loss_swap_align", enc_i), ("loss_dis_align", enc_i),
                          ("loss_swap_conflict", enc_b), ("loss_dis_conflict", enc_b)):
        grads = torch.autograd.grad(terms[term], foreign, retain_graph=True, allow_unused=True)
        assert all(g is None or not g.any() for g in grads), term
    # ... while each term does train its own branch
    own = torch.autograd.grad(terms["loss_swap_align"], enc_b, retain_graph=True)
    assert any(g.abs().sum() > 0 for g in own)


def test_disent_no_swap_until_after_curr_step():
    method, targets = make("disent", curr_step=3)
    for step, (x, y, idx) in enumerate(batches(targets, 5)):
        _, terms = method.loss(x, y, idx, method.draw(len(y), step))
        assert ("loss_swap_align" in terms) == (step > 3)


def test_lr_schedule_counts_from_curr_step():
    method, targets = make("disent", curr_step=4, use_lr_decay=True, lr_decay_step=3, lr_gamma=0.5)
    lrs = []
    for step, (x, y, idx) in enumerate(batches(targets, 14)):
        lrs.append(method.lr())  # the LR used by this step
        method.update(x, y, idx, step)
    # decays at curr_step + k * decay_step: steps 7, 10, 13
    expected = [0.01 * 0.5 ** max(0, (s - 4) // 3) if s >= 4 else 0.01 for s in range(14)]
    assert lrs == pytest.approx(expected)
    assert lrs[6] == pytest.approx(0.01) and lrs[7] == pytest.approx(0.005) and lrs[13] == pytest.approx(0.00125)
    for o in method.optimizers.values():
        assert o.param_groups[0]["lr"] == pytest.approx(lrs[-1] if 13 - 4 + 1 < 12 else 0.00125)


def test_no_lr_schedule_without_flag():
    method, targets = make("vanilla")
    for step, (x, y, idx) in enumerate(batches(targets, 5)):
        method.update(x, y, idx, step)
    assert method.lr() == 0.01


def test_predict_uses_both_features_for_disent():
    method, _ = make("disent")
    x = torch.rand(5, 3, 4, 4)
    m = method.models
    expected = m["intrinsic"].fc(torch.cat([m["intrinsic"].extract(x), m["bias"].extract(x)], 1))
    assert torch.allclose(METHODS["disent"].predict(m, x), expected)
