"""The headline metrics checked against numbers worked out by hand and against a plain-Python loop.

Expected values never come from ``debiaslab.metrics`` itself: a hand-worked example with literal
fractions (unequal cell sizes, so the plain mean over (target, bias) cells, the sample-weighted
mean and the accuracy all differ), ``metrics_by_loop`` (conftest) on many random draws, and
literal cases of ``primary_key`` / ``primary_metric`` and ``predict_split``.
"""

from fractions import Fraction as F

import pytest
import torch

from debiaslab.metrics import compute_metrics, predict_split, primary_key, primary_metric
from tests.conftest import assert_metrics_match, metrics_by_loop


def tensors(rows):
    """``(preds, targets, biases)`` from ``(target, bias, pred)`` rows."""
    t, b, p = (torch.tensor(col) for col in zip(*rows))
    return p, t, b


def assert_fractions(got: dict, expected: dict) -> None:
    """Each expected entry (a Fraction, a list of them / None, an int or None) equals ``got``'s."""
    for key, want in expected.items():
        if isinstance(want, list):
            assert len(got[key]) == len(want), key
            for g, w in zip(got[key], want):
                assert g == (None if w is None else pytest.approx(float(w), abs=1e-12)), (
                    key,
                    got[key],
                )
        elif want is None or isinstance(want, int):
            assert got[key] == want, (key, got[key])
        else:
            assert got[key] == pytest.approx(float(want), abs=1e-12), (key, got[key], want)


# 4 classes, class 3 has no sample; bias 4 is >= num_classes. Rows (target, bias, pred), shuffled.
# cells (target, bias): size, correct
#   (0, 0): 4, 3 -> 3/4      aligned
#   (0, 1): 3, 1 -> 1/3      conflicting (the worst cell)
#   (1, 1): 3, 3 -> 1        aligned
#   (1, 4): 2, 1 -> 1/2      conflicting; bias 4 >= num_classes. A grid only num_classes wide would
#                            put it at index 1*4+4 = 8 = cell (2, 0) and merge it with the next cell
#   (2, 0): 1, 1 -> 1        conflicting
HAND_ROWS = [
    (0, 0, 0),
    (1, 4, 1),
    (0, 1, 1),
    (1, 1, 1),
    (0, 0, 2),
    (2, 0, 2),
    (0, 1, 0),
    (1, 4, 0),
    (0, 0, 0),
    (1, 1, 1),
    (0, 1, 1),
    (0, 0, 0),
    (1, 1, 1),
]
HAND_EXPECTED = {
    "n": 13,
    "accuracy": F(9, 13),  # 3 + 1 + 3 + 1 + 1 = 9 correct of 13
    "aligned": F(6, 7),  # cells (0,0) + (1,1): 6 of 7
    "conflicting": F(3, 6),  # cells (0,1) + (1,4) + (2,0): 1 + 1 + 1 of 3 + 2 + 1
    # plain mean of the five cells: (3/4 + 1/3 + 1 + 1/2 + 1) / 5 = (45 + 20 + 60 + 30 + 60) / 300 = 43/60;
    # a sample-weighted mean of the cells would be the accuracy, 9/13
    "unbiased": F(43, 60),
    "worst_group": F(1, 3),  # cell (0, 1)
    "per_class": [
        F(4, 7),
        F(4, 5),
        F(1, 1),
        None,
    ],  # class 0: 3+1 of 7; class 1: 3+1 of 5; class 3: empty
}


def test_hand_worked_example():
    preds, targets, biases = tensors(HAND_ROWS)
    got = compute_metrics(preds, targets, biases, num_classes=4)
    assert set(got) == {
        "n",
        "accuracy",
        "aligned",
        "conflicting",
        "unbiased",
        "worst_group",
        "per_class",
    }
    assert_fractions(got, HAND_EXPECTED)
    # the three means the issue names really differ here, so a mix-up cannot pass unnoticed
    assert len({F(43, 60), F(9, 13), (F(6, 7) + F(1, 2)) / 2}) == 3


def test_hand_worked_example_is_order_free():
    """Metrics are over sets of samples: any order of the rows gives the same numbers."""
    rows = [
        HAND_ROWS[i]
        for i in torch.randperm(len(HAND_ROWS), generator=torch.Generator().manual_seed(3))
    ]
    assert_fractions(compute_metrics(*tensors(rows), num_classes=4), HAND_EXPECTED)


def test_hand_worked_example_without_bias_labels():
    """No bias labels: every bias metric is None, accuracy and per-class stay."""
    preds, targets, _ = tensors(HAND_ROWS)
    got = compute_metrics(preds, targets, None, num_classes=4)
    assert_fractions(
        got,
        {
            **HAND_EXPECTED,
            "aligned": None,
            "conflicting": None,
            "unbiased": None,
            "worst_group": None,
        },
    )


