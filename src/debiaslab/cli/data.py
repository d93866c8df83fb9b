"""``debiaslab data build`` and ``debiaslab data preview``: the datasets in the reference layout."""

from __future__ import annotations

import argparse
from pathlib import Path

from debiaslab.config import PALETTE_CHOICES
from debiaslab.errors import UserError


def add_build_output_args(p: argparse.ArgumentParser, folder: str, train_images: str) -> None:
    """The output options every dataset builder shares."""
    p.add_argument(
        "--out",
        default="dataset",
        help=f"output folder; the dataset goes to <out>/{folder} (default: dataset)",
    )
    p.add_argument(
        "--percent",
        nargs="+",
        default=["0.5", "1", "2", "5"],
        help="bias-conflicting percentages to build (default: 0.5 1 2 5)",
    )
    p.add_argument(
        "--valid_size",
        type=int,
        default=5000,
        help=f"{train_images} held out as the biased valid split (default: 5000)",
    )
    p.add_argument("--force", action="store_true", help="replace an existing dataset folder")


def build_percents(args) -> list[float]:
    from debiaslab.data.builder import parse_pct

    return sorted({parse_pct(p) for p in args.percent})


def check_valid_size(args, num_train: int, train_images: str) -> None:
    if not 0 < args.valid_size < num_train:
        raise UserError(
            f"--valid_size {args.valid_size} must be between 1 and the {num_train} {train_images}"
        )


def add_build_cmnist_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--mnist",
        default=None,
        help="local MNIST: an .npz (x_train, y_train, x_test, y_test), a torchvision root "
        "holding MNIST/, or an image folder with train/<digit>/ and test/<digit>/ (default: download with torchvision)",
    )
    add_build_output_args(p, "cmnist", "MNIST training digits")
    p.add_argument("--seed", type=int, default=0, help="builder seed (default: 0)")
    p.add_argument(
        "--severity",
        type=int,
        default=4,
        choices=[1, 2, 3, 4, 5],
        help="colour-noise severity, sigma 0.05..0.002 (default: 4, the paper's)",
    )
    p.add_argument(
        "--palette",
        choices=[c for c in PALETTE_CHOICES if c != "any"],
        default=None,
        help="digit colours: disent = the ten saturated hues of the DisEnt paper's data, read off the dataset "
        "figure of its code repository (assets/data.png; the data of the paper's Table 1); "
        "lff = LfF's palette (Nam et al. 2020), an easier problem (default: disent; lff with "
        "--protocol denetdm)",
    )
    p.add_argument(
        "--protocol",
        choices=["lff", "denetdm"],
        default="lff",
        help="lff: 5,000 training digits held out as a biased valid split (the papers' Table 1 "
        "data); denetdm: LfF's protocol as DeNetDM ran it for its published numbers, all 60,000 "
        "training digits train and the unbiased test split doubles as the valid split (so every "
        "rule that reads valid reads test labels: an oracle) (default: lff)",
    )
    p.add_argument(
        "--download_dir",
        default=None,
        help="where torchvision downloads MNIST (default: <out>/.downloads)",
    )


def cmd_build_cmnist(args) -> int:
    from debiaslab.data.cmnist import PROTOCOL_PALETTES, write_cmnist
    from debiaslab.data.mnist import load_mnist

    pcts = build_percents(args)
    out = Path(args.out)
    mnist, prov = load_mnist(
        args.mnist, Path(args.download_dir) if args.download_dir else out / ".downloads"
    )
    palette = args.palette or PROTOCOL_PALETTES[args.protocol]
    if args.protocol == "lff":
        check_valid_size(args, len(mnist["x_train"]), "MNIST training digits")
    manifest = write_cmnist(
        mnist,
        prov,
        out,
        pcts,
        args.seed,
        args.severity,
        args.valid_size,
        force=args.force,
        palette=palette,
        protocol=args.protocol,
    )
    print(
        f"Colored MNIST ({args.protocol} protocol, {palette} palette) written to {out / 'cmnist'} in "
        f"{manifest['build_seconds']} s (manifest: {out / 'cmnist' / 'manifest.json'})"
    )
    return 0


