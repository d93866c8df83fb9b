"""Readers for datasets that are not in the reference layout: a CSV manifest, an image folder, BAR.

Every reader returns a :class:`DatasetBundle` of uint8 [N, 3, H, W] images. Images are decoded
once with PIL (converted to RGB) and, when ``image_size`` is given, resized to
``image_size`` x ``image_size`` with bilinear (antialiased) filtering: a plain resize, the aspect
ratio is not kept and nothing is cropped. Without ``image_size`` every image must have the same size.

When a dataset has no validation split, a seeded, class-stratified ``valid_fraction`` of the
training images is held out as validation (``info["valid_from_train"]``).

Each decoded split is cached like the reference layout's (``.debiaslab_cache`` next to the data,
or under ``~/.cache/debiaslab`` when that folder is read-only). The cache key holds the split name
and the image size; its fingerprint covers every file's path, size and modification time and
every label, so renaming, touching or relabelling a file (editing the CSV) rebuilds the split.
"""

from __future__ import annotations

import csv
import os
import re
import warnings
from dataclasses import dataclass
from itertools import repeat
from pathlib import Path

import torch

from debiaslab.data.reference import (
    JUNK_NAMES,
    _cache_path,
    _scan,
    decode_images,
    listing_fingerprint,
    read_cache,
    store_cache,
)
from debiaslab.data.splits import DatasetBundle, Split
from debiaslab.errors import UserError

DATA_SEED = 0  # seeds the valid hold-out of datasets without one, the same for every training seed

SPLITS = ("train", "valid", "test")
BAR_CLASSES = ("climbing", "diving", "fishing", "vaulting", "racing", "throwing")
# File-name prefixes (lower case, spaces read as underscores) -> BAR class index.
_BAR_ACTIONS = {
    **{name: i for i, name in enumerate(BAR_CLASSES)},
    "pole_vaulting": 3,
    "polevaulting": 3,
}
_BAR_NAME = re.compile(r"^(?P<action>.+)_(?P<n>\d+)$")
_IMAGE_SIZE_HINT = "pass --image_size N to resize every image to N x N"


@dataclass
class _Listing:
    """The files of one split in sample order, with their labels (known before decoding)."""

    entries: list[tuple[str, os.stat_result]]
    targets: list[int]
    biases: list[int] | None


# ----------------------------------------------------------------------------- decoding and cache


def decode_resized(paths: list[str], image_size: int | None) -> torch.Tensor:
    """Decode images to one uint8 tensor [N, 3, H, W], resized to ``image_size`` x ``image_size`` if given."""
    return decode_images(paths, image_size, size_hint=f"; {_IMAGE_SIZE_HINT}")


def _load_split(
    listing: _Listing, base: Path, key: str, image_size: int | None, use_cache: bool
) -> tuple[Split, str]:
    """Decode one split, or read it from its cache when the fingerprint matches; returns it and its checksum."""
    cache = _cache_path(base, key)
    labels = list(zip(listing.targets, listing.biases or repeat(None)))
    fingerprint = listing_fingerprint(listing.entries, base, labels)
    cached = read_cache(cache, fingerprint) if use_cache else None
    if cached is not None:
        return cached
    biases = None if listing.biases is None else torch.tensor(listing.biases, dtype=torch.int64)
    split = Split(
        decode_resized([p for p, _ in listing.entries], image_size),
        torch.tensor(listing.targets, dtype=torch.int64),
        biases,
    )
    checksum = split.checksum()
    if use_cache:
        store_cache(cache, fingerprint, split, checksum)
    return split, checksum


# ----------------------------------------------------------------------------- bundle assembly


def _subset(split: Split, index: torch.Tensor) -> Split:
    return Split(
        split.images[index],
        split.targets[index],
        None if split.biases is None else split.biases[index],
    )


def hold_out(split: Split, fraction: float, seed: int) -> tuple[Split, Split]:
    """(train, valid): ``round(fraction * n_c)`` images of each class c (at least 1 and at most
    n_c - 1 when n_c >= 2, none when n_c == 1) move to valid; both keep the original order."""
    if not 0 < fraction < 1:
        raise UserError(
            f"--valid_fraction {fraction} must be between 0 and 1 (exclusive), e.g. 0.1"
        )
    g = torch.Generator().manual_seed(seed)
    picked = []
    for c in split.targets.unique().tolist():
        members = (split.targets == c).nonzero().flatten()
        n = len(members)
        k = min(n - 1, max(1, round(fraction * n))) if n >= 2 else 0
        picked.append(members[torch.randperm(n, generator=g)[:k]])
    valid = torch.cat(picked).sort().values
    if len(valid) == 0:
        raise UserError(
            "cannot hold out a validation split: every class has a single training image; "
            "add more training images or provide a valid split"
        )
    keep = torch.ones(len(split), dtype=torch.bool)
    keep[valid] = False
    return _subset(split, keep.nonzero().flatten()), _subset(split, valid)


