"""A user's own model: any feature extractor as a debiaslab model (``Backbone``), and a factory
registered under a name that configs and ``--model`` can use (``register_model``)."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
import torch.nn as nn

from debiaslab.errors import UserError
from debiaslab.models import MODELS

ModelFactory = Callable[..., nn.Module]  # (num_classes=, head_inputs=, in_shape=) -> model


def positive_int(value) -> bool:
    """An int of at least 1 (a bool is not a number here)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


class Backbone(nn.Module):
    """Any feature extractor as a debiaslab model: ``extract(x)`` is ``features(x)`` flattened,
    ``fc`` a linear head over ``feature_dim * head_inputs`` inputs (DisEnt's heads read two
    concatenated features). Use it in a factory::

        def my_model(num_classes, head_inputs, in_shape):
            features = nn.Sequential(nn.Conv2d(in_shape[0], 128, 3), nn.AdaptiveAvgPool2d(1))
            return dl.Backbone(features, 128, num_classes, head_inputs)
    """

    def __init__(
        self, features: nn.Module, feature_dim: int, num_classes: int, head_inputs: int = 1
    ):
        super().__init__()
        if not isinstance(features, nn.Module):
            raise UserError(
                f"Backbone(features=...) is a {type(features).__name__}; give the feature "
                "extractor as an nn.Module (e.g. nn.Sequential(...))"
            )
        for name, value in (
            ("feature_dim", feature_dim), ("num_classes", num_classes), ("head_inputs", head_inputs)
        ):  # fmt: skip
            if not positive_int(value):
                raise UserError(
                    f"Backbone({name}={value!r}): give a positive integer (feature_dim: the size "
                    "of features(x) flattened; num_classes and head_inputs: the factory's own)"
                )
        self.features = features
        self.fc = nn.Linear(feature_dim * head_inputs, num_classes)

    @classmethod
    def from_classifier(
        cls, model: nn.Module, num_classes: int, head_inputs: int = 1, head: str = "fc"
    ) -> Backbone:
        """Split a classifier whose last layer is the linear attribute ``head`` (torchvision's
        ResNets: ``fc``; VGG / EfficientNet: index into ``classifier`` first) into its feature
        extractor and a fresh head for ``num_classes`` and ``head_inputs``. The given ``head``
        is replaced by an identity in ``model``, which becomes the extractor."""
        old = getattr(model, head, None)
        if not isinstance(old, nn.Linear):
            raise UserError(
                f"{type(model).__name__}.{head} is not a linear layer; name the model's last "
                "linear layer with head=, or wrap the features with Backbone(features, dim, ...)"
            )
        setattr(model, head, nn.Identity())
        return cls(model, old.in_features, num_classes, head_inputs)

    def extract(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.features(x), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.extract(x))


def register_model(name: str, factory: ModelFactory) -> str:
    """Make ``factory`` a model that configs (``model=name``) and ``--model`` can name. It is
    called as ``factory(num_classes=, head_inputs=, in_shape=)`` and must return a module with
    ``extract(x)`` (features) and ``fc`` (a linear head over ``feature_dim * head_inputs``), e.g.
    a ``Backbone``. Registering a name again (a notebook cell run twice) replaces its factory,
    with a warning; the built-in models' names are kept. Returns the name."""
    from debiaslab.models import BUILTIN_MODELS

    if not isinstance(name, str) or not name.strip() or name != name.strip():
        raise UserError(
            f"register_model({name!r}, ...): give the model a name, a non-empty string without "
            "surrounding spaces (configs and --model call it by that name)"
        )
    if not callable(factory):
        raise UserError(
            f"register_model({name!r}, ...): the factory is a {type(factory).__name__}, not a "
            "function; give def my_model(num_classes, head_inputs, in_shape): ..."
        )
    if getattr(factory, "__name__", "") == "<lambda>":
        raise UserError(
            f"register_model({name!r}, <lambda>): a run reloads its models by the factory's "
            "name; define the factory with def and a name"
        )
    key = name.lower()
    if key in BUILTIN_MODELS:
        raise UserError(f"model {name!r} is built in; register your factory under another name")
    if MODELS.get(key, factory) is not factory:
        warnings.warn(
            f"model {name!r} was registered to another factory; it now builds with "
            f"{getattr(factory, '__qualname__', factory)!r}",
            stacklevel=2,
        )
    MODELS[key] = factory
    return key
