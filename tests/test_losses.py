"""The building blocks against their closed forms, on tiny tensors."""

import pytest
import torch
import torch.nn.functional as F

from debiaslab.methods.losses import PerSampleEMA, gce, gce_from_ce, relative_difficulty


@pytest.mark.parametrize("q", [0.3, 0.7, 1.0])
def test_gce_reference_form_value_and_gradient(q):
    torch.manual_seed(0)
    logits = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 1, 2, 3, 0, 2])
    loss = gce(logits, y, q, "reference")
    p = F.softmax(logits, 1).gather(1, y[:, None]).squeeze(1)
    # value: CE * q * p^q
    assert torch.allclose(loss, -torch.log(p) * q * p.detach() ** q)
    # gradient: that of 1 - p^q (q times the textbook GCE gradient)
    (g_ref,) = torch.autograd.grad(loss.sum(), logits)
    (g_closed,) = torch.autograd.grad((1 - p**q).sum(), logits, retain_graph=True)
    assert torch.allclose(g_ref, g_closed)
    (g_textbook,) = torch.autograd.grad(((1 - p**q) / q).sum(), logits)
    assert torch.allclose(g_ref, q * g_textbook)


@pytest.mark.parametrize("q", [0.3, 0.7, 1.0])
def test_gce_textbook_form(q):
    torch.manual_seed(1)
    logits = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 1, 2, 1, 0])
    p = F.softmax(logits, 1).gather(1, y[:, None]).squeeze(1)
    loss = gce(logits, y, q, "textbook")
    assert torch.allclose(loss, (1 - p**q) / q)
    (g,) = torch.autograd.grad(loss.sum(), logits)
    (g_closed,) = torch.autograd.grad(((1 - p**q) / q).sum(), logits)
    assert torch.allclose(g, g_closed)


def test_gce_q_is_really_used():
    ce = torch.tensor([0.5, 1.0])
    assert not torch.allclose(gce_from_ce(ce, 0.3), gce_from_ce(ce, 0.7))
    with pytest.raises(ValueError):
        gce_from_ce(ce, 0.7, "nope")


def test_ema_first_visit_then_update():
    targets = torch.tensor([0, 1, 0, 1, 2])
    ema = PerSampleEMA(targets, 3, alpha=0.7)
    out = ema.update(torch.tensor([0, 3]), torch.tensor([2.0, 4.0]))
    assert torch.allclose(out, torch.tensor([2.0, 4.0]))  # first visit: the loss itself
    out = ema.update(torch.tensor([0, 1]), torch.tensor([1.0, 5.0]))
    assert torch.allclose(out, torch.tensor([0.7 * 2.0 + 0.3 * 1.0, 5.0]))  # sample 1: first visit
    assert torch.allclose(ema.values(), torch.tensor([1.7, 5.0, 0.0, 4.0, 0.0]))
    assert ema.visited.tolist() == [True, True, False, True, False]


def test_class_max_normalisation_over_all_training_samples():
    targets = torch.tensor([0, 0, 1, 1, 1, 2])
    ema = PerSampleEMA(targets, 3, alpha=0.5)
    ema.update(torch.tensor([0, 1, 2, 3, 4, 5]), torch.tensor([1.0, 4.0, 2.0, 8.0, 0.5, 3.0]))
    assert torch.allclose(ema.class_max(), torch.tensor([4.0, 8.0, 3.0]))
    # a batch with samples 0 and 4 only: normalised by the max over ALL samples of their class
    vals = ema.values()[torch.tensor([0, 4])]
    assert torch.allclose(ema.normalize(vals, torch.tensor([0, 1])), torch.tensor([0.25, 0.0625]))
    # never-visited samples hold 0 and do not change the max
    ema2 = PerSampleEMA(targets, 3, alpha=0.5)
    ema2.update(torch.tensor([2]), torch.tensor([2.0]))
    assert ema2.class_max()[1] == 2.0 and ema2.class_max()[0] == 0.0


def test_each_ema_is_normalised_with_its_own_maxima():
    targets = torch.tensor([0, 0])
    a, b = PerSampleEMA(targets, 1), PerSampleEMA(targets, 1)
    a.update(torch.tensor([0, 1]), torch.tensor([1.0, 2.0]))
    b.update(torch.tensor([0, 1]), torch.tensor([3.0, 12.0]))
    assert torch.allclose(a.normalize(a.values(), targets), torch.tensor([0.5, 1.0]))
    assert torch.allclose(b.normalize(b.values(), targets), torch.tensor([0.25, 1.0]))


def test_ema_state_roundtrip():
    targets = torch.tensor([2, 0, 1, 0])
    a = PerSampleEMA(targets, 3)
    a.update(torch.tensor([0, 1, 3]), torch.tensor([1.0, 2.0, 3.0]))
    b = PerSampleEMA(targets, 3)
    b.load_state_dict(a.state_dict())
    assert torch.equal(a.values(), b.values()) and torch.equal(a.visited, b.visited)


def test_relative_difficulty_weight():
    lb = torch.tensor([1.0, 0.0, 0.5, 0.0])
    ld = torch.tensor([0.0, 1.0, 0.5, 0.0])
    w = relative_difficulty(lb, ld)
    assert torch.allclose(w, torch.tensor([1.0 / (1.0 + 1e-8), 0.0, 0.5 / (1.0 + 1e-8), 0.0]))
    x = torch.tensor([0.3], requires_grad=True)
    assert not relative_difficulty(x, torch.tensor([0.2])).requires_grad  # detached


def test_two_channel_ema_equals_two_single_emas():
    torch.manual_seed(0)
    targets = torch.randint(0, 4, (50,))
    pair = PerSampleEMA(targets, 4, alpha=0.6, channels=2)
    a, b = PerSampleEMA(targets, 4, alpha=0.6), PerSampleEMA(targets, 4, alpha=0.6)
    for _ in range(5):
        idx = torch.randperm(50)[:10]
        la, lb = torch.rand(10), torch.rand(10) * 3
        out = pair.update(idx, torch.stack([la, lb], 1))
        assert torch.allclose(out[:, 0], a.update(idx, la)) and torch.allclose(
            out[:, 1], b.update(idx, lb)
        )
        y = targets[idx]
        norm = pair.normalize(out, y)
        assert torch.allclose(norm[:, 0], a.normalize(a.values()[idx], y))
        assert torch.allclose(norm[:, 1], b.normalize(b.values()[idx], y))
    assert torch.allclose(pair.class_max(), torch.stack([a.class_max(), b.class_max()]))
    restored = PerSampleEMA(targets, 4, alpha=0.6, channels=2)
    restored.load_state_dict(pair.state_dict())
    assert torch.equal(restored.values(), pair.values())