def _check_image_size(image_size) -> None:
    if image_size is not None and (not isinstance(image_size, int) or image_size < 1):
        raise UserError(
            f"--image_size {image_size!r} must be a positive integer (e.g. --image_size 64)"
        )


def _bundle(
    name: str,
    base: Path,
    where: Path,
    key_prefix: str,
    listings: dict[str, _Listing],
    num_classes: int,
    info: dict,
    image_size: int | None,
    valid_fraction: float,
    seed: int,
    use_cache: bool,
) -> DatasetBundle:
    """Load (or decode) the listed splits, hold out valid when missing, and check they fit together.

    ``where`` (the CSV or the folder, as given) is what an error names; ``info["source"]`` is what
    the run records, a path relative to the data root.
    """
    classes = info.get("classes")
    seen = set(listings["train"].targets)
    for split_name, listing in listings.items():
        unseen = sorted(set(listing.targets) - seen)
        if unseen:
            shown = [classes[c] for c in unseen] if classes else unseen
            raise UserError(
                f"{where}: classes {shown} appear in the {split_name} split but have no "
                "training image; add training images of those classes or remove them"
            )
    splits, checksums = {}, {}
    size_tag = f"{image_size}px" if image_size else "native"
    for split_name, listing in listings.items():
        splits[split_name], checksums[split_name] = _load_split(
            listing, base, f"{key_prefix}_{split_name}_{size_tag}", image_size, use_cache
        )
    if "valid" not in splits:
        splits["train"], splits["valid"] = hold_out(splits["train"], valid_fraction, seed)
        checksums.update(train=splits["train"].checksum(), valid=splits["valid"].checksum())
        info["valid_from_train"] = {"fraction": valid_fraction, "seed": seed}
    sizes = {n: f"{s.images.shape[3]}x{s.images.shape[2]}" for n, s in splits.items()}
    if len(set(sizes.values())) > 1:
        raise UserError(
            f"the splits of {where} have different image sizes {sizes}; {_IMAGE_SIZE_HINT}"
        )
    info.update({f"sha256_{n}": checksums[n] for n in SPLITS})
    return DatasetBundle(name, splits["train"], splits["valid"], splits["test"], num_classes, info)


# ----------------------------------------------------------------------------- CSV manifest


def _read_csv(csv_path: Path) -> tuple[dict[str, int], list[tuple[int, list[str]]]]:
    """({column: index}, [(line number, cells)]) of a CSV with a header row; blank rows are skipped."""
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = [c.strip().lower() for c in next(reader, [])]
            rows = [
                (reader.line_num, [c.strip() for c in row])
                for row in reader
                if any(c.strip() for c in row)
            ]
    except (UnicodeDecodeError, csv.Error) as e:
        raise UserError(
            f"cannot read {csv_path} as a CSV file ({e}); save it as UTF-8 CSV with a header row"
        ) from None
    fix = "the first row must name the columns: path,target and optionally bias,split"
    for col in ("path", "target"):
        if col not in header:
            raise UserError(
                f"{csv_path} has no '{col}' column (header: {','.join(header) or 'empty'}); {fix}"
            )
    dupes = sorted({c for c in header if c and header.count(c) > 1})
    if dupes:
        raise UserError(f"{csv_path}: the header names the column(s) {dupes} more than once; {fix}")
    for line, row in rows:
        if len(row) != len(header):
            raise UserError(
                f"{csv_path}, line {line}: {len(row)} cells but the header has {len(header)} columns; "
                "fix the row (quote cells that contain commas)"
            )
    return {c: i for i, c in enumerate(header)}, rows


def _label_indices(
    values: list[str], lines: list[int], column: str, csv_path: Path
) -> tuple[list[int], list[str] | None]:
    """Integer labels as they are, or (if any value is not an integer) class names -> sorted indices."""
    try:
        ints = [int(v) for v in values]
    except ValueError:
        names = sorted(set(values))
        index = {n: i for i, n in enumerate(names)}
        return [index[v] for v in values], names
    for line, v in zip(lines, ints):
        if v < 0:
            raise UserError(
                f"{csv_path}, line {line}: {column} {v} is negative; integer labels must be 0, 1, 2, ..."
            )
    return ints, None


