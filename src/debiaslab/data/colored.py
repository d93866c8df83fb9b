"""The Colored MNIST protocol of LfF (Nam et al., 2020), usable on any grey digit images.

Bias = colour, one colour per class. A fraction ``rho`` of each class is coloured with the class's
own colour (bias-aligned); the rest is spread evenly over the other colours (bias-conflicting).
Two palettes: DisEnt's (the default: the data the paper's Table 1 was measured on) and LfF's.
"""

from __future__ import annotations

import numpy as np
import torch

# LfF's palette (Nam et al. 2020), RGB in [0, 1], indexed by bias label.
LFF_PALETTE = torch.tensor(
    [
        [0.9837, 0.3125, 0.1686],
        [0.9905, 0.9156, 0.3515],
        [0.6730, 0.4611, 0.5798],
        [0.7833, 0.8316, 0.6013],
        [0.0880, 0.7780, 0.9818],
        [0.3214, 0.9611, 0.4464],
        [0.0246, 0.2357, 0.7587],
        [0.5552, 0.1016, 0.7618],
        [0.2077, 0.3929, 0.0187],
        [0.8337, 0.2024, 0.2669],
    ]
)
# DisEnt's palette: ten saturated hues, read off the dataset figure of the paper's code repository
# (kakaoenterprise/Learning-Debiased-Disentangled, assets/data.png; the median foreground colour of
# each digit tile). The paper's data release itself is not publicly downloadable.
DISENT_PALETTE = torch.tensor(
    [
        [1.0, 0.0, 0.0],
        [1.0, 0.5, 0.0],
        [1.0, 1.0, 0.0],
        [0.5, 1.0, 0.0],
        [0.0, 1.0, 0.0],
        [0.0, 1.0, 1.0],
        [0.0, 0.0, 1.0],
        [0.5, 0.0, 1.0],
        [1.0, 0.0, 0.5],
        [1.0, 0.0, 1.0],
    ]
)
PALETTES = {"disent": DISENT_PALETTE, "lff": LFF_PALETTE}
PALETTE_SOURCES = {
    "disent": "DisEnt (Lee et al. 2021): the hues of the dataset figure assets/data.png in the paper's code repository",
    "lff": "LfF (Nam et al. 2020): the palette of LfF's Colored MNIST builder",
}
DEFAULT_PALETTE = "disent"
PALETTE = PALETTES[DEFAULT_PALETTE]
# Colour noise std per severity 1..5 (the paper's runs use severity 4).
SEVERITY_SIGMA = {1: 0.05, 2: 0.02, 3: 0.01, 4: 0.005, 5: 0.002}


def percent_to_rho(percent: float) -> float:
    """Fraction of bias-aligned samples for a given percentage of bias-conflicting ones."""
    return 1.0 - percent / 100.0


def bias_labels(
    targets: torch.Tensor, rho: float, num_classes: int, generator: torch.Generator
) -> torch.Tensor:
    """Bias labels by the LfF rule.

    For each class c with n_c samples, the cumulative milestones ``round(n_c * cumsum(ratios))``
    with ``ratios = rho`` for colour c and ``(1 - rho) / (C - 1)`` for every other colour decide how
    many samples get each colour; which samples get which colour is a seeded random permutation.
    """
    if not 0.0 <= rho <= 1.0:
        raise ValueError(f"rho must be in [0, 1], got {rho}")
    targets = torch.as_tensor(targets, dtype=torch.int64)
    biases = torch.empty_like(targets)
    eye = np.eye(num_classes)
    ratios = rho * eye + (1.0 - rho) / (num_classes - 1) * (1.0 - eye)
    for c in range(num_classes):
        members = torch.nonzero(targets == c).flatten()
        n = len(members)
        milestones = np.round(n * np.cumsum(ratios[c])).astype(np.int64)
        milestones[-1] = n
        counts = np.diff(np.concatenate([[0], milestones]))
        colours = torch.repeat_interleave(torch.arange(num_classes), torch.as_tensor(counts))
        order = torch.randperm(n, generator=generator)
        biases[members[order]] = colours
    return biases


def colorize(
    gray: torch.Tensor,
    biases: torch.Tensor,
    sigma: float,
    generator: torch.Generator,
    palette: torch.Tensor = PALETTE,
) -> torch.Tensor:
    """Colour grey digits: ``rgb = gray * clip(palette[bias] + N(0, sigma^2 I_3), 0, 1)``.

    ``gray``: uint8 [N, H, W]; returns uint8 [N, 3, H, W]. One colour 3-vector per image.
    """
    if gray.dtype != torch.uint8 or gray.dim() != 3:
        raise ValueError(f"gray must be uint8 [N, H, W], got {gray.dtype} {tuple(gray.shape)}")
    noise = torch.randn(len(gray), 3, generator=generator, dtype=torch.float64) * sigma
    colours = (palette.to(torch.float64)[biases] + noise).clamp(0.0, 1.0)
    rgb = gray.to(torch.float64)[:, None, :, :] * colours[:, :, None, None]
    return rgb.floor().clamp(0, 255).to(torch.uint8)  # truncation, as LfF's np.uint8(...)


def split_indices(
    n: int, n_valid: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded split of range(n) into (train, valid) index sets, each sorted."""
    perm = torch.randperm(n, generator=generator)
    return perm[n_valid:].sort().values, perm[:n_valid].sort().values


def palette_tensor(name: str) -> torch.Tensor:
    if name not in PALETTES:
        raise ValueError(f"unknown palette {name!r}; choose one of {', '.join(PALETTES)}")
    return PALETTES[name]


def read_palette(images: torch.Tensor, biases: torch.Tensor, num_classes: int = 10) -> torch.Tensor:
    """The colour of each bias label, read back from coloured digits: [num_classes, 3] in [0, 1].

    A digit's brightest pixel is (nearly) full intensity times its colour, so it gives the image's
    colour; the per-label median over images discards the colour noise. NaN for an absent label.
    """
    flat = images.reshape(len(images), images.shape[1], -1)
    brightest = flat.sum(1, dtype=torch.int32).argmax(1)
    colours = (
        flat.gather(2, brightest[:, None, None].expand(-1, flat.shape[1], 1))[:, :, 0].float()
        / 255.0
    )
    out = torch.full((num_classes, flat.shape[1]), float("nan"))
    for b in range(num_classes):  # ten labels, each a vectorised median over its images
        members = colours[biases == b]
        if len(members):
            out[b] = members.median(0).values
    return out


def match_palette(measured: torch.Tensor, tolerance: float = 0.03) -> str | None:
    """The named palette the measured colours are, or None when they are none of them."""
    for name, palette in PALETTES.items():
        if measured.shape == palette.shape and bool(
            ((measured - palette).abs() <= tolerance).all()
        ):
            return name
    return None
