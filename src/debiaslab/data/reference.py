"""Reader and writer for the reference folder layout (the DisEnt code's datasets).

Each image's labels are in its file name, ``<id>_<target>_<bias>.<ext>``::

    <data_dir>/<dataset>/<pct>/align/<sub>/<id>_<t>_<b>.png     train, bias-aligned
    <data_dir>/<dataset>/<pct>/conflict/<sub>/...                train, bias-conflicting ("conlict" accepted)
    <data_dir>/<dataset>/<pct>/valid/...                         valid (bffhq: <dataset>/valid)
    <data_dir>/<dataset>/test/...                                test, shared by every pct

A split is decoded once into a uint8 tensor and cached next to the data (or under
``~/.cache/debiaslab`` when the data folder is read-only). The cache is keyed by a fingerprint of
the file listing (names, sizes, modification times), so editing the folder invalidates it.
"""

from __future__ import annotations

import hashlib
import os
import re
import warnings
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from debiaslab.data.splits import DatasetBundle, Split
from debiaslab.errors import UserError
from debiaslab.io import atomic_torch_save

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff"}
JUNK_NAMES = {".ds_store", "thumbs.db", "desktop.ini"}
_LABELS = re.compile(r"(?P<id>.+)_(?P<target>[0-9]+)_(?P<bias>[0-9]+)", re.DOTALL)
CACHE_VERSION = 1
DATASETS = ("cmnist", "cifar10c", "bffhq")
# The percent folders the paper ships for each dataset.
PERCENTS = {
    "cmnist": ("0.5pct", "1pct", "2pct", "5pct"),
    "cifar10c": ("0.5pct", "1pct", "2pct", "5pct"),
    "bffhq": ("0.5pct",),
}


def parse_labels(name: str) -> tuple[int, int]:
    """``'123_4_7.png' -> (4, 7)``: (target, bias) from a reference-layout file name.

    The id may itself contain underscores; the last two ``_``-separated fields are the labels.
    """
    stem = Path(name).stem
    m = _LABELS.fullmatch(stem)
    if m is None:
        raise UserError(
            f"file name {name!r} does not carry its labels: expected '<id>_<target>_<bias>.<ext>' "
            "with integer target and bias (e.g. '123_4_7.png'); rename it or remove it from the dataset folder"
        )
    return int(m.group("target")), int(m.group("bias"))


def _scan(folder: str) -> list[tuple[str, os.stat_result]]:
    """(path, stat) of every image under ``folder``, sorted by path; os.scandir keeps 70k files fast."""
    out = []
    with os.scandir(folder) as it:
        entries = sorted(it, key=lambda e: e.name)
    for e in entries:
        if e.is_dir():
            if not e.name.startswith("."):
                out += _scan(e.path)
            continue
        if e.name.lower() in JUNK_NAMES or e.name.startswith("._"):
            warnings.warn(f"skipping {e.path} (not an image)", stacklevel=3)
            continue
        ext = os.path.splitext(e.name)[1]
        if ext.lower() not in IMAGE_EXTS:
            raise UserError(
                f"{e.path} is not an image (extension {ext or 'none'}); "
                f"expected one of {sorted(IMAGE_EXTS)}: move it out of the dataset folder"
            )
        out.append((e.path, e.stat()))
    return out


def _decode(path, image_size: int | None = None) -> np.ndarray:
    try:
        with Image.open(path) as im:
            rgb = im.convert("RGB")
    except Exception as e:  # PIL raises many kinds for broken files
        raise UserError(
            f"cannot read image {path} ({type(e).__name__}: {e}); re-download or remove it"
        ) from None
    if image_size is not None and rgb.size != (image_size, image_size):
        rgb = rgb.resize((image_size, image_size), Image.Resampling.BILINEAR)
    return np.asarray(rgb)


