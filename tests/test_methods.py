"""Methods against straightforward re-implementations of algorithms.md, on tiny tensors."""

import pytest
import torch
import torch.nn.functional as F

from debiaslab.methods import METHODS
from tests.conftest import (
    N_CLASSES,
    assert_disent_matches_its_loop,
    assert_lff_matches_its_loop,
    cli_config,
    make_method,
    method_batches,
    method_from_config,
    ref_gce,
)


def test_lff_matches_a_loop_reimplementation():
    method, targets = make_method("lff")
    assert_lff_matches_its_loop(
        method, targets, lambda logits_b, y, idx: ref_gce(logits_b, y).mean()
    )


@pytest.mark.parametrize("curr_step", [0, 3, 100])
def test_disent_matches_a_loop_reimplementation(curr_step):
    kw = dict(curr_step=curr_step, lambda_swap=0.5, lambda_dis_align=10.0, lambda_swap_align=5.0)
    method, targets = make_method("disent", **kw)
    assert_disent_matches_its_loop(
        method, targets, lambda logits_b, y, idx: ref_gce(logits_b, y).mean()
    )


def test_disent_swap_labels_weights_and_no_gradient_leak():
    method, targets = make_method(
        "disent", curr_step=0, lambda_swap=1.0, lambda_dis_align=1.0, lambda_swap_align=1.0
    )
    x, y, idx = next(method_batches(targets, 1))
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
    for term, foreign in (
        ("loss_swap_align", enc_i),
        ("loss_dis_align", enc_i),
        ("loss_swap_conflict", enc_b),
        ("loss_dis_conflict", enc_b),
    ):
        grads = torch.autograd.grad(terms[term], foreign, retain_graph=True, allow_unused=True)
        assert all(g is None or not g.any() for g in grads), term
    # ... while each term does train its own branch
    own = torch.autograd.grad(terms["loss_swap_align"], enc_b, retain_graph=True)
    assert any(g.abs().sum() > 0 for g in own)


def test_disent_no_swap_until_after_curr_step():
    method, targets = make_method("disent", curr_step=3)
    for step, (x, y, idx) in enumerate(method_batches(targets, 5)):
        _, terms = method.loss(x, y, idx, method.draw(len(y), step))
        assert ("loss_swap_align" in terms) == (step > 3)


