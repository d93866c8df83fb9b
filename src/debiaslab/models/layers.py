"""A linear layer whose batched form (fused runs, ``torch.func.vmap``) is exact and fast.

Under vmap, ``F.linear`` with a weight per run becomes a batched matmul whose weight gradient
comes out transposed and is copied back (~10% of a fused Colored MNIST step on the CPU), and its
kernels sum in another order than a lone run's, so fused and lone runs part after a few steps.
``linear`` computes the same thing through an ``autograd.Function`` with its own vmap rule:
alone, ``addmm`` forward and ``mm`` backward (``F.linear``'s own kernels, bit for bit); batched,
``baddbmm`` / ``bmm`` with the transposes folded into the calls, each run's slice summed as a
lone run sums it (tests/test_fused.py checks both).
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn as nn
import torch.nn.functional as F

# within ``batched_products(True)``: the batched form on the CPU is one batched product too
_batched_on_cpu = False


@contextlib.contextmanager
def batched_products(on: bool):
    """Within (a fused step's forward and backward): on the CPU, with ``on``, the batched form
    computes every run's product as one ``baddbmm`` / ``bmm``, as on CUDA: measured faster than
    one product per run on the CPU too (docs/speed.md, "Fused runs"), at the price of sums in
    another order than a lone run's, so its runs agree with lone ones to float rounding only."""
    global _batched_on_cpu
    before, _batched_on_cpu = _batched_on_cpu, on
    try:
        yield
    finally:
        _batched_on_cpu = before


def _per_run(device: torch.device) -> bool:
    return device.type == "cpu" and not _batched_on_cpu


class _LinearFunction(torch.autograd.Function):
    """What both forms share: they save x and W, and their backward is ``grad @ W``,
    ``grad^T @ x`` and the sum of ``grad`` over the batch, each in its own products."""

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[0], inputs[1])

    @staticmethod
    def grads(ctx, grad, times, transposed, batch_dim: int):
        x, weight = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad
        return (
            times(grad, weight) if need_x else None,
            times(transposed, x) if need_w else None,
            grad.sum(batch_dim) if need_b else None,
        )


class _BatchedLinear(_LinearFunction):
    """``x[k] @ W[k].T + b[k]`` for every run k: x [K, B, in], W [K, out, in], b [K, out].

    On CUDA, and on the CPU within ``batched_products(True)``, one ``baddbmm`` / ``bmm`` per
    product. Otherwise on the CPU one ``addmm`` / ``mm`` per run, the very calls of a lone run on
    the same contiguous slices (``--fused_exact``): CPU BLAS picks other kernels for a batched
    product (its sums then differ in the last bits), so only these end bit for bit as alone.
    """

    @staticmethod
    def forward(x, weight, bias):
        if _per_run(x.device):
            out = x.new_empty(x.shape[0], x.shape[1], weight.shape[1])
            for a, w, b, o in zip(x, weight, bias, out):
                torch.addmm(b, a, w.t(), out=o)
            return out
        return torch.baddbmm(bias.unsqueeze(1), x, weight.transpose(1, 2))

    @staticmethod
    def backward(ctx, grad):
        times = _per_run_mm if _per_run(grad.device) else torch.bmm
        return _LinearFunction.grads(ctx, grad, times, grad.transpose(1, 2), 1)


def _per_run_mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a[k] @ b[k]`` for every run k, written into one [K, ...] tensor."""
    out = a.new_empty(a.shape[0], a.shape[1], b.shape[2])
    for a_k, b_k, o in zip(a, b, out):
        torch.mm(a_k, b_k, out=o)
    return out


class _Linear(_LinearFunction):
    """``F.linear`` of a 2-D input with a bias, with the batched rule above under vmap."""

    @staticmethod
    def forward(x, weight, bias):
        return torch.addmm(bias, x, weight.t())

    @staticmethod
    def backward(ctx, grad):
        return _LinearFunction.grads(ctx, grad, torch.mm, grad.t(), 0)

    @staticmethod
    def vmap(info, in_dims, x, weight, bias):
        n = info.batch_size
        x, weight, bias = (
            t.movedim(d, 0) if d is not None else t.expand(n, *t.shape)
            for t, d in zip((x, weight, bias), in_dims)
        )
        return _BatchedLinear.apply(x, weight, bias), 0


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    if x.dim() != 2 or bias is None or torch.compiler.is_compiling():
        return F.linear(x, weight, bias)
    device = x.device.type
    if torch.is_autocast_enabled(device):  # what autocast does to addmm: all three cast
        dtype = torch.get_autocast_dtype(device)
        with torch.autocast(device, enabled=False):
            return _Linear.apply(x.to(dtype), weight.to(dtype), bias.to(dtype))
    return _Linear.apply(x, weight, bias)


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters, same state dict, same numbers) through ``linear``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)