def decode_images(paths: list, image_size: int | None = None, size_hint: str = "") -> torch.Tensor:
    """Decode images to one uint8 tensor [N, 3, H, W], each resized to ``image_size`` x ``image_size`` if given.

    Without ``image_size`` all images must have the same size; ``size_hint`` ends the error that says otherwise.
    """
    if not paths:
        raise ValueError("no images to decode")
    with ThreadPoolExecutor(min(8, (os.cpu_count() or 1) * 2)) as pool:
        arrays = list(pool.map(partial(_decode, image_size=image_size), paths, chunksize=256))
    shape = arrays[0].shape
    for p, a in zip(paths, arrays):
        if a.shape != shape:
            raise UserError(
                f"image {p} is {a.shape[1]}x{a.shape[0]} but the first image of its split "
                f"({paths[0]}) is {shape[1]}x{shape[0]}: every image of a split must have the same size{size_hint}"
            )
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def scan_folders(folders) -> list[tuple[str, os.stat_result]]:
    return [entry for folder in folders for entry in _scan(str(folder))]


def listing_fingerprint(entries: list[tuple[str, os.stat_result]], base: Path, labels=None) -> str:
    """Identifies a file listing by names relative to ``base``, sizes, modification times and, if given, labels."""
    h = hashlib.sha256(f"v{CACHE_VERSION}".encode())
    prefix = str(base) + os.sep
    for i, (p, st) in enumerate(entries):
        rel = p[len(prefix) :] if p.startswith(prefix) else os.path.relpath(p, base)
        line = f"{rel}\0{st.st_size}\0{st.st_mtime_ns}"
        if labels is not None:
            line += "\0{}\0{}".format(*labels[i])
        h.update(f"{line}\n".encode())
    return h.hexdigest()


def _cache_path(base: Path, key: str) -> Path:
    local = base / ".debiaslab_cache"
    if os.access(base, os.W_OK):
        return local / f"{key}.pt"
    digest = hashlib.sha256(str(base.resolve()).encode()).hexdigest()[:16]
    root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "debiaslab"
    return root / digest / f"{key}.pt"


def _save_cache(cache: Path, fingerprint: str, split: Split, checksum: str) -> None:
    atomic_torch_save(
        {
            "version": CACHE_VERSION,
            "fingerprint": fingerprint,
            "checksum": checksum,
            "images": split.images,
            "targets": split.targets,
            "biases": split.biases,
        },
        cache,
    )


def write_cache(folders, base: Path, key: str, split: Split) -> str:
    """Store ``split`` (whose samples are in the reader's file order) as the cache of ``folders``."""
    checksum = split.checksum()
    _save_cache(
        _cache_path(base, key), listing_fingerprint(scan_folders(folders), base), split, checksum
    )
    return checksum


def store_cache(cache: Path, fingerprint: str, split: Split, checksum: str) -> None:
    """Cache a split a reader just decoded; a cache that cannot be written is only a warning."""
    try:
        _save_cache(cache, fingerprint, split, checksum)
    except OSError as e:
        warnings.warn(
            f"could not write the cache {cache} ({e}); the next run decodes the images again",
            stacklevel=3,
        )


def read_cache(cache: Path, fingerprint: str) -> tuple[Split, str] | None:
    """The cached split and its checksum, or None when the cache is missing, stale or unreadable."""
    if not cache.exists():
        return None
    try:
        blob = torch.load(cache, map_location="cpu", weights_only=True)
        if blob.get("version") != CACHE_VERSION or blob["fingerprint"] != fingerprint:
            return None
        split = Split(blob["images"], blob["targets"], blob["biases"])
    except Exception:
        warnings.warn(f"ignoring unreadable cache {cache}; rebuilding it", stacklevel=3)
        return None
    if split.checksum() != blob["checksum"]:
        warnings.warn(
            f"cache {cache} does not match its checksum (damaged); rebuilding it from the images",
            stacklevel=3,
        )
        return None
    return split, blob["checksum"]


