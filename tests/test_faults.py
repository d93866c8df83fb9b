"""Numerical faults and a full disk: the run stops with the step and the fix, or skips; the last checkpoint survives."""

import errno

import pytest
import torch

from debiaslab import UserError
from debiaslab.methods.vanilla import Vanilla
from tests.conftest import (
    assert_same_tensors,
    make_method,
    method_batches,
    method_state_of,
    read_log,
    tiny_bundle,
    tiny_config,
)


@pytest.fixture
def nan_at_step_7(monkeypatch):
    original = Vanilla.update

    def update(self, x, y, idx, step):
        if step == 6:  # the 7th step
            x = x * float("nan")
        return original(self, x, y, idx, step)

    monkeypatch.setattr(Vanilla, "update", update)


def test_nan_stops_naming_the_step_and_term_then_resumes_with_skip(tmp_path, nan_at_step_7):
    from debiaslab.train import train

    with pytest.raises(
        UserError,
        match=r"non-finite loss at step 7 \(loss\) of vanilla.*step 5.*--on_nonfinite skip",
    ):
        train(tiny_config(tmp_path), tiny_bundle())
    run = tmp_path / "tiny" / "e"
    assert (run / "FAILED").exists() and not (run / "results.json").exists()
    assert (
        torch.load(run / "checkpoint_last.pt", weights_only=True)["step"] == 5
    )  # the last good checkpoint
    res = train(
        tiny_config(tmp_path, on_nonfinite="skip"), tiny_bundle()
    )  # resumes from step 5 and skips step 7
    assert res["skipped_steps"] == [7] and not (run / "FAILED").exists()
    assert {"kind": "skip", "step": 7, "nonfinite": ["loss"]} in read_log(run)
    weights = torch.load(run / "checkpoint_last.pt", weights_only=True)["method_state"]["models"][
        "model"
    ]
    assert all(torch.isfinite(v).all() for v in weights.values())


# the methods with state of their own besides weights, and a key of it that an applied step moves
STATEFUL = {
    "lff": "extra.ema.values",
    "lc": "extra.prior",
    "groupdro": "extra.q",
    "lff_be": "extra.ema.values",
}


@pytest.mark.parametrize("model", ["mlp", "resnet20"])
@pytest.mark.parametrize("mode", ["stop", "skip"])
@pytest.mark.parametrize("method_name", list(STATEFUL))
def test_nonfinite_step_moves_nothing_and_stop_holds_every_later_step(method_name, mode, model):
    method, targets = make_method(method_name, model=model, on_nonfinite=mode)
    steps = list(method_batches(targets, 4))
    for s in (0, 1):
        method.update(*steps[s], s)
    before = method_state_of(method)
    x_bad = steps[2][0].clone()
    x_bad[0, 0, 0, 0] = float("inf")
    out = method.update(x_bad, *steps[2][1:], 2)
    assert not bool(out.applied)
    assert "loss" in [k for k, ok in zip(out.terms, out.finite.tolist()) if not ok]
    assert_same_tensors(
        method_state_of(method), before
    )  # as after step k - 1: weights, BN statistics, Adam, state
    out = method.update(*steps[3], 3)
    if (
        mode == "stop"
    ):  # nothing applies until the loop reads the flag at its next boundary and stops
        assert not bool(out.applied) and bool(out.finite.all())
        assert_same_tensors(method_state_of(method), before)
    else:
        assert bool(out.applied)
        after = method_state_of(method)
        moved = [k for k in before if not torch.equal(after[k], before[k])]
        assert any(k.endswith("fc.weight") for k in moved) and STATEFUL[method_name] in moved
        if model == "resnet20":  # an applied step does move the BatchNorm statistics
            assert any(k.endswith("running_mean") for k in moved)
            assert any(k.endswith("num_batches_tracked") for k in moved)


def test_skipped_steps_still_count_in_the_lr_schedule():
    """--on_nonfinite skip: steps 2-4 are not finite and move nothing, yet the LR halves every 2
    iterations as if they had applied (README: "the LR schedule still counts them")."""
    method, targets = make_method(
        "lff", on_nonfinite="skip", use_lr_decay=True, lr_decay_step=2, lr_gamma=0.5, curr_step=0
    )
    lrs, applied = [], []
    for step, (x, y, idx) in enumerate(method_batches(targets, 8)):
        if step in (2, 3, 4):
            x = x * float("nan")
        lrs.append([float(o.param_groups[0]["lr"]) for o in method.optimizers.values()])
        applied.append(bool(method.update(x, y, idx, step).applied))
    assert applied == [True, True, False, False, False, True, True, True]
    assert lrs == [[0.01 * 0.5 ** (s // 2)] * 2 for s in range(8)]


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
    with pytest.raises(
        UserError, match="no space left on the device.*checkpoint_last.pt, step 5.*free space"
    ):
        train(tiny_config(tmp_path), tiny_bundle())
    run = tmp_path / "tiny" / "e"
    assert torch.load(run / "checkpoint_last.pt", weights_only=True)["step"] == 5
    assert not list(run.glob(".*.tmp"))  # no half-written file left behind
    monkeypatch.setattr(io.torch, "save", real_save)
    res = train(
        tiny_config(tmp_path), tiny_bundle()
    )  # space freed: the same call resumes and finishes
    assert res["steps"] == 20


def test_step_window_sums_applied_steps_per_term_and_reports_the_others():
    from debiaslab.logging import StepWindow
    from debiaslab.methods.base import StepOutput

    def out(names, values, applied):
        values = torch.tensor(values)
        return StepOutput(tuple(names), values, torch.isfinite(values), torch.tensor(applied))

    window = StepWindow()
    window.add(1, out(["loss", "a"], [1.0, 2.0], True))
    window.add(2, out(["loss", "a"], [float("nan"), 5.0], False))  # not applied: not in the sums
    window.add(3, out(["loss", "a", "b"], [3.0, 4.0, 6.0], True))  # a term that appears mid-window
    assert window.not_applied() == [(2, ["loss"])] and window.not_applied() == []
    state = window.state_dict()
    assert state["log_count"] == 2 and {k: float(v) for k, v in state["log_sums"].items()} == {
        "loss": 4.0,
        "a": 6.0,
        "b": 6.0,
    }
    resumed = StepWindow(state["log_sums"], state["log_count"])  # as a checkpoint restores it
    assert window.take_means() == resumed.take_means() == {"loss": 2.0, "a": 3.0, "b": 3.0}
    assert window.take_means() is None  # nothing since


class _TermWhilePickled:
    """Sends this process SIGTERM from inside torch.save, as a pre-emption can."""

    def __reduce__(self):
        import os
        import signal

        os.kill(os.getpid(), signal.SIGTERM)
        return (int, (5,))


def test_sigterm_during_a_checkpoint_write_exits_after_the_file_is_in_place(tmp_path):
    """The exit waits for the write: raised inside torch.save it aborted the process (SIGABRT)."""
    import signal

    from debiaslab.io import atomic_torch_save
    from debiaslab.sigterm import sigterm_as_exit

    path = tmp_path / "checkpoint_last.pt"
    with pytest.raises(SystemExit) as exit_, sigterm_as_exit():
        atomic_torch_save({"step": 7, "odd": _TermWhilePickled(), "w": torch.ones(3)}, path)
    assert exit_.value.code == 128 + signal.SIGTERM
    saved = torch.load(path, weights_only=False)  # the test's own file: int(5) as a global
    assert saved["step"] == 7 and saved["odd"] == 5 and torch.equal(saved["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint_last.pt"]  # no temporary left
