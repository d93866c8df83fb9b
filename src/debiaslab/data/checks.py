"""What a run needs of in-memory data, checked where the data comes in: each problem is one
``UserError`` that names the argument, what was found and the conversion that fixes it.

Images are uint8 ``[N, C, H, W]``; targets are integer class labels in ``[0, num_classes)``; a
bias label is the class a sample's bias attribute is aligned with (a sample is bias-aligned when
its bias label equals its target), so it is in ``[0, num_classes)`` too. Every split has the
train split's channels and size.
"""

from __future__ import annotations

import numpy as np
import torch

from debiaslab.data.splits import DatasetBundle, Split
from debiaslab.errors import UserError

SPLIT_NAMES = ("train", "valid", "test")
_CHANNELS = (1, 3, 4)  # grey, RGB, RGBA: what tells [N, C, H, W] from [N, H, W, C]


def as_tensor(where: str, value) -> torch.Tensor:
    """A torch tensor of ``value``: numpy arrays are converted (copied when not contiguous)."""
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(value))
    raise UserError(
        f"{where} is a {type(value).__name__}; give a torch tensor or a numpy array "
        "(e.g. torch.tensor(values))"
    )


def checked_images(where: str, images) -> torch.Tensor:
    """``images`` as uint8 ``[N, C, H, W]``, or the conversion to make."""
    images = as_tensor(where, images)
    shape = tuple(images.shape)
    if images.dim() == 3:
        raise UserError(
            f"{where}: shape {shape}, one channel too few for [N, C, H, W]; for grey images "
            "pass images.unsqueeze(1)"
        )
    if images.dim() != 4:
        raise UserError(f"{where}: shape {shape}; images must be [N, C, H, W]")
    if shape[3] in _CHANNELS and shape[1] not in _CHANNELS:
        raise UserError(
            f"{where}: shape {shape}, channels last [N, H, W, C]; debiaslab reads [N, C, H, W]: "
            "pass images.permute(0, 3, 1, 2)"
        )
    if images.dtype != torch.uint8:
        raise UserError(f"{where}: found {images.dtype}; {_to_uint8(images)}")
    if len(images) == 0:
        raise UserError(f"{where}: no images (N = 0); every split needs images")
    return images


def _to_uint8(images: torch.Tensor) -> str:
    """The conversion to uint8 pixels 0-255 that ``images`` need."""
    if images.dtype == torch.bool or images.numel() == 0:
        return "images must be uint8 [N, C, H, W] pixels 0-255: convert with images.to(torch.uint8)"
    low, high = float(images.min()), float(images.max())
    if images.is_floating_point() and 0 <= low and high <= 1:
        return (
            "these look like pixels scaled to [0, 1]; images must be uint8 [N, C, H, W] pixels 0-255: "
            "pass (images * 255).round().to(torch.uint8)"
        )
    if 0 <= low and high <= 255:
        fix = (
            "images.round().to(torch.uint8)"
            if images.is_floating_point()
            else "images.to(torch.uint8)"
        )
        return f"images must be uint8 [N, C, H, W] pixels 0-255: pass {fix}"
    return (
        f"its values run from {low:g} to {high:g} (normalised?); images must be uint8 pixels "
        "0-255, as read from the image files"
    )


def checked_labels(where: str, labels, n: int) -> torch.Tensor:
    """``labels`` as int64 ``[n]``, refused when not whole numbers, not one per image or negative."""
    labels = as_tensor(where, labels)
    if labels.dim() == 2 and labels.shape[0] == n and labels.shape[1] > 1:
        raise UserError(
            f"{where}: shape {tuple(labels.shape)}, one-hot or scores; give one class index "
            "per image: pass labels.argmax(1)"
        )
    if labels.dim() != 1:
        raise UserError(
            f"{where}: shape {tuple(labels.shape)}; give one integer label per image, shape "
            f"[{n}] (labels.flatten() if it is [{n}, 1])"
        )
    if len(labels) != n:
        raise UserError(f"{where}: {len(labels)} labels for {n} images; give one label per image")
    if labels.is_floating_point() or labels.is_complex():
        fraction = labels.is_complex() or bool((labels != labels.round()).any())
        found = "values that are not whole numbers" if fraction else "whole numbers"
        raise UserError(
            f"{where}: found {labels.dtype} ({found}); labels must be integer class indices "
            "0, 1, ...: pass labels.long() if they are whole numbers"
        )
    labels = labels.long()
    if len(labels) and int(labels.min()) < 0:
        i = int((labels < 0).nonzero()[0])
        raise UserError(
            f"{where}: found {int(labels[i])} (index {i}); labels are class indices 0, 1, ...: "
            "drop or relabel the negative ones"
        )
    return labels