def read_split(
    folders: list[Path], base: Path, key: str, use_cache: bool = True
) -> tuple[Split, str]:
    """Read one split made of the images under ``folders``; returns the split and its checksum."""
    entries = scan_folders(folders)
    if not entries:
        raise UserError(
            f"no images found under {', '.join(map(str, folders))}; "
            "check --data_dir / --percent (the folder exists but is empty)"
        )
    cache = _cache_path(base, key)
    fingerprint = listing_fingerprint(entries, base)
    cached = read_cache(cache, fingerprint) if use_cache else None
    if cached is not None:
        return cached
    paths = [Path(p) for p, _ in entries]
    labels = torch.tensor([parse_labels(p.name) for p in paths], dtype=torch.int64)
    split = Split(decode_images(paths), labels[:, 0].contiguous(), labels[:, 1].contiguous())
    checksum = split.checksum()
    if use_cache:
        store_cache(cache, fingerprint, split, checksum)
    return split, checksum


def cifar10c_folder(corruption_type: int) -> str:
    """Corrupted CIFAR-10's folder: type 0 is the paper's ``cifar10c``; type 1 lives beside it in ``cifar10c_type1``."""
    return "cifar10c" if corruption_type == 0 else f"cifar10c_type{corruption_type}"


BUILD_HINTS = {
    "cmnist": "debiaslab data build cmnist",
    "cifar10c": "debiaslab data build cifar10c",
    "cifar10c_type1": "debiaslab data build cifar10c --type 1",
}


def dataset_root(data_dir, dataset: str) -> Path:
    """``<data_dir>/<dataset>``, or a one-line error saying what is missing and how to get it."""
    data_dir = Path(data_dir)
    root = data_dir / dataset
    hint = (
        f" (build it there with: {BUILD_HINTS[dataset]} --out {data_dir})"
        if dataset in BUILD_HINTS
        else ""
    )
    if data_dir.exists() and not data_dir.is_dir():
        raise UserError(
            f"--data_dir {data_dir} is a file, not a folder; point it at the folder that holds '{dataset}/'"
        )
    if not data_dir.is_dir():
        raise UserError(
            f"--data_dir {data_dir} does not exist; point it at the folder that holds '{dataset}/'{hint}"
        )
    if not root.is_dir():
        if (
            data_dir.name == dataset
            or (data_dir / "align").is_dir()
            or data_dir.name.endswith("pct")
        ):
            raise UserError(
                f"--data_dir {data_dir} looks like the dataset folder itself; pass the folder that "
                f"holds '{dataset}/' (e.g. --data_dir "
                f"{data_dir.parent if data_dir.name == dataset else data_dir.parent.parent})"
            )
        have = sorted(
            p.name for p in data_dir.iterdir() if p.is_dir() and not p.name.startswith(".")
        )
        raise UserError(
            f"{root} does not exist: --data_dir {data_dir} has no '{dataset}' folder "
            f"(it has: {', '.join(have[:8]) or 'no folders'}); check --dataset, or pass the folder that contains "
            f"'{dataset}/' with --data_dir{hint}"
        )
    return root


def split_folders(data_dir: Path, dataset: str, percent: str) -> dict[str, list[Path]]:
    """Where each split of a reference-layout dataset lives, with clear errors when it does not."""
    root = dataset_root(data_dir, dataset)
    pct_dir = root / percent
    if not pct_dir.is_dir() and (root / f"{percent}pct").is_dir():
        pct_dir = root / f"{percent}pct"  # --percent 0.5 means the 0.5pct folder
    if not pct_dir.is_dir():
        have = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name.endswith("pct"))
        raise UserError(
            f"--percent {percent} not found: {pct_dir} does not exist; "
            f"available under {root}: {', '.join(have) or 'none'}"
        )
    train = [pct_dir / "align"]
    conflict = [d for d in (pct_dir / "conflict", pct_dir / "conlict") if d.is_dir()]
    if not train[0].is_dir():
        raise UserError(
            f"{train[0]} does not exist: a reference-layout training split needs align/ and conflict/ folders"
        )
    if not conflict:
        raise UserError(
            f"{pct_dir} has no conflict/ (or conlict/) folder: the dataset looks incomplete; re-download or rebuild it"
        )
    train += conflict
    valid = pct_dir / "valid" if (pct_dir / "valid").is_dir() else root / "valid"
    test = root / "test"
    for name, d in (("valid", valid), ("test", test)):
        if not d.is_dir():
            raise UserError(
                f"the {name} split is missing: neither {pct_dir / name} nor {root / name} exists"
            )
    return {"train": train, "valid": [valid], "test": [test]}


