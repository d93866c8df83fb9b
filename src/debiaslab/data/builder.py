"""Writing a built dataset: the reference folder layout, the decode cache and ``manifest.json``.

Shared by every builder (Colored MNIST, Corrupted CIFAR-10). The dataset is written into a staging
folder beside its destination and renamed into place only when complete, so an interrupted build
never leaves a folder that looks like a dataset.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import torch

from debiaslab.data.colored import percent_to_rho
from debiaslab.data.reference import scan_folders, write_cache, write_split
from debiaslab.data.splits import DatasetBundle, Split
from debiaslab.errors import UserError
from debiaslab.io import atomic_write_json
from debiaslab.version import __version__


def pct_name(pct: float) -> str:
    """0.5 -> '0.5pct', 1.0 -> '1pct' (the reference folder names)."""
    return f"{pct:g}pct"


def parse_pct(text: str) -> float:
    t = str(text).strip().removesuffix("pct")
    try:
        v = float(t)
    except ValueError:
        raise UserError(
            f"percent {text!r} is not a number; use e.g. 0.5, 1, 2, 5 or '0.5pct'"
        ) from None
    if not 0.0 < v < 100.0:
        raise UserError(f"percent {text!r} must be strictly between 0 and 100")
    return v


def write_with_cache(
    split: Split, folder: Path, layout: str, base: Path, key: str, start_id: int
) -> str:
    """Write a split as PNGs and its decode cache (in the reader's file order); returns its sha256."""
    paths = write_split(split, folder, layout, start_id)
    order = {str(p): i for i, p in enumerate(paths)}
    folders = [folder / "align", folder / "conflict"] if layout == "train" else [folder]
    perm = torch.tensor([order[p] for p, _ in scan_folders(folders)])
    reordered = Split(split.images[perm], split.targets[perm], split.biases[perm])
    return write_cache(folders, base, key, reordered)


def write_dataset(
    name: str,
    out: Path,
    manifest: dict,
    test: Split,
    build: Callable[[float], DatasetBundle],
    percents: Iterable[float],
    n_train_source: int,
    force: bool = False,
    valid_layout: str = "flat",
    progress=print,
) -> dict:
    """Write ``<out>/<name>``: ``test/`` once, then ``<pct>/{align,conflict,valid}`` for each ratio.

    ``build(pct)`` returns the bundle of one ratio; ``manifest`` (parameters, source) is completed
    with counts and checksums and written last. Test ids follow the ``n_train_source`` training ids.
    """
    root = Path(out) / name
    if root.exists() and any(root.iterdir()):
        if not force:
            raise UserError(
                f"{root} already exists and is not empty; pass --force to replace it or choose another --out"
            )
        shutil.rmtree(root)
    staging = Path(out) / f".{name}.partial"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    t0 = time.time()
    manifest = {"dataset": name, "builder": f"debiaslab {__version__}", **manifest, "splits": {}}
    sha = write_with_cache(test, staging / "test", "class", staging, "test", n_train_source)
    manifest["splits"]["test"] = {"n": len(test), "sha256": sha}
    progress(f"test: {len(test)} images")
    for pct in percents:
        b = build(pct)
        pname = pct_name(pct)
        tr = write_with_cache(b.train, staging / pname, "train", staging, f"{pname}_train", 0)
        va = write_with_cache(
            b.valid,
            staging / pname / "valid",
            valid_layout,
            staging,
            f"{pname}_valid",
            len(b.train),
        )
        counts = b.counts()
        manifest["splits"][pname] = {
            "rho": percent_to_rho(pct),
            "train": {**counts["train"], "sha256": tr},
            "valid": {**counts["valid"], "sha256": va},
        }
        progress(
            f"{pname}: train {counts['train']['n']} ({counts['train']['conflicting']} conflicting), "
            f"valid {counts['valid']['n']} ({counts['valid']['conflicting']} conflicting)"
        )
    manifest["build_seconds"] = round(time.time() - t0, 1)
    atomic_write_json(staging / "manifest.json", manifest)
    root.parent.mkdir(parents=True, exist_ok=True)
    if root.exists():
        root.rmdir()
    staging.rename(root)
    # the cache fingerprints hold paths relative to the dataset root, so they survive the rename
    return json.loads((root / "manifest.json").read_text())
