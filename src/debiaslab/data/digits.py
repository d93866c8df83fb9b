"""Colored Digits: scikit-learn's bundled 1,797 handwritten digits, coloured by the CMNIST protocol.

Needs no download (the images ship inside scikit-learn), so the demo and quick tests run anywhere.
The 8x8 digits (0..16) are upsampled to 28x28 (bilinear) and scaled to 0..255, then split
(stratified, seeded) into train / biased valid / unbiased test and coloured as Colored MNIST is.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from debiaslab.data.cmnist import colored_split
from debiaslab.data.colored import DEFAULT_PALETTE, SEVERITY_SIGMA, percent_to_rho
from debiaslab.data.splits import DatasetBundle


def digits_gray() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.as_tensor(d.images, dtype=torch.float32)[:, None] / 16.0
    x = F.interpolate(x, size=(28, 28), mode="bilinear", align_corners=False)
    return (x[:, 0] * 255).round().clamp(0, 255).to(torch.uint8), torch.as_tensor(
        d.target, dtype=torch.int64
    )


def colored_digits(
    percent: float = 5.0,
    seed: int = 0,
    severity: int = 4,
    fractions=(0.6, 0.1, 0.3),
    palette: str = DEFAULT_PALETTE,
) -> DatasetBundle:
    """Train (rho = 1 - percent/100), valid (same rho) and unbiased test (rho = 0.1) splits."""
    gray, targets = digits_gray()
    g = torch.Generator().manual_seed(seed)
    parts = {"train": [], "valid": [], "test": []}
    for c in range(10):  # stratified split, so every class is in every split
        members = torch.nonzero(targets == c).flatten()
        members = members[torch.randperm(len(members), generator=g)]
        n_train = int(round(fractions[0] * len(members)))
        n_valid = int(round(fractions[1] * len(members)))
        parts["train"].append(members[:n_train])
        parts["valid"].append(members[n_train : n_train + n_valid])
        parts["test"].append(members[n_train + n_valid :])
    idx = {k: torch.cat(v).sort().values for k, v in parts.items()}
    sigma = SEVERITY_SIGMA[severity]
    rho = percent_to_rho(percent)
    splits = {
        k: colored_split(
            gray[i], targets[i], rho if k != "test" else 0.1, sigma, g, palette=palette
        )
        for k, i in idx.items()
    }
    info = {
        "source": "sklearn.datasets.load_digits (bundled)",
        "percent": f"{percent:g}pct",
        "seed": seed,
        "severity": severity,
        "palette": palette,
    }
    return DatasetBundle(
        "colored_digits", splits["train"], splits["valid"], splits["test"], 10, info
    )