def load_manifest(
    csv_path,
    image_size: int | None = None,
    valid_fraction: float = 0.1,
    seed: int = 0,
    use_cache: bool = True,
) -> DatasetBundle:
    """Load the images listed in a CSV manifest with a header row and the columns

    - ``path`` (required): image file; relative paths are relative to the CSV's folder.
    - ``target`` (required): class, an integer or a name; if any value is not an integer, the
      names are mapped to 0, 1, ... in sorted order (``info["classes"]``).
    - ``bias`` (optional): bias label, the class the bias attribute is aligned with: an integer
      below the number of classes, or a class name; other names are mapped to 0, 1, ... in
      sorted order (``info["bias_classes"]``). No empty cells. Without it every split's
      ``biases`` is None.
    - ``split`` (optional): ``train``, ``valid`` or ``test`` (any case). Test rows are required,
      so a manifest without this column is rejected; without valid rows, valid is held out from train.
    """
    _check_image_size(image_size)
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise UserError(
            f"manifest {csv_path} {'is a folder' if csv_path.is_dir() else 'does not exist'}; "
            "pass a CSV file with the columns path,target[,bias][,split]"
        )
    columns, rows = _read_csv(csv_path)
    if not rows:
        raise UserError(f"{csv_path} has a header but no rows; add one row per image")
    folder = csv_path.parent.absolute()
    lines = [line for line, _ in rows]

    def cells(col: str) -> list[str]:
        values = [row[columns[col]] for _, row in rows]
        for line, v in zip(lines, values):
            if not v:
                raise UserError(
                    f"{csv_path}, line {line}: the {col} cell is empty; every row needs a {col}"
                )
        return values

    split_of = ["train"] * len(rows)
    if "split" in columns:
        split_of = [row[columns["split"]].lower() for _, row in rows]
        for line, (_, row), value in zip(lines, rows, split_of):
            if value not in SPLITS:
                raise UserError(
                    f"{csv_path}, line {line}: split {row[columns['split']]!r} is not one of "
                    "train, valid, test; fix the value"
                )
    for needed in ("test", "train"):
        if needed not in split_of:
            raise UserError(
                f"{csv_path} has no rows with split={needed}; the manifest needs rows with split={needed} "
                "(a 'split' column with the values train, valid or test)"
            )
    targets, classes = _label_indices(cells("target"), lines, "target", csv_path)
    biases, bias_classes = (None, None)
    if "bias" in columns:
        biases, bias_classes = _label_indices(cells("bias"), lines, "bias", csv_path)
        if classes and bias_classes and set(bias_classes) <= set(classes):
            # bias values that name classes point to those classes (the bias-aligned class)
            biases = [classes.index(bias_classes[b]) for b in biases]
            bias_classes = None

    entries, first_line = [], {}
    for line, raw in zip(lines, cells("path")):
        path = os.path.normpath(folder / raw)
        if path in first_line:
            raise UserError(
                f"{csv_path}, lines {first_line[path]} and {line} both list {raw}; remove the duplicate row"
            )
        first_line[path] = line
        try:
            entries.append((path, os.stat(path)))
        except OSError:
            raise UserError(
                f"{csv_path}, line {line}: image {raw} not found at {path} (relative paths are relative "
                "to the CSV's folder); fix the path or remove the row"
            ) from None

    listings = {}
    for split_name in SPLITS:
        rows_of = [i for i, s in enumerate(split_of) if s == split_name]
        if rows_of:
            listings[split_name] = _Listing(
                [entries[i] for i in rows_of],
                [targets[i] for i in rows_of],
                None if biases is None else [biases[i] for i in rows_of],
            )
    info = {"source": csv_path.name}  # relative to the CSV's folder, the root of its image paths
    if classes:
        info["classes"] = classes
    if bias_classes:
        info["bias_classes"] = bias_classes
    num_classes = len(classes) if classes else max(targets) + 1
    return _bundle(
        csv_path.stem,
        folder,
        csv_path,
        f"manifest_{csv_path.stem}",
        listings,
        num_classes,
        info,
        image_size,
        valid_fraction,
        seed,
        use_cache,
    )


# ----------------------------------------------------------------------------- image folder


def _class_folders(folder: Path) -> list[str]:
    """Sorted names of the class folders in ``folder``; a stray file there is an error."""
    names = []
    for p in sorted(folder.iterdir(), key=lambda p: p.name):
        if p.is_dir():
            if not p.name.startswith("."):
                names.append(p.name)
        elif p.name.lower() in JUNK_NAMES or p.name.startswith("._"):
            warnings.warn(f"skipping {p} (not an image)", stacklevel=3)
        else:
            raise UserError(
                f"{p} is not inside a class folder: images go in {folder}/<class>/; move or remove it"
            )
    if not names:
        raise UserError(f"{folder} has no class folders; expected {folder}/<class>/<image files>")
    return names


