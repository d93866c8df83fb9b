from __future__ import annotations

import math

import torch
import torch.nn as nn


class MLP(nn.Module):
    """The paper's CMNIST MLP: flatten -> 100 -> ReLU -> 100 -> ReLU -> 16 -> ReLU, then ``fc``.

    Parameter names (``feature.0/2/4``, ``fc``) match the reference checkpoints.
    """

    feature_dim = 16

    def __init__(self, num_classes: int = 10, head_inputs: int = 1, in_shape=(3, 28, 28), hidden: int = 100):
        super().__init__()
        d_in = math.prod(in_shape)
        self.feature = nn.Sequential(
            nn.Linear(d_in, hidden), nn.ReLU(),
            nn.Linear(hidden, hidden), nn.ReLU(),
            nn.Linear(hidden, self.feature_dim), nn.ReLU(),
        )
        self.fc = nn.Linear(self.feature_dim * head_inputs, num_classes)

    def extract(self, x: torch.Tensor) -> torch.Tensor:
        return self.feature(x.flatten(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.extract(x))
