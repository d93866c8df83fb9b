"""Weight averaging: an exponential moving average (EMA) of the models a method predicts with.

From step ``start`` of the main stage on, after every step,
``avg <- decay * avg + (1 - decay) * current`` for every parameter AND every floating-point
buffer (BatchNorm's running mean and variance are averaged like the weights, not recomputed on
training data: it costs no pass over the data, keeps the step free of host round-trips, and a
checkpoint of the averaged model is complete as it stands); integer buffers (BatchNorm's batch
counter) are copied. The first averaged step copies the current weights. The averaged models are
evaluated next to the raw ones, selected by the same rules (``selection``, prefix ``wa_``),
checkpointed with the run and resumed bit for bit.
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn

DEFAULT_DECAY = 0.999


class WeightAverage:
    def __init__(self, models: dict[str, nn.Module], decay: float, start: int):
        """``models``: the live models to average (name -> module); ``start``: the first step
        (0-based, counted in the main stage) whose result enters the average."""
        self.decay, self.start = decay, start
        self.models = {n: copy.deepcopy(m).eval().requires_grad_(False) for n, m in models.items()}
        self.count = 0  # steps averaged so far
        # (averaged, live) tensor lists, made once: the step updates the live tensors in place
        self.floats, self.others = ([], []), ([], [])
        for name, source in models.items():
            for a, s in zip(_tensors(self.models[name]), _tensors(source)):
                pair = self.floats if a.is_floating_point() else self.others
                pair[0].append(a)
                pair[1].append(s)

    @torch.no_grad()
    def update(self, step: int) -> None:
        """Fold the live models in after main-stage step ``step`` (0-based); no host round-trip."""
        if step < self.start:
            return
        (avg_f, src_f), (avg_o, src_o) = self.floats, self.others
        if self.count == 0:
            torch._foreach_copy_(avg_f + avg_o, src_f + src_o)
        else:
            torch._foreach_lerp_(avg_f, src_f, 1.0 - self.decay)
            if avg_o:
                torch._foreach_copy_(avg_o, src_o)
        self.count += 1

    @property
    def started(self) -> bool:
        return self.count > 0

    def state_dict(self) -> dict:
        return {"count": self.count, "models": {n: m.state_dict() for n, m in self.models.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.count = state["count"]
        for name, model in self.models.items():
            model.load_state_dict(state["models"][name])


def _tensors(model: nn.Module) -> list[torch.Tensor]:
    return [*model.parameters(), *model.buffers()]
