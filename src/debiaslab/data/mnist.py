"""Where Colored MNIST gets its grey digits: torchvision's downloader, or a local copy."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

from debiaslab import UserError


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _from_npz(path: Path):
    try:
        with np.load(path) as z:
            arrays = {k: z[k] for k in ("x_train", "y_train", "x_test", "y_test")}
    except KeyError as e:
        raise UserError(f"{path} lacks the array {e}; an MNIST .npz needs x_train, y_train, x_test, y_test") from None
    except Exception as e:
        raise UserError(f"cannot read {path} as .npz ({type(e).__name__}: {e}); is the file complete?") from None
    return arrays["x_train"], arrays["y_train"], arrays["x_test"], arrays["y_test"]


def _from_image_folder(path: Path):
    from debiaslab.data.reference import IMAGE_EXTS, decode_images

    out = []
    for split in ("train", "test"):
        files, labels = [], []
        for class_dir in sorted((path / split).iterdir(), key=lambda p: p.name):
            if not class_dir.is_dir():
                continue
            if not class_dir.name.isdigit():
                raise UserError(f"{class_dir}: class folders of an MNIST image folder must be named 0..9")
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

    try:
        train = MNIST(str(root), train=True, download=download)
        test = MNIST(str(root), train=False, download=download)
    except (RuntimeError, OSError) as e:
        what = "downloading MNIST into" if download else "reading MNIST from"
        raise UserError(f"{what} {root} failed ({str(e).splitlines()[0][:200]}); pass --mnist with a local copy "
                        "(.npz, torchvision root, or image folder with train/<digit>/ and test/<digit>/)") from None
    return train.data.numpy(), train.targets.numpy(), test.data.numpy(), test.targets.numpy()


def load_mnist(source: str | None, download_root: Path) -> tuple[dict, dict]:
    """Return ``({'x_train', 'y_train', 'x_test', 'y_test'} as tensors, provenance)``.

    ``source``: None (download with torchvision into ``download_root``), a ``.npz`` file, a
    torchvision root (holding ``MNIST/raw``), or an image folder with ``train/<d>/`` and ``test/<d>/``.
    """
    if source is None:
        arrays = _from_torchvision(download_root, download=True)
        prov = {"kind": "torchvision-download", "root": str(download_root)}
    else:
        path = Path(source)
        if not path.exists():
            raise UserError(f"--mnist {path} does not exist; pass an MNIST .npz, a torchvision root or an image folder")
        if path.is_file():
            arrays = _from_npz(path)
            prov = {"kind": "npz", "path": str(path.resolve()), "sha256": file_sha256(path)}
        elif (path / "MNIST").is_dir():
            arrays = _from_torchvision(path, download=False)
            prov = {"kind": "torchvision-folder", "path": str(path.resolve())}
        elif (path / "train").is_dir() and (path / "test").is_dir():
            arrays = _from_image_folder(path)
            prov = {"kind": "image-folder", "path": str(path.resolve())}
        else:
            raise UserError(f"--mnist {path}: not an .npz file, a torchvision root (with MNIST/) "
                            "or an image folder (with train/<digit>/ and test/<digit>/)")
    names = ("x_train", "y_train", "x_test", "y_test")
    data = {k: torch.as_tensor(np.ascontiguousarray(a)) for k, a in zip(names, arrays)}
    for k in ("x_train", "x_test"):
        if data[k].dtype != torch.uint8 or data[k].dim() != 3:
            raise UserError(f"MNIST {k} must be uint8 [N, 28, 28], got {data[k].dtype} {tuple(data[k].shape)}")
    for k in ("y_train", "y_test"):
        data[k] = data[k].to(torch.int64)
        if len(data[k]) != len(data["x" + k[1:]]):
            raise UserError(f"MNIST {k} has {len(data[k])} labels for {len(data['x' + k[1:]])} images")
    return data, prov
