"""Compiling and capturing a training step, from the loop (``train``, ``group``): one run's step
(``Method``) and a fused group's (``fused.FusedStep``) alike. A method is one run's step, written
as its paper's equations are, and imports none of this.

A step's owner computes a batch in ``compute`` and takes the whole step in ``step_on_batch``,
called through ``_compute`` and ``_step`` (what this module replaces); it lists in ``compiled``
the parts that run compiled and says in ``graphed`` whether its step replays as CUDA graphs;
``on_device`` says its optimizer step reads nothing on the host, and ``stage.name`` names the
stage a graph is recorded for.
"""

from __future__ import annotations

import warnings

import torch

from debiaslab import graphs


def compile_compute(owner) -> None:
    """Route the owner's per-batch computation through ``torch.compile``; if it fails to compile
    it runs eagerly from then on, after one warning line.

    The optimizer step traces without a break too (tests/test_compile.py), but stays eager: it is
    already one fused kernel per model, and Inductor has no fake kernel for it in torch 2.14, so
    it could not build it anyway.
    """
    owner._compute = _compiled_or_eager(owner, "compute")
    owner.compiled.append("compute")


def capture_graphs(owner, warmup: int = 3, graph=None) -> None:
    """Replay the owner's step as CUDA graphs (``graphs.CapturedStep``), one per stage and set of
    draw names; only where its optimizer step reads nothing on the host. ``graph``: a stand-in
    for ``graphs.CudaGraph`` (tests on a CPU), looked up when called (the GPU table's CPU
    rehearsal replaces it)."""
    if not owner.on_device:
        raise ValueError("CUDA graphs need fused Adam (the step would read the host)")
    owner._step = graphs.CapturedStep(
        owner.step_on_batch,
        lambda draws: (owner.stage.name, tuple(draws)),
        warmup,
        graph or graphs.CudaGraph,
    )
    owner.graphed = True


def _compiled_or_eager(owner, name: str):
    """``getattr(owner, name)`` through ``torch.compile(fullgraph=True)``; on the first failure
    (a graph break, no C++ compiler, an unsupported backend) one warning and eager from then on."""
    eager = getattr(owner, name)
    compiled = torch.compile(eager, fullgraph=True, dynamic=False)
    fell_back = False

    def call(*args):
        nonlocal fell_back
        if fell_back:
            return eager(*args)
        try:
            return compiled(*args)
        except Exception as e:  # noqa: BLE001 - any compile failure means: run it eagerly
            reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
            warnings.warn(
                f"--compile: {type(owner).__name__}.{name} does not compile ({reason}); "
                "it runs eagerly",
                CompileFallbackWarning,
                stacklevel=2,
            )
            fell_back = True
            owner.compiled.remove(name)
            return eager(*args)

    return call


class CompileFallbackWarning(UserWarning):
    """Part of a step could not be compiled and runs eagerly."""