def test_all_aligned_data():
    # cells: (0, 0): 3 samples, 2 correct -> 2/3; (1, 1): 1 sample, correct -> 1; no conflicting sample
    rows = [(0, 0, 0), (0, 0, 1), (0, 0, 0), (1, 1, 1)]
    got = compute_metrics(*tensors(rows), num_classes=2)
    assert_fractions(
        got,
        {
            "n": 4,
            "accuracy": F(3, 4),
            "aligned": F(3, 4),
            "conflicting": None,
            "unbiased": F(5, 6),  # (2/3 + 1) / 2, not the weighted 3/4
            "worst_group": F(2, 3),
            "per_class": [F(2, 3), F(1, 1)],
        },
    )


def test_all_conflicting_data():
    # cells: (0, 1): 2 samples, 1 correct -> 1/2; (1, 0): 1 sample, wrong -> 0; nothing aligned
    rows = [(0, 1, 0), (0, 1, 1), (1, 0, 0)]
    got = compute_metrics(*tensors(rows), num_classes=2)
    assert_fractions(
        got,
        {
            "n": 3,
            "accuracy": F(1, 3),
            "aligned": None,
            "conflicting": F(1, 3),
            "unbiased": F(1, 4),
            "worst_group": F(0, 1),
            "per_class": [F(1, 2), F(0, 1)],
        },
    )


def test_cells_are_target_bias_pairs_not_classes_or_biases():
    """Grouping by target only or bias only gives other numbers than the (target, bias) grid."""
    # cells: (0,0): 1 of 2 -> 1/2; (0,1): 1 of 1 -> 1; (1,0): 0 of 1 -> 0; (1,1): 3 of 3 -> 1
    # grid mean (1/2 + 1 + 0 + 1) / 4 = 5/8, worst 0; by class: (2/3 + 3/4) / 2 = 17/24, worst 2/3;
    # by bias: (1/3 + 4/4) / 2 = 2/3, worst 1/3
    rows = [(0, 0, 0), (0, 0, 1), (0, 1, 0), (1, 0, 0), (1, 1, 1), (1, 1, 1), (1, 1, 1)]
    got = compute_metrics(*tensors(rows), num_classes=2)
    assert_fractions(
        got,
        {
            "unbiased": F(5, 8),
            "worst_group": F(0, 1),
            "accuracy": F(5, 7),
            "aligned": F(4, 5),
            "conflicting": F(1, 2),
            "per_class": [F(2, 3), F(3, 4)],
        },
    )


def random_case(g: torch.Generator):
    """A random (preds, targets, biases or None, num_classes), biases sometimes beyond num_classes."""
    num_classes = int(torch.randint(2, 6, (1,), generator=g))
    n = int(torch.randint(1, 60, (1,), generator=g))
    targets = torch.randint(0, num_classes, (n,), generator=g)
    preds = torch.randint(0, num_classes, (n,), generator=g)
    # mostly aligned with the target (as in biased data), with some bias values up to num_classes + 2
    noise = torch.randint(0, num_classes + 2, (n,), generator=g)
    biases = torch.where(torch.rand(n, generator=g) < 0.6, targets, noise)
    return preds, targets, None if torch.rand(1, generator=g) < 0.15 else biases, num_classes


def test_random_draws_match_plain_loop():
    g = torch.Generator().manual_seed(0)
    differs = 0
    for _ in range(300):
        preds, targets, biases, c = random_case(g)
        got = compute_metrics(preds, targets, biases, c)
        b = None if biases is None else biases.tolist()
        expected = metrics_by_loop(preds.tolist(), targets.tolist(), b, c)
        assert_metrics_match(got, expected)
        unbiased = expected["unbiased"]
        differs += unbiased is not None and abs(unbiased - expected["accuracy"]) > 1e-9
    assert differs > 100  # most draws tell the cell mean from the sample-weighted one


def test_primary_key():
    assert primary_key("bffhq") == "conflicting"
    for dataset in ("cmnist", "cifar10c", "bar", "tiny", "my_manifest"):
        assert primary_key(dataset) == "unbiased"


def test_primary_metric():
    m = {"accuracy": 0.9, "aligned": 0.95, "conflicting": 0.4, "unbiased": 0.6, "worst_group": 0.3}
    assert primary_metric(m, "bffhq") == 0.4
    assert primary_metric(m, "cmnist") == 0.6
    # falls back to accuracy only when the value is None; 0.0 is a real score
    assert primary_metric({**m, "unbiased": None}, "cmnist") == 0.9
    assert primary_metric({**m, "conflicting": None}, "bffhq") == 0.9
    assert primary_metric({**m, "unbiased": 0.0}, "cmnist") == 0.0
    assert primary_metric({**m, "conflicting": 0.0}, "bffhq") == 0.0


def test_predict_split_batches_equal_one_pass():
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (11, 3, 4, 4), generator=g, dtype=torch.uint8)
    weight = torch.randn(48, 5, generator=g)
    seen = []

    def predict(x):
        seen.append(len(x))
        return x.flatten(1) @ weight

    def prepare(x):
        return x.float() / 255

    expected = (images.float().flatten(1) / 255 @ weight).argmax(1)
    got = predict_split(predict, images, prepare, batch_size=4)  # 4 does not divide 11
    assert seen == [4, 4, 3]
    assert torch.equal(got, expected)
    seen.clear()
    assert torch.equal(
        predict_split(predict, images, prepare, batch_size=100), expected
    ) and seen == [11]
