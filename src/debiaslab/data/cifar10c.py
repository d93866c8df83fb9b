"""Corrupted CIFAR-10 builder (LfF protocol; datasets.md section 3).

Bias = corruption, one per class: bias label b means the image is corrupted by the b-th corruption
of the chosen set (type 0: snow .. saturate; type 1: gaussian noise .. original) at one severity.
Bias labels follow the Colored MNIST rule (``colored.bias_labels``): rho = 1 - pct/100 for train and
the biased valid split, 0.1 for the unbiased test split. From CIFAR-10's 50k training images a
seeded 5k are held out as the valid split (as Colored MNIST holds out 5k of MNIST's 60k); the
other 45k form the training split; CIFAR-10's 10k test images form the test split, shared by all
ratios.

Severity is CIFAR-10-C's 1..5. LfF looped over its ``severity`` 1..4 and called the corruption
with ``severity + 1``; its paper runs (``Severity4``) are CIFAR-10-C severity 5, our default.

Corrupting runs in worker processes, in fixed chunks whose random streams depend only on
(seed, split, bias, chunk), so the output is identical for any number of workers.
"""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch

from debiaslab.data.builder import pct_name, write_dataset
from debiaslab.data.colored import bias_labels, percent_to_rho, split_indices
from debiaslab.data.corruptions import CORRUPTION_TYPES, corrupt
from debiaslab.data.reference import cifar10c_folder
from debiaslab.data.splits import DatasetBundle, Split
from debiaslab.errors import UserError

PERCENTS = (0.5, 1.0, 2.0, 5.0)
VALID_SIZE = 5000
DEFAULT_SEVERITY = 5
CHUNK = 500


def _init_worker() -> None:
    import cv2

    cv2.setNumThreads(1)
    torch.set_num_threads(1)


def _corrupt_chunk(args) -> np.ndarray:
    images, name, severity, entropy = args
    return corrupt(images, name, severity, np.random.default_rng(entropy))


class Corrupter:
    """Applies each sample's corruption (chosen by its bias label) on a pool of worker processes."""

    def __init__(self, corruption_type: int, severity: int, seed: int, workers: int | None = None):
        if corruption_type not in CORRUPTION_TYPES:
            raise UserError(f"--type {corruption_type} must be one of {sorted(CORRUPTION_TYPES)}")
        if severity not in range(1, 6):
            raise UserError(f"--severity {severity} must be one of 1..5 (CIFAR-10-C's severities)")
        self.names = CORRUPTION_TYPES[corruption_type]
        self.severity, self.seed = severity, seed
        self.workers = workers or min(os.cpu_count() or 1, 16)
        self.pool = None

    def __enter__(self):
        if self.workers > 1:
            self.pool = ProcessPoolExecutor(self.workers, initializer=_init_worker)
        return self

    def __exit__(self, *exc):
        if self.pool is not None:
            self.pool.shutdown(cancel_futures=True)

    def __call__(self, images: np.ndarray, biases: torch.Tensor, stream: int) -> torch.Tensor:
        """uint8 NHWC images + bias labels -> corrupted uint8 NCHW tensor."""
        biases = biases.numpy()
        jobs, where = [], []
        for b, name in enumerate(self.names):
            idx = np.flatnonzero(biases == b)
            for c, start in enumerate(range(0, len(idx), CHUNK)):
                part = idx[start : start + CHUNK]
                jobs.append((images[part], name, self.severity, [self.seed, stream, b, c]))
                where.append(part)
        results = self.pool.map(_corrupt_chunk, jobs) if self.pool else map(_corrupt_chunk, jobs)
        out = np.empty_like(images)
        for part, result in zip(where, results):
            out[part] = result
        return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


def _generator(seed: int, stream: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + stream)


def corrupted_split(
    images: np.ndarray,
    targets: np.ndarray,
    rho: float,
    generator: torch.Generator,
    corrupter: Corrupter,
    stream: int,
) -> Split:
    targets = torch.as_tensor(targets, dtype=torch.int64)
    biases = bias_labels(targets, rho, len(corrupter.names), generator)
    return Split(corrupter(images, biases, stream), targets, biases)


def build_test(cifar: dict, corrupter: Corrupter) -> Split:
    return corrupted_split(
        cifar["x_test"], cifar["y_test"], 0.1, _generator(corrupter.seed, 0), corrupter, 0
    )


