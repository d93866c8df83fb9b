"""Where Colored MNIST gets its grey digits: torchvision's downloader, or a local copy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from debiaslab.data.sources import load_source, read_npz, torchvision_splits
from debiaslab.errors import UserError


def _from_image_folder(path: Path):
    from debiaslab.data.reference import IMAGE_EXTS, decode_images

    out = []
    for split in ("train", "test"):
        files, labels = [], []
        for class_dir in sorted((path / split).iterdir(), key=lambda p: p.name):
            if not class_dir.is_dir():
                continue
            if not class_dir.name.isdigit():
                raise UserError(
                    f"{class_dir}: class folders of an MNIST image folder must be named 0..9"
                )
            members = sorted(p for p in class_dir.iterdir() if p.suffix.lower() in IMAGE_EXTS)
            files += members
            labels += [int(class_dir.name)] * len(members)
        if not files:
            raise UserError(f"no images under {path / split}/<digit>/")
        gray = decode_images(files)[:, 0]
        out += [gray.numpy(), np.asarray(labels)]
    return tuple(out)


def _from_torchvision(root: Path, download: bool):
    from torchvision.datasets import MNIST

    train, test = torchvision_splits(
        MNIST,
        root,
        download,
        "--mnist",
        ".npz, torchvision root, or image folder with train/<digit>/ and test/<digit>/",
    )
    return train.data.numpy(), train.targets.numpy(), test.data.numpy(), test.targets.numpy()


def load_mnist(source: str | None, download_root: Path) -> tuple[dict, dict]:
    """Return ``({'x_train', 'y_train', 'x_test', 'y_test'} as tensors, provenance)``.

    ``source``: None (download with torchvision into ``download_root``), a ``.npz`` file, a
    torchvision root (holding ``MNIST/raw``), or an image folder with ``train/<d>/`` and ``test/<d>/``.
    """
    forms = [
        (lambda p: p.is_file(), lambda p: read_npz(p, "MNIST"), "npz"),
        (
            lambda p: (p / "MNIST").is_dir(),
            lambda p: _from_torchvision(p, download=False),
            "torchvision-folder",
        ),
        (
            lambda p: (p / "train").is_dir() and (p / "test").is_dir(),
            _from_image_folder,
            "image-folder",
        ),
    ]
    arrays, prov = load_source(
        source,
        download_root,
        lambda root: _from_torchvision(root, download=True),
        forms,
        "--mnist",
        "an MNIST .npz file, a torchvision root (with MNIST/) or an image folder "
        "(with train/<digit>/ and test/<digit>/)",
    )
    data = {k: torch.as_tensor(a) for k, a in arrays.items()}
    for k in ("x_train", "x_test"):
        if data[k].dtype != torch.uint8 or data[k].dim() != 3:
            raise UserError(
                f"MNIST {k} must be uint8 [N, 28, 28], got {data[k].dtype} {tuple(data[k].shape)}"
            )
    return data, prov
