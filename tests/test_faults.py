"""Numerical faults and a full disk: the run stops with the step and the fix, or skips; the last checkpoint survives."""
import errno
import json

import pytest
import torch

from debiaslab import UserError
from debiaslab.config import TrainConfig
from debiaslab.data.splits import DatasetBundle
from debiaslab.methods.base import NonFiniteLoss
from debiaslab.methods.vanilla import Vanilla
from tests.conftest import tiny_split
from tests.test_methods import batches, make


def bundle():
    return DatasetBundle("tiny", tiny_split(40, 2, 5, 0), tiny_split(8, 2, 4, 1), tiny_split(8, 2, 2, 2), 2)


def cfg(tmp_path, **kw):
    return TrainConfig(dataset="tiny", method="vanilla", model="mlp", num_steps=20, valid_freq=10, save_freq=5,
                       batch_size=16, lr=1e-2, log_dir=str(tmp_path), exp="e", progress=False, device="cpu", **kw)


@pytest.fixture
def nan_at_step_7(monkeypatch):
    original = Vanilla.loss

    def loss(self, x, y, idx, step):
        loss, terms = original(self, x, y, idx, step)
        if step == 6:  # the 7th step
            loss = loss * float("nan")
            terms = {**terms, "loss": loss}
        return loss, terms

    monkeypatch.setattr(Vanilla, "loss", loss)


def test_nan_stops_naming_the_step_and_term_then_resumes_with_skip(tmp_path, nan_at_step_7):
    from debiaslab.train import train

    with pytest.raises(UserError, match=r"non-finite loss at step 7 \(loss\) of vanilla.*step 5.*--on_nonfinite skip"):
        train(cfg(tmp_path), bundle())
    run = tmp_path / "tiny" / "e"
    assert (run / "FAILED").exists() and not (run / "results.json").exists()
    assert torch.load(run / "checkpoint_last.pt", weights_only=True)["step"] == 5  # the last good checkpoint
    res = train(cfg(tmp_path, on_nonfinite="skip"), bundle())  # resumes from step 5 and skips step 7
    assert res["skipped_steps"] == [7] and not (run / "FAILED").exists()
    log = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert {"kind": "skip", "step": 7, "nonfinite": ["loss"]} in log
    weights = torch.load(run / "checkpoint_last.pt", weights_only=True)["method_state"]["models"]["model"]
    assert all(torch.isfinite(v).all() for v in weights.values())


def test_skipped_step_leaves_weights_and_per_sample_state_untouched():
    method, targets = make("lff", on_nonfinite="skip")
    x, y, idx = next(batches(targets, 1))
    method.update(x, y, idx, 0)
    before = ({n: {k: v.clone() for k, v in m.state_dict().items()} for n, m in method.models.items()},
              method.ema.values().clone(), method.ema.visited.clone())
    x_bad, y2, idx2 = next(batches(targets, 1, seed=2))
    x_bad = x_bad.clone()
    x_bad[0, 0, 0, 0] = float("inf")
    with pytest.raises(NonFiniteLoss) as e:
        method.update(x_bad, y2, idx2, 1)
    assert e.value.step == 2 and "loss" in e.value.terms
    after = {n: m.state_dict() for n, m in method.models.items()}
    for n in before[0]:
        for k in before[0][n]:
            assert torch.equal(before[0][n][k], after[n][k])
    assert torch.equal(before[1], method.ema.values()) and torch.equal(before[2], method.ema.visited)


def test_full_disk_gives_a_clear_error_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    from debiaslab import io
    from debiaslab.train import train

    real_save, calls = torch.save, {"n": 0}

    def save(obj, f, *a, **kw):
        calls["n"] += 1
        if calls["n"] >= 4:  # from the 4th file on, the disk is full halfway through the write
            f.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *a, **kw)

    monkeypatch.setattr(io.torch, "save", save)
    with pytest.raises(UserError, match="no space left on the device.*checkpoint_last.pt, step 5.*free space"):
        train(cfg(tmp_path), bundle())
    run = tmp_path / "tiny" / "e"
    assert torch.load(run / "checkpoint_last.pt", weights_only=True)["step"] == 5
    assert not list(run.glob(".*.tmp"))  # no half-written file left behind
    monkeypatch.setattr(io.torch, "save", real_save)
    res = train(cfg(tmp_path), bundle())  # space freed: the same call resumes and finishes
    assert res["steps"] == 20
