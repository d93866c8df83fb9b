"""The CUDA-graph step wrapper (graphs.CapturedStep), on a CPU with a stand-in for the graph.

A real CUDA graph records the step once and replays it, overwriting the tensors it returned; the
stand-in does the same by calling the step on its recorded inputs and copying the results into
its first outputs. What these tests pin down is the wrapper's bookkeeping: one graph per stage and
set of draws, warm-up steps first, each replay fed the batch and the draws of its own step, and
outputs copied before the next replay overwrites them. tests/test_cuda.py runs the real graphs.
"""

import pytest
import torch

from debiaslab.accelerate import capture_graphs
from debiaslab.graphs import CapturedStep, EagerGraph
from tests.conftest import read_log, tiny_bundle, tiny_config


class StandInGraph(EagerGraph):
    """The eager graph, each one recorded (the wrapper builds one per stage and set of draws)."""

    recorded: list = []

    def __init__(self, fn, inputs):
        super().__init__(fn, inputs)
        StandInGraph.recorded.append(self)


def run(tmp_path, monkeypatch, graphed: bool, **kw):
    import debiaslab.graphs
    import debiaslab.train
    from debiaslab.train import train

    StandInGraph.recorded = []
    monkeypatch.setattr(debiaslab.graphs, "CudaGraph", StandInGraph)
    monkeypatch.setattr(debiaslab.train, "capture_step", lambda cfg, device, method: graphed)
    cfg = tiny_config(tmp_path, **kw)
    return train(cfg, tiny_bundle()), read_log(tmp_path / "tiny" / "e")


@pytest.mark.parametrize(
    "method,extra,keys",
    [
        (
            "disent",
            dict(curr_step=7, use_lr_decay=True, lr_decay_step=5, lr_gamma=0.5),
            [("main", ()), ("main", ("perm",))],
        ),
        ("jtt", dict(jtt_steps=8, jtt_upweight=3), [("erm", ()), ("main", ())]),
        ("lc", dict(), [("main", ("lam", "scores"))]),
    ],
)
def test_captured_step_trains_exactly_as_the_eager_step(tmp_path, monkeypatch, method, extra, keys):
    """Same losses, evaluations and selections, step for step, across DisEnt's curr_step and an LR
    decay, JTT's two stages and LC's random draws; one graph per shape of step."""
    eager, eager_log = run(tmp_path / "a", monkeypatch, False, method=method, num_steps=24, **extra)
    graphed, graphed_log = run(
        tmp_path / "b", monkeypatch, True, method=method, num_steps=24, **extra
    )
    assert [g.fn is not None for g in StandInGraph.recorded] == [True] * len(keys)
    assert graphed["cuda_graph"] and not eager["cuda_graph"]
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in eager_log]
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in graphed_log] == strip
    assert graphed["selections"] == eager["selections"]


def test_each_replay_reads_its_own_batch_and_draws_and_outputs_are_copies():
    seen = []

    class Out:
        def __init__(self, names, values, finite, applied):
            self.names, self.values, self.finite, self.applied = names, values, finite, applied

    def step(x, y, idx, draws):
        seen.append((x.sum().item(), tuple(draws)))
        v = x.sum().reshape(1) + draws.get("d", torch.zeros(1))
        return Out(("loss",), v, torch.isfinite(v), torch.isfinite(v).all())

    captured = CapturedStep(step, lambda draws: tuple(draws), warmup=2, graph=StandInGraph)
    outs = [
        captured(torch.full((2,), float(i)), torch.zeros(2), torch.zeros(2), {"d": torch.ones(1)})
        for i in range(5)
    ]
    assert [o.values.item() for o in outs] == [1.0, 3.0, 5.0, 7.0, 9.0]
    assert captured.captured == [("d",)] and captured.eager_steps == {("d",): 2}
    assert outs[3].values is not outs[4].values  # kept flags survive the next replay


def test_capture_refuses_a_step_that_reads_the_host(tmp_path):
    from debiaslab.methods import METHODS
    from debiaslab.models import build_model

    cfg = tiny_config(tmp_path)
    models = {"model": build_model("mlp", 2, 1, (3, 8, 8))}
    method = METHODS["vanilla"](cfg, models, torch.zeros(4, dtype=torch.long), 2, torch.Generator())
    method.on_device = False
    with pytest.raises(ValueError, match="fused Adam"):
        capture_graphs(method)


def test_cuda_graph_flag_on_a_cpu_is_refused_with_the_fix(tmp_path):
    from debiaslab import UserError
    from debiaslab.train import train

    with pytest.raises(UserError, match="--cuda_graph needs a CUDA device.*drop the flag"):
        train(tiny_config(tmp_path, cuda_graph=True), tiny_bundle())
