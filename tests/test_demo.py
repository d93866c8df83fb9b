"""The demo's code path on the bundled Colored Digits (a shortened run)."""

import pytest
import torch

from debiaslab.data.digits import colored_digits
from debiaslab.demo import run_demo
from tests.conftest import metrics_by_loop, predict_classes, run_cli, saved_mlps


def test_colored_digits_protocol():
    """Colored Digits: all 1,797 digits, ~5% conflicting in train, an unbiased test split, seeded."""
    b = colored_digits(5.0, seed=0)
    c = b.counts()
    assert c["train"]["n"] + c["valid"]["n"] + c["test"]["n"] == 1797
    assert 40 <= c["train"]["conflicting"] <= 70  # 5% of ~1078
    assert c["test"]["conflicting"] > 0.85 * c["test"]["n"]  # unbiased: ~90% conflicting
    assert b.train.images.shape[1:] == (3, 28, 28) and b.train.images.dtype == torch.uint8
    assert colored_digits(5.0, seed=0).checksums() == b.checksums()


DEMO_METHODS = ["vanilla", "lff", "disent"]


def expected_demo_rows(bundle, log_dir) -> dict:
    """Each demo run's last-step test metrics, from its checkpoint's models by a plain loop."""
    test = bundle.test
    x = test.images.float() / 255  # the demo's input_scale "unit", no normalisation
    rows = {}
    for m in DEMO_METHODS:
        models = saved_mlps(
            log_dir / "colored_digits" / f"demo_{m}", m, bundle.num_classes, (3, 28, 28)
        )
        preds = predict_classes(m, models, x)
        rows[m] = metrics_by_loop(preds, test.targets, test.biases, bundle.num_classes)
    return rows


def printed_table(out: str) -> dict:
    """``{method: [aligned, conflicting, unbiased]}`` parsed from the table ``demo_table`` printed."""
    lines = out.splitlines()
    header = ["method", "aligned", "conflicting", "unbiased"]
    start = next(i for i, ln in enumerate(lines) if ln.split() == header)
    rows = {}
    for ln in lines[start + 1 :]:
        if not ln.strip():
            break
        m, *figures = ln.split()
        rows[m] = [float(f) for f in figures]
    return rows


def test_demo_runs_all_methods_and_prints_the_table(tmp_path, capsys):
    """The demo prints the data's counts and, for each method, the aligned / conflicting / unbiased
    test accuracy of its last-step models (checked against predictions made here)."""
    results = run_demo(DEMO_METHODS, 60, 5.0, 0, str(tmp_path), "cpu", progress=False)
    out = capsys.readouterr().out
    bundle = colored_digits(5.0, seed=0)
    n = {k: len(getattr(bundle, k)) for k in ("train", "valid", "test")}
    conflicting = int((bundle.train.targets != bundle.train.biases).sum())
    assert (
        f"train {n['train']} ({conflicting} conflicting), valid {n['valid']}, unbiased test {n['test']}"
        in out.splitlines()[0]
    )
    assert all(results[m]["steps"] == 60 for m in DEMO_METHODS)
    table, expected = printed_table(out), expected_demo_rows(bundle, tmp_path)
    assert list(table) == DEMO_METHODS
    for m, figures in table.items():
        want = [100 * expected[m][k] for k in ("aligned", "conflicting", "unbiased")]
        assert figures == pytest.approx(want, abs=0.005 + 1e-9), m  # printed to 2 decimals


def test_demo_cli_help():
    """`debiaslab demo --help` documents its flags."""
    r = run_cli("demo", "--help")
    assert r.returncode == 0 and "--num_steps" in r.stdout
