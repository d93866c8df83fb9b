"""Models. Each model has ``extract(x) -> z`` (the feature vector) and a linear head ``fc``.

``fc`` takes ``feature_dim * head_inputs`` inputs: 1 for a plain classifier, 2 for DisEnt's
classifiers, which see the concatenation ``[z_intrinsic, z_bias]``. Parameter names follow the
reference implementation, so its checkpoints load as they are.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from debiaslab.models.cnn import CNN3, CNN4, SmallCNN
from debiaslab.models.mlp import MLP, DeepMLP, LfFMLP, ShallowMLP
from debiaslab.models.resnet import ResNet18, ResNet20, ResNet50

MODELS = {
    "mlp": MLP,
    "mlp_lff": LfFMLP,  # LfF's own recipe (presets lff_code-cmnist-*)
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


BUILTIN_MODELS = frozenset(MODELS)  # the others came from register_model (a user's factory)
# built-in models whose feature vector takes any width (build_model's feature_dim)
FREE_WIDTH = frozenset(k for k, m in MODELS.items() if issubclass(m, (MLP, SmallCNN)))
_WRAP = (
    "return dl.Backbone.from_classifier(model, num_classes, head_inputs) for a classifier whose "
    "last layer is .fc, or dl.Backbone(features, feature_dim, num_classes, head_inputs)"
)


def build_model(
    name: str, num_classes: int, head_inputs: int = 1, in_shape=(3, 28, 28), feature_dim=None
) -> nn.Module:
    """Model ``name`` for ``num_classes``; ``feature_dim``: the width of its feature vector, for
    the models of ``FREE_WIDTH`` only (None: the model's own)."""
    key = name.lower()
    if key not in MODELS:
        raise KeyError(f"unknown model {name!r}; choose one of {sorted(MODELS)}")
    factory = MODELS[key]
    if feature_dim is not None and key not in FREE_WIDTH:
        raise ValueError(f"model {name!r} has a fixed feature size; {sorted(FREE_WIDTH)} do not")
    if key in BUILTIN_MODELS:
        width = {} if feature_dim is None else {"feature_dim": feature_dim}
        return factory(num_classes=num_classes, head_inputs=head_inputs, in_shape=in_shape, **width)
    return _user_model(key, factory, num_classes, head_inputs, tuple(in_shape))


def _user_model(key: str, factory, num_classes: int, head_inputs: int, in_shape) -> nn.Module:
    """A registered factory's model, refused (UserError) unless it has the models' interface."""
    from debiaslab.errors import UserError

    what = f"model {key!r} (factory {getattr(factory, '__name__', factory)!r})"
    try:
        model = factory(num_classes=num_classes, head_inputs=head_inputs, in_shape=in_shape)
    except Exception as e:
        raise UserError(
            f"{what} failed as factory(num_classes={num_classes}, head_inputs={head_inputs}, "
            f"in_shape={in_shape}): {type(e).__name__}: {e}"
        ) from e
    if not isinstance(model, nn.Module) or not callable(getattr(model, "extract", None)):
        raise UserError(
            f"{what} returned a {type(model).__name__} without extract(x), the features a "
            f"method reads; {_WRAP}"
        )
    fc = getattr(model, "fc", None)
    if not isinstance(fc, nn.Linear) or fc.out_features != num_classes:
        found = f"Linear(out={fc.out_features})" if isinstance(fc, nn.Linear) else type(fc).__name__
        raise UserError(
            f"{what} has fc = {found}, not a linear head onto the {num_classes} classes; {_WRAP}"
        )
    return model


def check_model(key: str, model: nn.Module, head_inputs: int, in_shape, fix=None) -> None:
    """A model reads images of ``in_shape`` and its head takes ``head_inputs`` features; ``fix``:
    what the refusal advises (a user's model: the error says what failed)."""
    from debiaslab.errors import UserError

    model.eval()
    try:
        with torch.no_grad():
            features = model.extract(torch.zeros(2, *in_shape))
    except Exception as e:
        why = str(e).splitlines()[0] if fix else str(e)
        raise UserError(
            f"model {key!r} cannot read the data's images [2, {', '.join(map(str, in_shape))}] "
            f"(N, C, H, W): {type(e).__name__}: {why}" + (f"; {fix}" if fix else "")
        ) from e
    if features.dim() != 2 or features.shape[1] * head_inputs != model.fc.in_features:
        raise UserError(
            f"model {key!r}: extract(x) gives features {list(features.shape)} but fc takes "
            f"{model.fc.in_features} inputs, {head_inputs} x the feature size; give Backbone "
            f"the feature_dim extract(x) has ({features[0].numel()} here, flattened)"
        )