def load_image_folder(
    root,
    image_size: int | None = None,
    valid_fraction: float = 0.1,
    seed: int = 0,
    use_cache: bool = True,
) -> DatasetBundle:
    """Load a torchvision-ImageFolder-style tree: ``root/{train,test}/<class>/<images>`` and
    optionally ``root/valid/<class>/...`` (otherwise valid is held out from train).

    Class folder names of ``train`` are sorted and mapped to 0, 1, ... (``info["classes"]``), the
    same mapping for every split. File names carry no bias labels here: ``biases`` is None.
    """
    _check_image_size(image_size)
    root = Path(root)
    for needed in ("train", "test"):
        if not (root / needed).is_dir():
            raise UserError(
                f"{root / needed} does not exist: an image folder dataset needs "
                f"{root}/train/<class>/ and {root}/test/<class>/ (valid/ is optional)"
            )
    classes = _class_folders(root / "train")
    index = {c: i for i, c in enumerate(classes)}
    listings = {}
    for split_name in SPLITS:
        folder = root / split_name
        if not folder.is_dir():
            continue
        entries, targets = [], []
        for cls in _class_folders(folder):
            if cls not in index:
                raise UserError(
                    f"{folder / cls}: class '{cls}' has no folder in {root / 'train'}; "
                    "every class needs training images (add them or remove the folder)"
                )
            found = _scan(str(folder / cls))
            if not found and split_name == "train":
                raise UserError(
                    f"{folder / cls} has no images; add training images of '{cls}' or remove the folder"
                )
            entries += found
            targets += [index[cls]] * len(found)
        if not entries:
            raise UserError(
                f"no images under {folder}/<class>/; add images or remove the empty folder"
            )
        listings[split_name] = _Listing(entries, targets, None)
    info = {"source": ".", "classes": classes}  # the data root is the folder itself
    return _bundle(
        root.resolve().name,
        root,
        root,
        "imagefolder",
        listings,
        len(classes),
        info,
        image_size,
        valid_fraction,
        seed,
        use_cache,
    )


# ----------------------------------------------------------------------------- BAR


def _bar_label(path: str) -> int:
    m = _BAR_NAME.match(Path(path).stem)
    action = _BAR_ACTIONS.get(m.group("action").lower().replace(" ", "_")) if m else None
    if action is None:
        raise UserError(
            f"{path} is not named like a BAR image '<action>_<n>.<ext>' with action one of "
            f"{', '.join(BAR_CLASSES)} (or pole_vaulting); rename or remove it"
        )
    return action


def load_bar(
    root,
    image_size: int | None = 224,
    valid_fraction: float = 0.1,
    seed: int = 0,
    use_cache: bool = True,
) -> DatasetBundle:
    """Load BAR (Biased Action Recognition, Nam et al. 2020) from ``root/train/`` and ``root/test/``.

    Files are named ``<action>_<n>.<ext>`` (sub-folders are searched too); the action prefix gives
    the class: climbing, diving, fishing, vaulting (also ``pole_vaulting``, ``polevaulting``,
    ``pole vaulting``; any case), racing, throwing. BAR has no per-image bias labels, so every
    split's ``biases`` is None; its test set is bias-conflicting by construction
    (``info["test_all_bias_conflicting"]``). Valid is held out from train. The images differ in
    size and are resized to ``image_size`` x ``image_size``.
    """
    _check_image_size(image_size)
    root = Path(root)
    listings = {}
    for split_name in ("train", "test"):
        folder = root / split_name
        if not folder.is_dir():
            raise UserError(
                f"{folder} does not exist: BAR needs {root}/train/ and {root}/test/ "
                "with files named <action>_<n>.jpg (as in the BAR download)"
            )
        entries = _scan(str(folder))
        if not entries:
            raise UserError(f"no images found under {folder}; is the BAR download complete?")
        listings[split_name] = _Listing(entries, [_bar_label(p) for p, _ in entries], None)
    info = {
        # relative to the data root, the folder that holds it (--data_dir)
        "source": Path(os.path.abspath(root)).name,
        "classes": list(BAR_CLASSES),
        "test_all_bias_conflicting": True,
        "bias_labels": "unavailable",
    }
    return _bundle(
        "bar",
        root,
        root,
        "bar",
        listings,
        len(BAR_CLASSES),
        info,
        image_size,
        valid_fraction,
        seed,
        use_cache,
    )
