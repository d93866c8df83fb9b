"""Where Corrupted CIFAR-10 gets its clean images: torchvision's downloader, or a local copy.

Accepted local forms: torchvision's root (holding ``cifar-10-batches-py/``), an ``.npz`` with
``x_train`` [50000, 32, 32, 3] uint8, ``y_train``, ``x_test``, ``y_test``, or a class tree
``train|test/<class>/<image>`` as a folder or a ``.zip`` (the layout of the JPEG copy in
``../shared/data/cifar10-jpeg.zip``). Class folders are CIFAR-10's names (airplane .. truck) or
the digits 0..9.
"""

from __future__ import annotations

import io
import os
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from debiaslab.data.reference import IMAGE_EXTS
from debiaslab.data.sources import load_source, read_npz, torchvision_splits
from debiaslab.errors import UserError

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
SPLITS = ("train", "test")


def _class_index(name: str, where: str) -> int:
    key = name.lower()
    if key in CLASSES:
        return CLASSES.index(key)
    if key.isdigit() and int(key) < len(CLASSES):
        return int(key)
    raise UserError(
        f"{where}: class folder {name!r} is not a CIFAR-10 class; use {', '.join(CLASSES)} or 0..9"
    )


def _decode_bytes(blob: bytes, where: str) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(blob)) as im:
            a = np.asarray(im.convert("RGB"))
    except Exception as e:
        raise UserError(
            f"cannot read image {where} ({type(e).__name__}: {e}); re-download or remove it"
        ) from None
    if a.shape != (32, 32, 3):
        raise UserError(f"image {where} is {a.shape[1]}x{a.shape[0]}; CIFAR-10 images are 32x32")
    return a


def _listing(names, where: str) -> dict[str, list[tuple[str, int]]]:
    """``{'train': [(member, label), ...], 'test': [...]}`` from ``split/class/file`` member names, sorted."""
    out = {s: [] for s in SPLITS}
    for name in names:
        parts = Path(name).parts
        if len(parts) < 3 or parts[-3] not in SPLITS or Path(name).suffix.lower() not in IMAGE_EXTS:
            continue
        if parts[-1].startswith("._"):
            continue
        out[parts[-3]].append((name, _class_index(parts[-2], where)))
    for s in SPLITS:
        if not out[s]:
            raise UserError(
                f"{where} has no images under {s}/<class>/; expected train/<class>/*.jpg and test/<class>/*.jpg"
            )
        out[s].sort()
    return out


def _from_class_tree(path: Path) -> tuple:
    workers = min(8, (os.cpu_count() or 1) * 2)
    if path.is_file():
        try:
            archive = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError) as e:
            raise UserError(f"cannot open {path} as a zip ({e}); is the file complete?") from None
        with archive:
            listing = _listing(archive.namelist(), str(path))
            read = (
                archive.read
            )  # ZipFile reads are not thread-safe: read serially, decode in threads
            blobs = {s: [(read(n), f"{path}:{n}") for n, _ in listing[s]] for s in SPLITS}
    else:
        files = [str(p.relative_to(path)) for p in path.rglob("*") if p.is_file()]
        listing = _listing(files, str(path))
        blobs = {
            s: [((path / n).read_bytes(), str(path / n)) for n, _ in listing[s]] for s in SPLITS
        }
    out = []
    with ThreadPoolExecutor(workers) as pool:
        for s in SPLITS:
            images = list(pool.map(lambda b: _decode_bytes(*b), blobs[s], chunksize=512))
            out += [np.stack(images), np.array([label for _, label in listing[s]], dtype=np.int64)]
    return tuple(out)


def _from_npz(path: Path) -> tuple:
    arrays = read_npz(path, "CIFAR-10")
    for i in (0, 2):  # accept NCHW as well as NHWC
        if arrays[i].ndim == 4 and arrays[i].shape[1] == 3 and arrays[i].shape[-1] != 3:
            arrays[i] = arrays[i].transpose(0, 2, 3, 1)
    return tuple(arrays)


def _from_torchvision(root: Path, download: bool) -> tuple:
    from torchvision.datasets import CIFAR10

    train, test = torchvision_splits(
        CIFAR10,
        root,
        download,
        "--cifar10",
        ".npz, .zip or folder with train/<class>/ and test/<class>/, or a torchvision root",
    )
    return train.data, np.asarray(train.targets), test.data, np.asarray(test.targets)


def load_cifar10(source: str | None, download_root: Path) -> tuple[dict, dict]:
    """``({'x_train', 'y_train', 'x_test', 'y_test'} as numpy arrays (images uint8 NHWC), provenance)``."""
    forms = [
        (lambda p: p.is_file() and p.suffix.lower() == ".npz", _from_npz, "npz"),
        (lambda p: p.is_file(), _from_class_tree, "zip"),
        (
            lambda p: (p / "cifar-10-batches-py").is_dir(),
            lambda p: _from_torchvision(p, download=False),
            "torchvision-folder",
        ),
        (
            lambda p: (p / "train").is_dir() and (p / "test").is_dir(),
            _from_class_tree,
            "image-folder",
        ),
    ]
    data, prov = load_source(
        source,
        download_root,
        lambda root: _from_torchvision(root, download=True),
        forms,
        "--cifar10",
        "a CIFAR-10 .npz, a .zip or image folder with train/<class>/ and test/<class>/, "
        "or a torchvision root (with cifar-10-batches-py/)",
    )
    for k in ("x_train", "x_test"):
        if data[k].dtype != np.uint8 or data[k].ndim != 4 or data[k].shape[1:] != (32, 32, 3):
            raise UserError(
                f"CIFAR-10 {k} must be uint8 [N, 32, 32, 3], got {data[k].dtype} {data[k].shape}"
            )
    for k in ("y_train", "y_test"):
        if data[k].min() < 0 or data[k].max() >= len(CLASSES):
            raise UserError(f"CIFAR-10 {k} has labels outside 0..9")
    return data, prov
