"""The training step never reads the device: it traces as one graph, and it computes what the
step computed before it did (``Adam.step`` + ``StepLR`` + a host check of the loss)."""

import json
import shutil

import pytest
import torch
import torch._dynamo
import torch.nn.functional as F

from debiaslab.accelerate import compile_compute
from debiaslab.methods import METHODS
from debiaslab.methods.vanilla import Vanilla
from tests.conftest import make_method, method_batches, run_cli, tiny_bundle, tiny_config, traced

CASES = [
    ("vanilla", "mlp"),
    ("lff", "mlp"),
    ("disent", "mlp"),
    ("lff", "resnet20"),
    ("disent", "resnet20"),
    ("jtt", "mlp"),
    ("groupdro", "mlp"),
    ("groupdro", "resnet20"),
    ("lc", "mlp"),
    ("lc", "resnet20"),
    ("lff_be", "mlp"),
    ("disent_be", "mlp"),
]


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def test_a_branch_on_a_tensor_value_fails_the_check():
    class Branchy(Vanilla):
        def loss(self, x, y, idx, draws):
            loss = F.cross_entropy(self.models["model"](x), y)
            loss = loss if loss > 0 else -loss
            return loss, {"loss": loss}

    method, targets = make_method("vanilla")
    method.__class__ = Branchy
    x, y, idx = next(method_batches(targets, 1))
    with pytest.raises(torch._dynamo.exc.Unsupported):
        traced(method.compute)(x, y, idx, {})


@pytest.mark.parametrize("method_name,model", CASES)
def test_each_step_part_is_one_graph(method_name, model):
    method, targets = make_method(method_name, model=model, curr_step=1, on_nonfinite="stop")
    compute, optimizer_step = traced(method.compute), traced(method.optimizer_step)
    for step, (x, y, idx) in enumerate(
        method_batches(targets, 4)
    ):  # DisEnt: before and after the swap starts
        loss, names, values, finite, applied = compute(x, y, idx, method.draw(len(y), step))
        loss.backward()
        optimizer_step(applied)
    assert method.on_device and bool(applied)


def test_a_host_read_in_a_loss_fails_the_check():
    """The check above has teeth: one ``.item()`` in a method's loss makes it fail."""

    class Chatty(Vanilla):
        def loss(self, x, y, idx, draws):
            loss = F.cross_entropy(self.models["model"](x), y)
            return loss, {"loss": loss, "loss_seen": torch.tensor(loss.item())}

    method, targets = make_method("vanilla")
    method.__class__ = Chatty
    x, y, idx = next(method_batches(targets, 1))
    with pytest.raises(torch._dynamo.exc.BackendCompilerFailed, match="item in the traced step"):
        traced(method.compute)(x, y, idx, {})


class TodaysStep:
    """The step as it was written before it stopped reading the host: ``torch.optim.Adam`` with a
    float learning rate stepped by ``Adam.step``, ``StepLR``, and a host check of the loss."""

    def __init__(self, method):
        cfg = method.cfg
        self.method, self.curr_step = method, cfg.curr_step
        self.opts = [  # each model at the rate its method gives it (LC's biased one: lr / 10)
            torch.optim.Adam(m.parameters(), lr=method.optimizer_settings(n)[0], fused=True)
            for n, m in method.models.items()
        ]
        self.scheds = [
            torch.optim.lr_scheduler.StepLR(o, cfg.lr_decay_step, cfg.lr_gamma) for o in self.opts
        ]

    def update(self, x, y, idx, step):
        loss, terms = self.method.loss(x, y, idx, self.method.draw(len(y), step))
        assert bool(torch.isfinite(loss))
        for o in self.opts:
            o.zero_grad(set_to_none=True)
        loss.backward()
        for o in self.opts:
            o.step()
        if step >= self.curr_step:
            for s in self.scheds:
                s.step()
        return {k: v.detach() for k, v in terms.items()}


def state(method, opts):
    weights = [t for m in method.models.values() for t in m.state_dict().values()]
    # the moments of parameters that stepped (JTT's first model never steps in its main stage:
    # torch's Adam has no state for it, ours has zeros built up front)
    moments = [
        v for o in opts for st in o.state.values() if float(st["step"]) > 0 for v in st.values()
    ]
    ema = [method.ema.values(), method.ema.visited] if hasattr(method, "ema") else []
    return weights + moments + ema