def checked_split(where: str, parts) -> Split:
    """A ``Split`` of ``(images, targets)`` or ``(images, targets, biases)``."""
    if isinstance(parts, Split):
        parts = (parts.images, parts.targets, parts.biases)
    if not isinstance(parts, (tuple, list)) or len(parts) not in (2, 3):
        got = f"{len(parts)} values" if isinstance(parts, (tuple, list)) else type(parts).__name__
        raise UserError(f"{where}: give (images, targets) or (images, targets, biases), got {got}")
    images = checked_images(f"{where} images", parts[0])
    n = len(images)
    targets = checked_labels(f"{where} targets", parts[1], n)
    biases = None
    if len(parts) == 3 and parts[2] is not None:
        biases = checked_labels(f"{where} biases", parts[2], n)
    return Split(images, targets, biases)


def check_label_range(where: str, split: Split, num_classes: int, fix: str | None = None) -> None:
    """Targets and bias labels in ``[0, num_classes)``; ``fix``: what to do instead of the
    default advice (for data a trained run reads, whose classes are fixed)."""
    for kind, labels in (("targets", split.targets), ("biases", split.biases)):
        if labels is None or not len(labels):
            continue
        outside = (labels < 0) | (labels >= num_classes)
        if outside.any():
            i = int(outside.nonzero()[0])
            if fix is None and kind == "biases":
                fix = "a bias label is the class the bias attribute is aligned with"
            elif fix is None:
                fix = f"pass num_classes={int(labels.max()) + 1} if there are that many classes, or fix the labels"
            raise UserError(
                f"{where} {kind}: found {int(labels[i])} (index {i}), outside [0, {num_classes}) "
                f"for num_classes={num_classes}; {fix}"
            )


def check_bundle(bundle: DatasetBundle, where: str | None = None) -> None:
    """The splits of ``bundle`` fit together: labels in range, one image shape for every split.
    ``where`` names a split in messages, with ``{split}`` for its name."""
    where = where or f"data {bundle.name!r}, {{split}} split"
    if not isinstance(bundle.num_classes, int) or bundle.num_classes < 2:
        raise UserError(
            f"{where.format(split='train')}: num_classes={bundle.num_classes!r}; a classifier "
            "needs at least 2 classes"
        )
    splits = {name: getattr(bundle, name) for name in SPLIT_NAMES}
    for name, split in splits.items():
        checked_split(where.format(split=name), split)
        check_label_range(where.format(split=name), split, bundle.num_classes)
    trained = set(splits["train"].targets.tolist())
    for name, split in splits.items():
        unseen = sorted(set(split.targets.tolist()) - trained)
        if unseen:
            raise UserError(
                f"{where.format(split=name)}: classes {unseen} appear here but have no training "
                "image, so no model can learn them; add training images of those classes or "
                "remove them"
            )
    shapes = {name: list(s.images.shape[1:]) for name, s in splits.items()}
    for name, shape in shapes.items():
        if shape != shapes["train"]:
            raise UserError(
                f"{where.format(split=name)} images: [C, H, W] = {shape} but the train images are "
                f"{shapes['train']}; every split needs the train split's channels and size "
                "(e.g. images.expand(-1, 3, -1, -1) for grey to RGB, "
                "torchvision.transforms.functional.resize for the size)"
            )
