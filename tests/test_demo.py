"""The demo's code path on the bundled Colored Digits (a shortened run)."""
import torch

from debiaslab.data.digits import colored_digits
from debiaslab.demo import run_demo
from tests.conftest import run_cli


def test_colored_digits_protocol():
    b = colored_digits(5.0, seed=0)
    c = b.counts()
    assert c["train"]["n"] + c["valid"]["n"] + c["test"]["n"] == 1797
    assert 40 <= c["train"]["conflicting"] <= 70  # 5% of ~1078
    assert c["test"]["conflicting"] > 0.85 * c["test"]["n"]  # unbiased: ~90% conflicting
    assert b.train.images.shape[1:] == (3, 28, 28) and b.train.images.dtype == torch.uint8
    assert colored_digits(5.0, seed=0).checksums() == b.checksums()


def test_demo_runs_all_methods_and_prints_the_table(tmp_path, capsys):
    results = run_demo(["vanilla", "lff", "disent"], 60, 5.0, 0, str(tmp_path), "cpu", progress=False)
    out = capsys.readouterr().out
    for m in ("vanilla", "lff", "disent"):
        assert m in out and (tmp_path / "colored_digits" / f"demo_{m}" / "results.json").exists()
        assert results[m]["steps"] == 60
    assert "conflicting" in out and "unbiased" in out


def test_demo_cli_help():
    r = run_cli("demo", "--help")
    assert r.returncode == 0 and "--num_steps" in r.stdout