def run_both(method_name, steps, compiled, lr=0.01):
    kw = dict(curr_step=30, use_lr_decay=True, lr_decay_step=40, lr_gamma=0.5, lr=lr)
    new, targets = make_method(method_name, **kw)
    old = TodaysStep(make_method(method_name, **kw)[0])
    if compiled:
        compile_compute(new)
    losses = []
    for step, (x, y, idx) in enumerate(method_batches(targets, steps)):
        a, b = new.update(x, y, idx, step).terms, old.update(x, y, idx, step)
        assert a.keys() == b.keys()
        losses.append((torch.stack(list(a.values())), torch.stack(list(b.values()))))
    assert new.lr() == lr * 0.5**4  # decays at steps 70, 110, ...
    for name in new.stage.models:  # the stage's models follow the schedule
        o_old = old.opts[list(new.models).index(name)]
        assert float(new.optimizers[name].param_groups[0]["lr"]) == o_old.param_groups[0]["lr"]
    return losses, state(new, new.optimizers.values()), state(old.method, old.opts)


@pytest.mark.parametrize("method_name", list(METHODS))
def test_eager_step_is_bit_identical_to_todays(method_name):
    losses, new, old = run_both(method_name, 200, compiled=False)
    assert all(torch.equal(a, b) for a, b in losses)
    assert len(new) == len(old) and all(torch.equal(a, b) for a, b in zip(new, old))


def test_compiled_step_matches_todays_within_float_tolerance():
    """Inductor reorders float sums, so bits differ. Over 200 steps of DisEnt (the swap starts at
    step 31, the learning rate halves four times) at lr 1e-3, every loss term stays within 1e-4
    relative and every weight, Adam moment and EMA entry within 1e-5 + 1e-4 relative. (At lr 1e-2
    on these 24 samples training is chaotic: rounding differences grow to percents by step 200.)"""
    losses, new, old = run_both("disent", 200, compiled=True, lr=1e-3)
    for a, b in losses:
        assert torch.allclose(a, b, rtol=1e-4, atol=0)
    assert len(new) == len(old)
    for a, b in zip(new, old):
        assert torch.allclose(a.float(), b.float(), rtol=1e-4, atol=1e-5)


def test_a_part_that_does_not_compile_runs_eagerly_after_one_warning(tmp_path, monkeypatch):
    from debiaslab.accelerate import CompileFallbackWarning
    from debiaslab.train import train

    def broken_compile(fn, **kw):
        def fails(*args):
            raise RuntimeError("backend exploded\nsecond line")

        return fails

    monkeypatch.setattr(torch, "compile", broken_compile)
    with pytest.warns(CompileFallbackWarning) as caught:
        results = train(tiny_config(tmp_path, compile=True), tiny_bundle())
    messages = [str(w.message) for w in caught if issubclass(w.category, CompileFallbackWarning)]
    assert (
        len(messages) == 1 and "Vanilla.compute does not compile (backend exploded)" in messages[0]
    )
    assert results["compiled"] == [] and results["selections"]["last"]["step"] == 20


@pytest.mark.skipif(
    not (shutil.which("g++") or shutil.which("c++")),
    reason="Inductor needs a C++ compiler on the CPU, and none is installed",
)
def test_cli_compile_runs_the_step_compiled_and_says_so(tiny_reference, tmp_path):

    out = run_cli(
        "train",
        "--train_ours",
        "--dataset",
        "cmnist",
        "--percent",
        "1pct",
        "--data_dir",
        tiny_reference,
        "--log_dir",
        tmp_path / "logs",
        "--exp",
        "c",
        "--num_steps",
        "30",
        "--valid_freq",
        "15",
        "--batch_size",
        "16",
        "--curr_step",
        "10",
        "--palette",
        "any",
        "--no_progress",
        "--device",
        "cpu",
        "--compile",
    )
    assert out.returncode == 0, out.stderr[-2000:]
    run = tmp_path / "logs" / "cmnist" / "c"
    assert json.loads((run / "results.json").read_text())["compiled"] == ["compute"]
    assert json.loads((run / "config.json").read_text())["compiled"] is True
    assert "does not compile" not in out.stderr
