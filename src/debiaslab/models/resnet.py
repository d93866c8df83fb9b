from __future__ import annotations

import torch
import torch.nn as nn
from torchvision.models.resnet import BasicBlock, ResNet


class ResNet18(ResNet):
    """torchvision's ResNet18 (ImageNet stem, not pretrained) with ``extract`` and a wider ``fc``.

    State-dict keys are torchvision's, as in the reference checkpoints (``fc``: 512 or 1024 -> C).
    """

    feature_dim = 512

    def __init__(self, num_classes: int = 10, head_inputs: int = 1, in_shape=(3, 224, 224)):
        super().__init__(BasicBlock, [2, 2, 2, 2], num_classes=num_classes)
        self.fc = nn.Linear(self.feature_dim * head_inputs, num_classes)

    def extract(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.extract(x))