def build_cifar10c(
    cifar: dict,
    pct: float,
    corrupter: Corrupter,
    valid_size: int = VALID_SIZE,
    test: Split | None = None,
) -> DatasetBundle:
    """Build one Corrupted CIFAR-10 ratio in memory (``cifar``: numpy arrays from ``load_cifar10``)."""
    seed = corrupter.seed
    stream = 1 + int(
        round(pct * 1000)
    )  # one stream per percentage: each ratio is reproducible on its own
    g = _generator(seed, stream)
    train_idx, valid_idx = (
        i.numpy() for i in split_indices(len(cifar["x_train"]), valid_size, _generator(seed, 1))
    )
    rho = percent_to_rho(pct)
    x, y = cifar["x_train"], cifar["y_train"]
    train = corrupted_split(x[train_idx], y[train_idx], rho, g, corrupter, 2 * stream)
    valid = corrupted_split(x[valid_idx], y[valid_idx], rho, g, corrupter, 2 * stream + 1)
    test = test if test is not None else build_test(cifar, corrupter)
    info = {
        "percent": pct_name(pct),
        "seed": seed,
        "severity": corrupter.severity,
        "corruptions": list(corrupter.names),
    }
    return DatasetBundle("cifar10c", train, valid, test, 10, info)


def write_cifar10c(
    cifar: dict,
    provenance: dict,
    out: Path,
    percents=PERCENTS,
    seed: int = 0,
    severity: int = DEFAULT_SEVERITY,
    corruption_type: int = 0,
    valid_size: int = VALID_SIZE,
    force: bool = False,
    workers: int | None = None,
    progress=print,
) -> dict:
    """Write Corrupted CIFAR-10 in the reference layout under ``out/<dataset_folder>`` with caches and a manifest."""
    with Corrupter(corruption_type, severity, seed, workers) as corrupter:
        manifest = {
            "protocol": "LfF Corrupted CIFAR-10 (Nam et al. 2020), "
            "CIFAR-10-C corruptions (Hendrycks & Dietterich 2019)",
            "corruption_type": corruption_type,
            "corruptions": list(corrupter.names),
            "severity": severity,
            "seed": seed,
            "valid_size": valid_size,
            "test_rho": 0.1,
            "source": provenance,
            "notes": "frost uses a generated texture; motion blur and snow use an OpenCV line "
            "kernel instead of ImageMagick",
        }
        test = build_test(cifar, corrupter)
        return write_dataset(
            cifar10c_folder(corruption_type),
            out,
            manifest,
            test,
            lambda pct: build_cifar10c(cifar, pct, corrupter, valid_size, test),
            percents,
            len(cifar["x_train"]),
            force=force,
            valid_layout="class",
            progress=progress,
        )


def preview_grid(
    cifar: dict, corruption_type: int, severity: int, seed: int = 0, per_row: int = 10
) -> torch.Tensor:
    """uint8 [3, H, W] grid: one row per corruption (bias order), ``per_row`` test images (one per class first)."""
    x, y = cifar["x_test"], cifar["y_test"]
    picks = [int(np.flatnonzero(y == c % 10)[c // 10]) for c in range(per_row)]
    images = x[picks]
    rows = [torch.from_numpy(images).permute(0, 3, 1, 2)]
    for b, name in enumerate(CORRUPTION_TYPES[corruption_type]):
        out = corrupt(images, name, severity, np.random.default_rng([seed, b]))
        rows.append(torch.from_numpy(out).permute(0, 3, 1, 2))
    return _labelled_grid(torch.stack(rows), ["clean", *CORRUPTION_TYPES[corruption_type]])


def _labelled_grid(
    cells: torch.Tensor, labels: list[str], scale: int = 3, pad: int = 2, label_width: int = 130
) -> torch.Tensor:
    """cells uint8 [R, K, 3, h, w] -> one uint8 [3, H, W] image with a text label left of each row."""
    from PIL import Image, ImageDraw

    r, k, _, h, w = cells.shape
    big = cells.repeat_interleave(scale, -1).repeat_interleave(scale, -2)
    H, W = h * scale + pad, w * scale + pad
    canvas = np.full((r * H + pad, label_width + k * W + pad, 3), 255, np.uint8)
    for i in range(r):
        for j in range(k):
            y0, x0 = pad + i * H, label_width + pad + j * W
            canvas[y0 : y0 + h * scale, x0 : x0 + w * scale] = big[i, j].permute(1, 2, 0).numpy()
    im = Image.fromarray(canvas)
    draw = ImageDraw.Draw(im)
    for i, label in enumerate(labels):
        draw.text((4, pad + i * H + h * scale // 2 - 6), label, fill=(0, 0, 0))
    return torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1)
