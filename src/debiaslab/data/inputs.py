"""A user's data as a ``DatasetBundle``: tensors or arrays (``tensor_data``), a torch or
torchvision dataset (``dataset_data``), a CSV manifest (``manifest_data``). Everything is checked
and converted once, to uint8 images and integer labels held in memory; anything else is refused
with the conversion to make."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from debiaslab.data.checks import check_bundle, checked_split
from debiaslab.data.splits import DatasetBundle
from debiaslab.errors import UserError


def tensor_data(
    train: Sequence[torch.Tensor],
    valid: Sequence[torch.Tensor],
    test: Sequence[torch.Tensor],
    num_classes: int | None = None,
    name: str = "tensors",
) -> DatasetBundle:
    """A dataset from tensors (or numpy arrays): each split ``(images, targets)`` or ``(images,
    targets, biases)``.

    ``images`` are uint8 ``[N, C, H, W]`` (pixels 0-255; the run scales them to [0, 1]), the
    same channels and size in every split; ``targets`` integer class labels in ``[0,
    num_classes)`` (default ``num_classes``: the largest label + 1); ``biases`` the class each
    sample's bias attribute is aligned with (bias-aligned: ``bias == target``), in the same
    range. Bias labels are optional: without them, methods that read them (GroupDRO) are refused
    and the bias-aware metrics are ``None``. Anything else is refused with the conversion to make.
    """
    splits = {
        n: checked_split(f"tensor_data({n}=...)", s)
        for n, s in (("train", train), ("valid", valid), ("test", test))
    }
    if num_classes is not None and (
        isinstance(num_classes, bool) or not isinstance(num_classes, int)
    ):
        raise UserError(f"tensor_data(num_classes={num_classes!r}): give an integer, e.g. 10")
    classes = num_classes or int(max(int(s.targets.max()) for s in splits.values())) + 1
    bundle = DatasetBundle(name, splits["train"], splits["valid"], splits["test"], classes)
    check_bundle(bundle, "tensor_data({split}=...)")
    return bundle


def dataset_data(
    train: torch.utils.data.Dataset,
    valid: torch.utils.data.Dataset,
    test: torch.utils.data.Dataset,
    num_classes: int | None = None,
    name: str = "datasets",
) -> DatasetBundle:
    """A dataset from torch ``Dataset`` objects whose items are ``(image, target)`` or
    ``(image, target, bias)`` with ``image`` a uint8 tensor ``[C, H, W]`` or a PIL image. Each is
    read once, here, into memory: training never touches the ``Dataset`` again."""
    return tensor_data(
        *(_read(n, d) for n, d in (("train", train), ("valid", valid), ("test", test))),
        num_classes=num_classes,
        name=name,
    )


def manifest_data(csv_path: str | Path, image_size: int | None = None) -> DatasetBundle:
    """A dataset from a CSV manifest with the columns ``path,target[,bias][,split]`` (the layout
    of Waterbirds-like datasets; ``debiaslab train --manifest`` reads the same file). Images are
    decoded once and cached next to the CSV."""
    from debiaslab.data.folders import DATA_SEED, load_manifest

    bundle = load_manifest(csv_path, image_size, seed=DATA_SEED)
    check_bundle(bundle, f"manifest {csv_path}, {{split}} split")
    return bundle


def _read(name: str, dataset) -> tuple[torch.Tensor, ...]:
    """The columns of a ``Dataset``'s items: images stacked, labels as given (checked later)."""
    where = f"dataset_data({name}=...)"
    if not hasattr(dataset, "__getitem__") or not hasattr(dataset, "__len__"):
        raise UserError(f"{where} is a {type(dataset).__name__}, not a torch Dataset (len and [i])")
    columns = None
    for i in range(len(dataset)):
        item = dataset[i]
        if columns is None:
            if not isinstance(item, (tuple, list)) or len(item) not in (2, 3):
                raise UserError(
                    f"{where}: items must be (image, target) or (image, target, bias), "
                    f"item 0 is {_describe(item)}"
                )
            columns = [[] for _ in item]
        image = item[0] if isinstance(item[0], torch.Tensor) else _image_tensor(where, i, item[0])
        columns[0].append(image)
        for column, value in zip(columns[1:], item[1:]):
            column.append(value.item() if isinstance(value, torch.Tensor) else value)
    if columns is None:
        raise UserError(f"{where} is empty")
    sizes = {tuple(image.shape) for image in columns[0]}
    if len(sizes) > 1:
        raise UserError(
            f"{where}: the images have different shapes {sorted(sizes)[:3]}; resize them to one "
            "size in the Dataset (e.g. torchvision.transforms.Resize)"
        )
    labels = [_labels(f"{where} labels", c) for c in columns[1:]]
    return (torch.stack(columns[0]), *labels)


def _describe(item) -> str:
    if isinstance(item, (tuple, list)):
        return f"{len(item)} values"
    return f"a {type(item).__name__}"


def _image_tensor(where: str, i: int, image) -> torch.Tensor:
    from PIL import Image
    from torchvision.transforms.functional import pil_to_tensor

    if isinstance(image, Image.Image):
        return pil_to_tensor(image)
    if isinstance(image, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(image))
    raise UserError(
        f"{where}: item {i}'s image is a {type(image).__name__}; give a uint8 tensor [C, H, W] "
        "or a PIL image"
    )


def _labels(where: str, values: list) -> torch.Tensor:
    try:
        return torch.tensor(values)
    except (TypeError, ValueError, RuntimeError):
        raise UserError(
            f"{where}: {values[0]!r}, ... are not numbers; map class names to 0, 1, ... first"
        ) from None