def test_lr_schedule_counts_from_curr_step():
    method, targets = make_method(
        "disent", curr_step=4, use_lr_decay=True, lr_decay_step=3, lr_gamma=0.5
    )
    lrs = []
    for step, (x, y, idx) in enumerate(method_batches(targets, 14)):
        lrs.append(method.lr())  # the LR used by this step
        method.update(x, y, idx, step)
    # decays at curr_step + k * decay_step: steps 7, 10, 13
    expected = [0.01 * 0.5 ** max(0, (s - 4) // 3) if s >= 4 else 0.01 for s in range(14)]
    assert lrs == pytest.approx(expected)
    assert (
        lrs[6] == pytest.approx(0.01)
        and lrs[7] == pytest.approx(0.005)
        and lrs[13] == pytest.approx(0.00125)
    )
    # after step 13 the schedulers have counted steps 4..13 (ten): the LR step 14 would use
    for o in method.optimizers.values():
        assert float(o.param_groups[0]["lr"]) == pytest.approx(0.01 * 0.5 ** (10 // 3))


def lrs_over(cfg, steps):
    method, targets = method_from_config(cfg)
    lrs = []
    for step, (x, y, idx) in enumerate(method_batches(targets, steps)):
        lrs.append([float(o.param_groups[0]["lr"]) for o in method.optimizers.values()])
        method.update(x, y, idx, step)
    return lrs


def test_lr_schedule_only_with_the_flag():
    """Past several decay steps, the LR of every optimizer stays put without --use_lr_decay and
    halves at each decay step with it (flags parsed as the CLI parses them)."""
    schedule = ["--curr_step", "0", "--lr", "0.01", "--lr_decay_step", "2", "--lr_gamma", "0.5"]
    for method in ("--train_vanilla", "--train_lff", "--train_ours"):
        flat = lrs_over(cli_config(method, *schedule), 9)
        assert flat == [[0.01] * len(flat[0])] * 9, method
        decayed = lrs_over(cli_config(method, *schedule, "--use_lr_decay"), 9)
        assert [row[0] for row in decayed] == pytest.approx(
            [0.01 * 0.5 ** (s // 2) for s in range(9)]
        ), method
        assert all(
            len(set(row)) == 1 for row in decayed
        )  # every model's optimizer on the same schedule


def test_first_adam_step_moves_each_weight_by_the_lr():
    """Adam's first step is lr * sign(grad) (bias-corrected m / sqrt(v) = +-1): the --lr a user
    passes is the one the fused step applies."""
    method, targets = method_from_config(cli_config("--train_vanilla", "--lr", "0.003"))
    before = {k: v.clone() for k, v in method.models["model"].state_dict().items()}
    x, y, idx = next(method_batches(targets, 1))
    method.update(x, y, idx, 0)
    moved = torch.cat(
        [(v - before[k]).abs().flatten() for k, v in method.models["model"].state_dict().items()]
    )
    moved = moved[moved > 0]
    # all but weights whose gradient is near Adam's eps (1e-8) move by exactly the LR
    assert moved.max() == pytest.approx(0.003, rel=1e-3)
    assert ((moved - 0.003).abs() < 1e-5).float().mean() > 0.98


# -- the loss a user's flags ask for ---------------------------------------------------------------
def gce_by_hand(logits, y, q, form):
    """GCE from the softmax probability of the label: textbook (1 - p^q) / q, or the reference's
    -log(p) * q * p^q with p^q held constant."""
    p = F.softmax(logits, 1).gather(1, y[:, None]).squeeze(1)
    if form == "textbook":
        return (1 - p**q) / q
    return -torch.log(p) * q * p.detach() ** q


def weights_by_hand(ce_b_visits, ce_d_visits, y, alpha):
    """W after every sample was seen once per entry of the lists (all samples in each batch): the
    EMA (first visit = the loss), divided by its class maximum, then L_b / (L_b + L_d + 1e-8)."""

    def ema(visits):
        value = visits[0]
        for loss in visits[1:]:
            value = alpha * value + (1 - alpha) * loss
        return value / torch.stack([value[y == c].max() for c in range(N_CLASSES)])[y]

    lb, ld = ema(ce_b_visits), ema(ce_d_visits)
    return lb / (lb + ld + 1e-8)


def ce(logits, y):
    return F.cross_entropy(logits, y, reduction="none")


LFF_FLAGS = [
    ([], 0.7, "reference", 0.7),
    (["--q", "0.3", "--gce_form", "textbook", "--ema_alpha", "0.4"], 0.3, "textbook", 0.4),
    (["--q", "0.9", "--ema_alpha", "0.95"], 0.9, "reference", 0.95),
]


@pytest.mark.parametrize("flags,q,form,alpha", LFF_FLAGS)
def test_lff_flags_reach_its_loss(flags, q, form, alpha):
    method, y = method_from_config(cli_config("--train_lff", *flags))
    g = torch.Generator().manual_seed(3)
    xs = [torch.rand(len(y), 3, 4, 4, generator=g) for _ in range(2)]
    idx = torch.arange(len(y))
    m_b, m_d = method.models["biased"], method.models["debiased"]
    with torch.no_grad():
        ce_b, ce_d = [ce(m_b(x), y) for x in xs], [ce(m_d(x), y) for x in xs]
    for x in xs:  # two visits of every sample: the second reads the EMA of both
        loss, terms = method.loss(x, y, idx, {})
    w = weights_by_hand(ce_b, ce_d, y, alpha)
    loss_b = gce_by_hand(m_b(xs[1]), y, q, form).mean()
    loss_d = (w * ce(m_d(xs[1]), y)).mean()
    assert torch.allclose(terms["w_mean"], w.mean(), atol=1e-6)
    assert torch.allclose(terms["loss_b"], loss_b, atol=1e-6) and torch.allclose(
        terms["loss_d"], loss_d, atol=1e-6
    )
    assert torch.allclose(loss, loss_b + loss_d, atol=1e-6)


DISENT_FLAGS = [
    ([], dict(q=0.7, form="reference", alpha=0.7, swap=1.0, dis_align=1.0, swap_align=1.0)),
    (
        [
            "--q",
            "0.4",
            "--gce_form",
            "textbook",
            "--ema_alpha",
            "0.6",
            "--lambda_swap",
            "0.3",
            "--lambda_dis_align",
            "7",
            "--lambda_swap_align",
            "3",
        ],
        dict(q=0.4, form="textbook", alpha=0.6, swap=0.3, dis_align=7.0, swap_align=3.0),
    ),
]


@pytest.mark.parametrize("flags,h", DISENT_FLAGS)
def test_disent_flags_reach_its_loss(flags, h):
    """Every term of algorithms.md's L = L_dis_conflict + l_dis_align L_dis_align
    + l_swap (L_swap_conflict + l_swap_align L_swap_align), each weight from its flag."""
    method, y = method_from_config(cli_config("--train_ours", "--curr_step", "0", *flags))
    g = torch.Generator().manual_seed(4)
    xs = [torch.rand(len(y), 3, 4, 4, generator=g) for _ in range(2)]
    perm = torch.randperm(len(y), generator=g)
    idx = torch.arange(len(y))
    m_i, m_b = method.models["intrinsic"], method.models["bias"]

    def heads(x, p):
        z_i, z_b = m_i.extract(x), m_b.extract(x)[p]
        return m_i.fc(torch.cat([z_i, z_b], 1)), m_b.fc(torch.cat([z_i, z_b], 1))

    same = torch.arange(len(y))
    with torch.no_grad():
        visits = [heads(x, same) for x in xs]
    for x in xs:
        loss, terms = method.loss(x, y, idx, {"perm": perm})
    w = weights_by_hand([ce(b, y) for _, b in visits], [ce(i, y) for i, _ in visits], y, h["alpha"])
    (pred_i, pred_b), (swap_i, swap_b) = heads(xs[1], same), heads(xs[1], perm)
    expected = {
        "loss_dis_conflict": (w * ce(pred_i, y)).mean(),
        "loss_dis_align": gce_by_hand(pred_b, y, h["q"], h["form"]).mean(),
        "loss_swap_conflict": (w * ce(swap_i, y)).mean(),
        "loss_swap_align": gce_by_hand(swap_b, y[perm], h["q"], h["form"]).mean(),
    }
    for name, value in expected.items():
        assert torch.allclose(terms[name], value, atol=1e-6), name
    total = (
        expected["loss_dis_conflict"]
        + h["dis_align"] * expected["loss_dis_align"]
        + h["swap"]
        * (expected["loss_swap_conflict"] + h["swap_align"] * expected["loss_swap_align"])
    )
    assert torch.allclose(loss, total, atol=1e-5)


def test_predict_uses_both_features_for_disent():
    method, _ = make_method("disent")
    x = torch.rand(5, 3, 4, 4)
    m = method.models
    expected = m["intrinsic"].fc(torch.cat([m["intrinsic"].extract(x), m["bias"].extract(x)], 1))
    assert torch.allclose(METHODS["disent"].predict(m, x), expected)
