from __future__ import annotations

import math

import torch
import torch.nn as nn

from debiaslab.models.layers import Linear


class MLP(nn.Module):
    """The paper's CMNIST MLP: flatten -> 100 -> ReLU -> 100 -> ReLU -> 16 -> ReLU, then ``fc``.

    Parameter names (``feature.0/2/4``, ``fc``) match the reference checkpoints.
    """

    widths: tuple[int, ...] = (100, 100, 16)  # the hidden layers; the last is the feature vector

    def __init__(
        self, num_classes: int = 10, head_inputs: int = 1, in_shape=(3, 28, 28), feature_dim=None
    ):
        """``feature_dim``: the last hidden layer's width instead of the class's (DeNetDM's shallow
        branch takes its deep branch's feature size)."""
        super().__init__()
        if feature_dim is not None:
            self.widths = (*self.widths[:-1], feature_dim)
        layers, d_in = [], math.prod(in_shape)
        for width in self.widths:
            layers += [Linear(d_in, width), nn.ReLU()]
            d_in = width
        self.feature = nn.Sequential(*layers)
        self.fc = Linear(self.feature_dim * head_inputs, num_classes)

    @property
    def feature_dim(self) -> int:
        return self.widths[-1]

    def extract(self, x: torch.Tensor) -> torch.Tensor:
        return self.feature(x.flatten(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.extract(x))


class LfFMLP(MLP):
    """LfF's own Colored MNIST MLP (Nam et al. 2020's code): 3 hidden layers of 100."""

    widths = (100, 100, 100)


class DeepMLP(MLP):
    """DeNetDM's deep CMNIST branch: 4 hidden layers of 100 (5 linear layers with ``fc``)."""

    widths = (100, 100, 100, 100)


class ShallowMLP(MLP):
    """DeNetDM's shallow CMNIST branch: 2 hidden layers of 100 (3 linear layers with ``fc``)."""

    widths = (100, 100)
