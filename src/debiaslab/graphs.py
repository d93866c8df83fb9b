"""A training step replayed as a CUDA graph: one launch instead of hundreds.

On a GPU, a step of DisEnt's two ResNet18s on 32x32 images is about a thousand small kernels, and
launching them from Python takes longer than running them: the GPU waits on the host. The step
was made host-free (no read of a device value, the learning rate a tensor, Adam's skip a device
flag), so it can be recorded once with ``torch.cuda.graph`` and replayed: every kernel of the
forwards, the losses, the per-sample EMA, the backward and the optimizer steps in one launch.

What the graph cannot hold stays eager, around it: the method's random draws and step-count
decisions (``Method.draw``: the same generator calls as an eager run, so the same numbers), the
learning-rate schedule (a Python counter), the batch's sampling and augmentation, and logging.

One graph per *shape* of step: the stage and the names of the draws, e.g. DisEnt before and after
``curr_step`` (the swap's permutation appears). A new shape runs ``warmup`` steps eagerly (real
steps of training, on a side stream as capture requires, which also initialises the libraries'
handles and workspaces), then is captured at the next step and replayed from then on.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


class CudaGraph:
    """``fn(*inputs)`` recorded once; each call copies new inputs into the recorded ones and
    replays. Outputs are tensors the graph overwrites: callers copy what they keep."""

    def __init__(self, fn: Callable, inputs: list[torch.Tensor]):
        self.inputs = [t.clone() for t in inputs]  # clone keeps the strides (channels_last)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.output = fn(*self.inputs)

    def __call__(self, inputs: list[torch.Tensor]):
        for static, new in zip(self.inputs, inputs):
            static.copy_(new)
        self.graph.replay()
        return self.output


class EagerGraph:
    """``CudaGraph``'s contract on any device, replayed eagerly: static inputs copied in, the step
    run on them, its first outputs overwritten on each replay. What the CPU rehearsal of the GPU
    table (benchmarks/rehearsal) and tests/test_graphs.py capture with."""

    def __init__(self, fn: Callable, inputs: list[torch.Tensor]):
        self.fn, self.inputs, self.output = fn, [t.clone() for t in inputs], None

    def __call__(self, inputs: list[torch.Tensor]):
        for static, new in zip(self.inputs, inputs):
            static.copy_(new)
        out = self.fn(*self.inputs)
        if self.output is None:
            self.output = out
        else:
            for mine, new in zip(
                (self.output.values, self.output.finite, self.output.applied),
                (out.values, out.finite, out.applied),
            ):
                mine.copy_(new)
        return self.output


def on_side_stream(fn: Callable, *args):
    """``fn(*args)`` on a side stream that first waits for the current one, which then waits for
    it: what warm-up before a capture must do (PyTorch's CUDA graph notes)."""
    if not torch.cuda.is_available() or not any(
        a.is_cuda for a in args if isinstance(a, torch.Tensor)
    ):
        return fn(*args)
    side, current = torch.cuda.Stream(), torch.cuda.current_stream()
    side.wait_stream(current)
    with torch.cuda.stream(side):
        out = fn(*args)
    current.wait_stream(side)
    return out


class CapturedStep:
    """Calls ``step(x, y, idx, draws)`` (``Method.step_on_batch``) through one graph per key.

    ``key(draws)`` names the step's shape; ``graph`` records and replays (``CudaGraph``; tests on
    a CPU pass a stand-in with the same contract). The ``StepOutput`` returned is a copy: the
    loop keeps each step's flags until its next boundary, and the next replay overwrites the
    graph's own.
    """

    def __init__(
        self,
        step: Callable,
        key: Callable[[dict], tuple],
        warmup: int = 3,
        graph: Callable = CudaGraph,
    ):
        self.step, self.key, self.warmup, self.make_graph = step, key, warmup, graph
        self.graphs: dict[tuple, object] = {}
        self.eager_steps: dict[tuple, int] = {}

    def __call__(self, x, y, idx, draws: dict):
        key = self.key(draws)
        names = tuple(draws)
        graph = self.graphs.get(key)
        if graph is None:
            done = self.eager_steps.get(key, 0)
            if done < self.warmup:
                self.eager_steps[key] = done + 1
                return on_side_stream(self.step, x, y, idx, draws)

            def flat_step(x, y, idx, *values):
                return self.step(x, y, idx, dict(zip(names, values)))

            graph = self.graphs[key] = self.make_graph(flat_step, [x, y, idx, *draws.values()])
        out = graph([x, y, idx, *draws.values()])
        return type(out)(out.names, out.values.clone(), out.finite.clone(), out.applied.clone())

    @property
    def captured(self) -> list[tuple]:
        """The keys of the graphs recorded so far."""
        return list(self.graphs)
