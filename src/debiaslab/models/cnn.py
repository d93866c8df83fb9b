"""Small plain CNNs: DeNetDM's shallow branches (a 3-layer CNN for 32x32 images, a 4-layer one for
224x224). Padding keeps every layer valid on small inputs; the feature vector is a global average."""

from __future__ import annotations

import torch
import torch.nn as nn

from debiaslab.models.layers import Linear


class SmallCNN(nn.Module):
    """``layers`` of conv -> BatchNorm -> ReLU (-> 2x2 max-pool), a global average, then ``fc``."""

    layers: tuple[tuple[int, int, bool], ...] = ()  # (out channels, kernel size, max-pool after)

    def __init__(
        self, num_classes: int = 10, head_inputs: int = 1, in_shape=(3, 32, 32), feature_dim=None
    ):
        """``feature_dim``: the last layer's channels instead of the class's (DeNetDM's shallow
        branch takes its deep branch's feature size)."""
        super().__init__()
        if feature_dim is not None:
            self.layers = (*self.layers[:-1], (feature_dim, *self.layers[-1][1:]))
        blocks, cin = [], in_shape[0]
        for cout, kernel, pool in self.layers:
            blocks += [
                nn.Conv2d(cin, cout, kernel, padding=kernel // 2),
                nn.BatchNorm2d(cout),
                nn.ReLU(),
            ]
            blocks += [nn.MaxPool2d(2, ceil_mode=True)] if pool else []  # ceil: valid down to 1x1
            cin = cout
        self.feature = nn.Sequential(*blocks)
        self.fc = Linear(self.feature_dim * head_inputs, num_classes)

    @property
    def feature_dim(self) -> int:
        return self.layers[-1][0]

    def extract(self, x: torch.Tensor) -> torch.Tensor:
        return self.feature(x).mean((2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.extract(x))


class CNN3(SmallCNN):
    """DeNetDM's shallow Corrupted CIFAR-10 branch: 32 / 64 / 64 channels, 5x5 kernels."""

    layers = ((32, 5, True), (64, 5, True), (64, 5, False))


class CNN4(SmallCNN):
    """DeNetDM's shallow BFFHQ branch: 64 (7x7) / 128 / 512 / 512 (3x3) channels."""

    layers = ((64, 7, True), (128, 3, True), (512, 3, True), (512, 3, False))
