"""Colored MNIST builder (LfF's protocol, with DisEnt's palette by default or LfF's).

From MNIST's 60k training digits, a seeded 5k are held out as a validation split that is biased
like the training split; the other 55k form the training split. MNIST's 10k test digits form the
unbiased test split (rho = 0.1, every colour equally likely). The test split is built once with its
own generator and shared by every percentage, as in the reference layout. The palette
(``colored.PALETTES``) only changes the colours; every sample's split and bias label, and its
colour noise, are the same for both palettes.
"""

from __future__ import annotations

from pathlib import Path

import torch

from debiaslab.data.builder import pct_name, write_dataset
from debiaslab.data.colored import (
    DEFAULT_PALETTE,
    PALETTE_SOURCES,
    SEVERITY_SIGMA,
    bias_labels,
    colorize,
    match_palette,
    palette_tensor,
    percent_to_rho,
    read_palette,
    split_indices,
)
from debiaslab.data.splits import DatasetBundle, Split
from debiaslab.errors import UserError

PERCENTS = (0.5, 1.0, 2.0, 5.0)
VALID_SIZE = 5000
# How the splits are drawn (the palette is chosen apart): LfF's, and LfF's as DeNetDM ran it for
# its published numbers and re-run baselines (algorithms.md, DeNetDM).
PROTOCOLS = {
    "lff": "LfF Colored MNIST (Nam et al. 2020)",
    "denetdm": "LfF Colored MNIST as DeNetDM ran it (Vadakkeveedu et al. 2024): all 60,000 "
    "training digits, the unbiased test split doubling as the valid split",
}
PROTOCOL_PALETTES = {"lff": DEFAULT_PALETTE, "denetdm": "lff"}


def _generator(seed: int, stream: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + stream)


def colored_split(
    gray: torch.Tensor,
    targets: torch.Tensor,
    rho: float,
    sigma: float,
    generator: torch.Generator,
    num_classes: int = 10,
    palette: str = DEFAULT_PALETTE,
) -> Split:
    biases = bias_labels(targets, rho, num_classes, generator)
    return Split(
        colorize(gray, biases, sigma, generator, palette_tensor(palette)), targets.clone(), biases
    )


def build_test(mnist: dict, seed: int, severity: int, palette: str = DEFAULT_PALETTE) -> Split:
    return colored_split(
        mnist["x_test"],
        mnist["y_test"],
        0.1,
        SEVERITY_SIGMA[severity],
        _generator(seed, 0),
        palette=palette,
    )


def build_cmnist(
    mnist: dict,
    pct: float,
    seed: int = 0,
    severity: int = 4,
    valid_size: int = VALID_SIZE,
    test: Split | None = None,
    palette: str = DEFAULT_PALETTE,
    protocol: str = "lff",
) -> DatasetBundle:
    """Build one Colored MNIST ratio in memory. ``protocol`` ``denetdm``: every training digit
    trains (``valid_size`` does not apply) and the test split is also the valid split."""
    if severity not in SEVERITY_SIGMA:
        raise UserError(f"--severity {severity} must be one of 1..5")
    if protocol not in PROTOCOLS:
        raise UserError(f"--protocol {protocol!r}: choose one of {', '.join(PROTOCOLS)}")
    sigma = SEVERITY_SIGMA[severity]
    # one stream per percentage, so each ratio is reproducible on its own
    g = _generator(seed, 1 + int(round(pct * 1000)))
    n_valid = 0 if protocol == "denetdm" else valid_size
    train_idx, valid_idx = split_indices(len(mnist["x_train"]), n_valid, _generator(seed, 1))
    rho = percent_to_rho(pct)
    train = colored_split(
        mnist["x_train"][train_idx], mnist["y_train"][train_idx], rho, sigma, g, palette=palette
    )
    test = test if test is not None else build_test(mnist, seed, severity, palette)
    valid = test
    if protocol == "lff":
        valid = colored_split(
            mnist["x_train"][valid_idx], mnist["y_train"][valid_idx], rho, sigma, g, palette=palette
        )
    info = {
        "percent": pct_name(pct),
        "seed": seed,
        "severity": severity,
        "sigma": sigma,
        "palette": palette,
        "protocol": protocol,
    }
    return DatasetBundle("cmnist", train, valid, test, 10, info)


def write_cmnist(
    mnist: dict,
    provenance: dict,
    out: Path,
    percents=PERCENTS,
    seed: int = 0,
    severity: int = 4,
    valid_size: int = VALID_SIZE,
    force: bool = False,
    progress=print,
    palette: str = DEFAULT_PALETTE,
    protocol: str = "lff",
) -> dict:
    """Write Colored MNIST in the reference layout under ``out/cmnist`` plus caches and a manifest."""
    if protocol == "denetdm":
        valid_size = 0
    manifest = {
        "protocol": PROTOCOLS[protocol],
        "protocol_name": protocol,
        "valid_from": "test" if protocol == "denetdm" else "train",
        "seed": seed,
        "severity": severity,
        "sigma": SEVERITY_SIGMA[severity],
        "palette": palette,
        "palette_rgb": palette_tensor(palette).tolist(),
        "palette_source": PALETTE_SOURCES[palette],
        "valid_size": valid_size,
        "test_rho": 0.1,
        "source": provenance,
    }
    test = build_test(mnist, seed, severity, palette)
    return write_dataset(
        "cmnist",
        out,
        manifest,
        test,
        lambda pct: build_cmnist(mnist, pct, seed, severity, valid_size, test, palette, protocol),
        percents,
        len(mnist["x_train"]),
        force=force,
        # the test split's layout and ids: its copy as valid reads back as the same split
        valid_layout="class" if protocol == "denetdm" else "flat",
        progress=progress,
    )


def check_palette(bundle: DatasetBundle, wanted: str, data_dir: Path) -> dict:
    """Read the training images' colours back and refuse data built with the other known palette.

    Colours that match no known palette (a Colored MNIST variant of your own) are accepted and
    recorded as "unknown". Returns what a run records: the palette's name and the measured colours.
    """
    measured = read_palette(bundle.train.images, bundle.train.biases, bundle.num_classes)
    found = match_palette(measured)
    if wanted != "any" and found is not None and found != wanted:
        raise UserError(
            f"{data_dir / 'cmnist'} holds Colored MNIST with the {found} palette, but this run asks for "
            f"--palette {wanted} (the default is disent, the paper's data); build that data with: debiaslab "
            f"data build cmnist --palette {wanted} --out <folder> and pass --data_dir <folder>, "
            f"or pass --palette {found}"
        )
    return {
        "palette": found or "unknown",
        "palette_measured": [
            [None if v != v else round(v, 4) for v in row] for row in measured.tolist()
        ],
    }