def add_cifar10_source_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--cifar10",
        default=None,
        help="local CIFAR-10: an .npz (x_train, y_train, x_test, y_test), a .zip or folder with "
        "train/<class>/ and test/<class>/ images (e.g. ../shared/data/cifar10-jpeg.zip), or a torchvision root "
        "(default: download with torchvision)",
    )
    p.add_argument(
        "--download_dir",
        default=None,
        help="where torchvision downloads CIFAR-10 (default: <out>/.downloads)",
    )
    p.add_argument(
        "--type",
        type=int,
        default=0,
        choices=[0, 1],
        dest="corruption_type",
        help="corruption set: 0 = snow, frost, fog, brightness, contrast, spatter, elastic, jpeg, pixelate, saturate "
        "(the paper's); 1 = gaussian/shot/impulse/speckle noise, "
        "gaussian/defocus/glass/motion/zoom blur, original (default: 0)",
    )
    p.add_argument(
        "--severity",
        type=int,
        default=5,
        choices=[1, 2, 3, 4, 5],
        help="CIFAR-10-C severity (default: 5, the hardest, which is what LfF's 'Severity4' runs used)",
    )
    p.add_argument("--seed", type=int, default=0, help="builder seed (default: 0)")


def add_build_cifar10c_args(p: argparse.ArgumentParser) -> None:
    add_cifar10_source_args(p)
    add_build_output_args(p, "cifar10c (type 1: <out>/cifar10c_type1)", "CIFAR-10 training images")
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="worker processes for the corruptions (default: one per CPU core)",
    )


def _load_cifar10(args):
    from debiaslab.data.cifar10 import load_cifar10

    out = Path(getattr(args, "out", ".") or ".")
    return load_cifar10(
        args.cifar10, Path(args.download_dir) if args.download_dir else out / ".downloads"
    )


def cmd_build_cifar10c(args) -> int:
    from debiaslab.data.cifar10c import write_cifar10c
    from debiaslab.data.reference import cifar10c_folder

    pcts = build_percents(args)
    if args.workers is not None and args.workers <= 0:
        raise UserError(f"--workers must be positive, got {args.workers}")
    cifar, prov = _load_cifar10(args)
    check_valid_size(args, len(cifar["x_train"]), "CIFAR-10 training images")
    manifest = write_cifar10c(
        cifar,
        prov,
        Path(args.out),
        pcts,
        args.seed,
        args.severity,
        args.corruption_type,
        args.valid_size,
        force=args.force,
        workers=args.workers,
    )
    root = Path(args.out) / cifar10c_folder(args.corruption_type)
    print(
        f"Corrupted CIFAR-10 (type {args.corruption_type}, severity {args.severity}) written to {root} "
        f"in {manifest['build_seconds']} s (manifest: {root / 'manifest.json'})"
    )
    return 0


def add_preview_cifar10c_args(p: argparse.ArgumentParser) -> None:
    add_cifar10_source_args(p)
    p.add_argument(
        "--output",
        default="cifar10c_preview.png",
        help="PNG to write (default: cifar10c_preview.png)",
    )
    p.add_argument(
        "--columns", type=int, default=10, help="images per row, one class each first (default: 10)"
    )


def cmd_preview_cifar10c(args) -> int:
    from torchvision.io import encode_png

    from debiaslab.data.cifar10c import preview_grid
    from debiaslab.io import atomic_write_bytes

    if args.columns <= 0:
        raise UserError(f"--columns must be positive, got {args.columns}")
    cifar, _ = _load_cifar10(args)
    grid = preview_grid(cifar, args.corruption_type, args.severity, args.seed, args.columns)
    atomic_write_bytes(Path(args.output), encode_png(grid).numpy().tobytes())
    print(
        f"preview of type {args.corruption_type} at severity {args.severity} written to {args.output} "
        f"(rows: clean, then one per corruption in bias-label order)"
    )
    return 0


BUILD_COMMANDS = [
    (
        "cmnist",
        cmd_build_cmnist,
        add_build_cmnist_args,
        "Colored MNIST (LfF protocol): 0.5/1/2/5 pct",
        "Build Colored MNIST by the LfF protocol: 55k train / 5k biased valid from MNIST train, "
        "10k unbiased test from MNIST "
        "test; reference layout + cache + manifest.json.",
    ),
    (
        "cifar10c",
        cmd_build_cifar10c,
        add_build_cifar10c_args,
        "Corrupted CIFAR-10 (LfF protocol): 0.5/1/2/5 pct, type 0 or 1, CIFAR-10-C severities",
        "Build Corrupted CIFAR-10 by the LfF protocol: 45k train / 5k biased valid from CIFAR-10 "
        "train, 10k unbiased test from "
        "CIFAR-10 test; reference layout + cache + manifest.json.",
    ),
]
PREVIEW_COMMANDS = [
    (
        "cifar10c",
        cmd_preview_cifar10c,
        add_preview_cifar10c_args,
        "one row per corruption, one column per class",
        "Apply each corruption of a type to a few CIFAR-10 test images and write a labelled PNG grid.",
    ),
]
