"""Train on images listed in a CSV manifest with bias labels (a Waterbirds-like layout).

The manifest has one row per image: `path,target,bias,split`, with `split` in train / valid /
test, paths relative to the CSV. Here the script writes such a dataset (PNG files from Colored
Digits, the digit as target, the colour as bias) next to the CSV: point `manifest_data` at yours.

    python examples/manifest_csv.py --out my_dataset --steps 3000
"""

import argparse
import csv
from pathlib import Path

from PIL import Image

import debiaslab as dl
from debiaslab.data.digits import colored_digits


def write_example_dataset(out: Path) -> Path:
    """PNG images and their manifest.csv; returns the CSV's path."""
    toy = colored_digits(percent=5.0, seed=0)
    rows = []
    for split_name in ("train", "valid", "test"):
        split = getattr(toy, split_name)
        for i, (image, target, bias) in enumerate(zip(split.images, split.targets, split.biases)):
            path = Path(split_name) / f"{i:05d}.png"
            (out / path).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image.permute(1, 2, 0).numpy()).save(out / path)
            rows.append((path.as_posix(), int(target), int(bias), split_name))
    csv_path = out / "manifest.csv"
    with open(csv_path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "target", "bias", "split"])
        writer.writerows(rows)
    return csv_path


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--out", default="my_dataset")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--log_dir", default="log")
    args = p.parse_args()

    data = dl.manifest_data(write_example_dataset(Path(args.out)))
    run = dl.fit(
        "lff",
        data,
        model="mlp",
        num_steps=args.steps,
        batch_size=128,
        lr=1e-3,
        normalize=False,
        valid_freq=max(1, args.steps // 10),
        log_dir=args.log_dir,
    )
    test = run.metrics("best_valid_worst_class")
    print(
        f"LfF, model picked by worst-class validation accuracy (no bias labels read): "
        f"test accuracy {test['accuracy']:.3f}, unbiased {test['unbiased']:.3f}, "
        f"worst group {test['worst_group']:.3f}"
    )


if __name__ == "__main__":
    main()