# Classes (and bias values) of the datasets whose label sets are known.
KNOWN_CLASSES = {"cmnist": 10, "cifar10c": 10, "cifar10c_type1": 10, "bffhq": 2}


def _check_label_range(
    splits: dict[str, Split], folders: dict[str, list[Path]], dataset: str
) -> None:
    n = KNOWN_CLASSES.get(dataset)
    if n is None:
        return
    for name, split in splits.items():
        for kind, labels in (("target", split.targets), ("bias", split.biases)):
            bad = labels[(labels < 0) | (labels >= n)]
            if len(bad):
                pattern = f"*_{int(bad[0])}_*" if kind == "target" else f"*_*_{int(bad[0])}.*"
                raise UserError(
                    f"{kind} label {int(bad[0])} in {folders[name][0]} is out of range: {dataset} has {n} classes "
                    f"(0..{n - 1}); fix or remove the files named {pattern}"
                )


def load_reference(data_dir, dataset: str, percent: str, use_cache: bool = True) -> DatasetBundle:
    """Load train/valid/test of a reference-layout dataset into memory (uint8 tensors)."""
    folders = split_folders(Path(data_dir), dataset, percent)
    root = Path(data_dir) / dataset
    # "source" is relative to the data root (--data_dir): a record names no folder of a machine
    splits, info = {}, {"source": dataset, "percent": percent}
    for name, dirs in folders.items():
        key = "test" if name == "test" else f"{percent}_{name}"
        splits[name], info[f"sha256_{name}"] = read_split(dirs, root, key, use_cache)
    _check_label_range(splits, folders, dataset)
    num_classes = int(max(int(s.targets.max()) for s in splits.values())) + 1
    missing = sorted(set(range(num_classes)) - set(splits["train"].targets.unique().tolist()))
    if missing:
        raise UserError(
            f"classes {missing} appear in valid/test but not in the training split of {root / percent}; "
            "the dataset is incomplete or its labels are inconsistent"
        )
    shapes = {name: tuple(s.images.shape[1:]) for name, s in splits.items()}
    if len(set(shapes.values())) != 1:
        raise UserError(
            f"splits of {root} have different image sizes {shapes}; every split must have the same size"
        )
    return DatasetBundle(
        dataset, splits["train"], splits["valid"], splits["test"], num_classes, info
    )


def _save_png(args):
    array, path = args
    Image.fromarray(array).save(path, compress_level=1)


def write_split(split: Split, folder: Path, layout: str, start_id: int = 0) -> list[Path]:
    """Write ``split`` as ``<id>_<t>_<b>.png`` files; returns the paths in sample order.

    layout: ``"train"`` (align/<t>/ and conflict/<t>/ under ``folder``), ``"class"`` (``<t>/``
    sub-folders) or ``"flat"``.
    """
    folder = Path(folder)
    arrays = split.images.permute(0, 2, 3, 1).numpy()
    if arrays.shape[-1] == 1:
        arrays = arrays[..., 0]
    paths = []
    for i, (t, b) in enumerate(zip(split.targets.tolist(), split.biases.tolist())):
        if layout == "train":
            sub = folder / ("align" if t == b else "conflict") / str(t)
        elif layout == "class":
            sub = folder / str(t)
        else:
            sub = folder
        paths.append(sub / f"{start_id + i}_{t}_{b}.png")
    folders = {p.parent for p in paths}
    if layout == "train":  # both halves, even one without images: the layout reads them both
        folders |= {folder / "align", folder / "conflict"}
    for d in sorted(folders):
        d.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(min(8, (os.cpu_count() or 1) * 2)) as pool:
        list(pool.map(_save_png, zip(arrays, paths), chunksize=256))
    return paths
