"""DisEnt on your own tensors with your own CNN.

Your data: uint8 images [N, C, H, W] with class labels and, where you have them, bias labels (only
the evaluation reads them; DisEnt never does). Here they come from Colored Digits, a small Colored
MNIST built from scikit-learn's bundled digits: replace `load_tensors` with your own.

    python examples/disent_custom_cnn.py --steps 3000
"""

import argparse

import torch.nn as nn

import debiaslab as dl
from debiaslab.data.digits import colored_digits


def load_tensors():
    """(images, targets, biases) for train, valid and test."""
    toy = colored_digits(percent=5.0, seed=0)
    return [(s.images, s.targets, s.biases) for s in (toy.train, toy.valid, toy.test)]


def small_cnn(num_classes: int, head_inputs: int, in_shape) -> nn.Module:
    """Any feature extractor; `dl.Backbone` adds the linear head DisEnt's two branches need."""
    features = nn.Sequential(
        nn.Conv2d(in_shape[0], 16, 5, stride=2, padding=2), nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(),
        nn.Linear(32 * ((in_shape[1] + 3) // 4) * ((in_shape[2] + 3) // 4), 64), nn.ReLU(),
    )  # fmt: skip
    return dl.Backbone(features, feature_dim=64, num_classes=num_classes, head_inputs=head_inputs)


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--log_dir", default="log")
    p.add_argument("--device", default="auto")
    args = p.parse_args()

    train, valid, test = load_tensors()
    data = dl.tensor_data(train=train, valid=valid, test=test, name="my_tensors")
    # DisEnt's CMNIST weights with a schedule for a short run (debiaslab demo's settings); pixels
    # scaled to [0, 1], no normalisation or augmentation (flips and crops do not suit digits)
    run = dl.fit(
        "disent",
        data,
        model=small_cnn,
        num_steps=args.steps,
        curr_step=args.steps // 3,
        lr=0.002,
        batch_size=128,
        lambda_dis_align=10.0,
        lambda_swap_align=10.0,
        use_lr_decay=True,
        lr_decay_step=max(1, args.steps // 3),
        lr_gamma=0.5,
        input_scale="unit",
        normalize=False,
        augment=False,
        valid_freq=max(1, args.steps // 10),
        log_dir=args.log_dir,
        device=args.device,
    )

    print(f"run: {run.dir}")
    for rule in ("last", "best_valid_pseudo_unbiased", "oracle_best_test"):
        m = run.metrics(rule)
        print(
            f"{rule:28s} step {run.step(rule):6d}  unbiased {m['unbiased']:.3f}  "
            f"aligned {m['aligned']:.3f}  conflicting {m['conflicting']:.3f}"
        )
    logits = run.predict(test[0], rule="best_valid_pseudo_unbiased")
    print(f"predicted {len(logits)} test images; first classes: {logits.argmax(1)[:10].tolist()}")


if __name__ == "__main__":
    main()
