"""Models. Each model has ``extract(x) -> z`` (the feature vector) and a linear head ``fc``.

``fc`` takes ``feature_dim * head_inputs`` inputs: 1 for a plain classifier, 2 for DisEnt's
classifiers, which see the concatenation ``[z_intrinsic, z_bias]``. Parameter names follow the
reference implementation, so its checkpoints load as they are.
"""

from __future__ import annotations

import torch.nn as nn

from debiaslab.models.cnn import CNN3, CNN4
from debiaslab.models.mlp import MLP, DeepMLP, ShallowMLP
from debiaslab.models.resnet import ResNet18, ResNet20, ResNet50

MODELS = {
    "mlp": MLP,
    "resnet18": ResNet18,
    "resnet20": ResNet20,
    "resnet50": ResNet50,
    # DeNetDM's deep and shallow branches (methods/denetdm.py)
    "mlp_deep": DeepMLP,
    "mlp_shallow": ShallowMLP,
    "cnn3": CNN3,
    "cnn4": CNN4,
}
DATASET_MODEL = {"cmnist": "mlp", "cifar10c": "resnet18", "bffhq": "resnet18", "bar": "resnet18"}


def build_model(
    name: str, num_classes: int, head_inputs: int = 1, in_shape=(3, 28, 28)
) -> nn.Module:
    key = name.lower()
    if key not in MODELS:
        raise KeyError(f"unknown model {name!r}; choose one of {sorted(MODELS)}")
    return MODELS[key](num_classes=num_classes, head_inputs=head_inputs, in_shape=in_shape)
