"""Colored MNIST builder (LfF protocol; see docs/datasets.md and datasets.md section 2).

From MNIST's 60k training digits, a seeded 5k are held out as a validation split that is biased
like the training split; the other 55k form the training split. MNIST's 10k test digits form the
unbiased test split (rho = 0.1, every colour equally likely). The test split is built once with its
own generator and shared by every percentage, as in the reference layout.
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import torch

from debiaslab import UserError, __version__
from debiaslab.data.colored import PALETTE, SEVERITY_SIGMA, bias_labels, colorize, percent_to_rho, split_indices
from debiaslab.data.reference import scan_folders, write_cache, write_split
from debiaslab.data.splits import DatasetBundle, Split
from debiaslab.io import atomic_write_json

PERCENTS = (0.5, 1.0, 2.0, 5.0)
VALID_SIZE = 5000


def pct_name(pct: float) -> str:
    """0.5 -> '0.5pct', 1.0 -> '1pct' (the reference folder names)."""
    return f"{pct:g}pct"


def parse_pct(text: str) -> float:
    t = str(text).strip().removesuffix("pct")
    try:
        v = float(t)
    except ValueError:
        raise UserError(f"percent {text!r} is not a number; use e.g. 0.5, 1, 2, 5 or '0.5pct'") from None
    if not 0.0 < v < 100.0:
        raise UserError(f"percent {text!r} must be strictly between 0 and 100")
    return v


def _generator(seed: int, stream: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + stream)


def colored_split(gray: torch.Tensor, targets: torch.Tensor, rho: float, sigma: float,
                  generator: torch.Generator, num_classes: int = 10, palette: torch.Tensor = PALETTE) -> Split:
    biases = bias_labels(targets, rho, num_classes, generator)
    return Split(colorize(gray, biases, sigma, generator, palette), targets.clone(), biases)


def build_test(mnist: dict, seed: int, severity: int) -> Split:
    return colored_split(mnist["x_test"], mnist["y_test"], 0.1, SEVERITY_SIGMA[severity], _generator(seed, 0))


def build_cmnist(mnist: dict, pct: float, seed: int = 0, severity: int = 4, valid_size: int = VALID_SIZE,
                 test: Split | None = None) -> DatasetBundle:
    """Build one Colored MNIST ratio in memory."""
    if severity not in SEVERITY_SIGMA:
        raise UserError(f"--severity {severity} must be one of 1..5")
    sigma = SEVERITY_SIGMA[severity]
    # one stream per percentage, so each ratio is reproducible on its own
    g = _generator(seed, 1 + int(round(pct * 1000)))
    train_idx, valid_idx = split_indices(len(mnist["x_train"]), valid_size, _generator(seed, 1))
    rho = percent_to_rho(pct)
    train = colored_split(mnist["x_train"][train_idx], mnist["y_train"][train_idx], rho, sigma, g)
    valid = colored_split(mnist["x_train"][valid_idx], mnist["y_train"][valid_idx], rho, sigma, g)
    test = test if test is not None else build_test(mnist, seed, severity)
    info = {"percent": pct_name(pct), "seed": seed, "severity": severity, "sigma": sigma}
    return DatasetBundle("cmnist", train, valid, test, 10, info)


def _write_with_cache(split: Split, folder: Path, layout: str, base: Path, key: str, start_id: int) -> str:
    """Write a split as PNGs and its decode cache (in the reader's file order)."""
    paths = write_split(split, folder, layout, start_id)
    order = {str(p): i for i, p in enumerate(paths)}
    folders = [folder / "align", folder / "conflict"] if layout == "train" else [folder]
    perm = torch.tensor([order[p] for p, _ in scan_folders(folders)])
    reordered = Split(split.images[perm], split.targets[perm], split.biases[perm])
    return write_cache(folders, base, key, reordered)


def write_cmnist(mnist: dict, provenance: dict, out: Path, percents=PERCENTS, seed: int = 0,
                 severity: int = 4, valid_size: int = VALID_SIZE, force: bool = False, progress=print) -> dict:
    """Write Colored MNIST in the reference layout under ``out/cmnist`` plus caches and a manifest."""
    root = Path(out) / "cmnist"
    manifest_path = root / "manifest.json"
    if root.exists() and any(root.iterdir()):
        if not force:
            raise UserError(f"{root} already exists and is not empty; pass --force to replace it or choose another --out")
        shutil.rmtree(root)
    staging = Path(out) / ".cmnist.partial"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    t0 = time.time()
    test = build_test(mnist, seed, severity)
    manifest = {
        "dataset": "cmnist", "protocol": "LfF Colored MNIST (Nam et al. 2020)", "builder": f"debiaslab {__version__}",
        "seed": seed, "severity": severity, "sigma": SEVERITY_SIGMA[severity], "palette": PALETTE.tolist(),
        "valid_size": valid_size, "test_rho": 0.1, "source": provenance, "splits": {},
    }
    n_test = len(mnist["x_train"])  # test ids follow the training ids, so ids are unique in the dataset
    manifest["splits"]["test"] = {"n": len(test), "sha256": _write_with_cache(test, staging / "test", "class", staging, "test", n_test)}
    progress(f"test: {len(test)} images")
    for pct in percents:
        b = build_cmnist(mnist, pct, seed, severity, valid_size, test=test)
        name = pct_name(pct)
        tr = _write_with_cache(b.train, staging / name, "train", staging, f"{name}_train", 0)
        va = _write_with_cache(b.valid, staging / name / "valid", "flat", staging, f"{name}_valid", len(b.train))
        counts = b.counts()
        manifest["splits"][name] = {
            "rho": percent_to_rho(pct), "train": {**counts["train"], "sha256": tr}, "valid": {**counts["valid"], "sha256": va},
        }
        progress(f"{name}: train {counts['train']['n']} ({counts['train']['conflicting']} conflicting), "
                 f"valid {counts['valid']['n']} ({counts['valid']['conflicting']} conflicting)")
    manifest["build_seconds"] = round(time.time() - t0, 1)
    atomic_write_json(staging / "manifest.json", manifest)
    root.parent.mkdir(parents=True, exist_ok=True)
    if root.exists():
        root.rmdir()
    staging.rename(root)
    # the cache fingerprints hold paths relative to the dataset root, so they survive the rename
    return json.loads(manifest_path.read_text())
