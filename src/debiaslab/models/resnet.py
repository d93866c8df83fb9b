from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from debiaslab.models.layers import Linear


class _TorchvisionResNet(ResNet):
    """torchvision's ResNet (ImageNet stem, not pretrained) with ``extract`` and a wider ``fc``.

    State-dict keys are torchvision's, as in the reference checkpoints (``fc``: 512 or 1024 -> C for ResNet18).
    """

    block, layers, feature_dim = BasicBlock, (2, 2, 2, 2), 512

    def __init__(self, num_classes: int = 10, head_inputs: int = 1, in_shape=(3, 224, 224)):
        super().__init__(self.block, list(self.layers), num_classes=num_classes)
        self.fc = Linear(self.feature_dim * head_inputs, num_classes)

    def extract(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.extract(x))


class ResNet18(_TorchvisionResNet):
    pass


class ResNet50(_TorchvisionResNet):
    block, layers, feature_dim = Bottleneck, (3, 4, 6, 3), 2048


class _CifarBlock(nn.Module):
    """He et al.'s CIFAR basic block with the parameter-free shortcut (option A: subsample + zero-pad channels)."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.stride, self.pad = stride, cout - cin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        shortcut = x[:, :, :: self.stride, :: self.stride] if self.stride > 1 else x
        if self.pad:
            shortcut = F.pad(shortcut, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))
        return F.relu(out + shortcut)


class ResNet20(nn.Module):
    """The CIFAR ResNet-20 of He et al. (2016), LfF's Corrupted CIFAR-10 backbone: 3 stages of 3
    blocks, 16/32/64 channels."""

    feature_dim = 64

    def __init__(self, num_classes: int = 10, head_inputs: int = 1, in_shape=(3, 32, 32)):
        super().__init__()
        self.conv1 = nn.Conv2d(in_shape[0], 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        blocks, cin = [], 16
        for cout, stride in ((16, 1), (32, 2), (64, 2)):
            for i in range(3):
                blocks.append(_CifarBlock(cin, cout, stride if i == 0 else 1))
                cin = cout
        self.layers = nn.Sequential(*blocks)
        self.fc = Linear(self.feature_dim * head_inputs, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def extract(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(F.relu(self.bn1(self.conv1(x))))
        return x.mean((2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.extract(x))
