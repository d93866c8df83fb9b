"""Compare methods on the same data and seed, and plot them.

Trains each method on Colored Digits (a small Colored MNIST that needs no download) and plots
the unbiased test accuracy under two selection rules: `last` (no labels) and the oracle (the
paper's: best test accuracy). Swap in your data with `dl.tensor_data` or `dl.manifest_data`.

    python examples/compare_methods.py --steps 3000 --plot methods.png
"""

import argparse

import matplotlib

matplotlib.use("Agg")  # write a file; no display needed
import matplotlib.pyplot as plt  # noqa: E402

import debiaslab as dl  # noqa: E402
from debiaslab.data.digits import colored_digits  # noqa: E402

RULES = ("last", "oracle_best_test")
COMMON = dict(model="mlp", batch_size=128, lr=1e-3, normalize=False, input_scale="unit")
# per-method settings for a short run (debiaslab demo's); the others keep their defaults
OPTIONS = {
    "disent": dict(
        lr=0.002,
        curr_step=1000,
        lambda_dis_align=10.0,
        lambda_swap_align=10.0,
        use_lr_decay=True,
        lr_decay_step=1000,
        lr_gamma=0.5,
    ),
}


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--methods", nargs="+", default=["vanilla", "lff", "disent", "lc"])
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log_dir", default="log")
    p.add_argument("--plot", default="methods.png")
    args = p.parse_args()

    data = colored_digits(percent=2.0, seed=0)
    scores = {}
    for method in args.methods:
        options = {**COMMON, **OPTIONS.get(method, {})}
        run = dl.fit(
            method,
            data,
            num_steps=args.steps,
            seed=args.seed,
            log_dir=args.log_dir,
            valid_freq=max(1, args.steps // 10),
            **options,
        )
        scores[method] = [run.metrics(rule)["unbiased"] for rule in RULES]
        print(f"{method:8s} " + "  ".join(f"{r} {s:.3f}" for r, s in zip(RULES, scores[method])))

    fig, ax = plt.subplots(figsize=(6, 3))
    width = 0.4
    for k, rule in enumerate(RULES):
        ax.bar(
            [i + k * width for i in range(len(scores))],
            [s[k] for s in scores.values()],
            width,
            label=rule,
        )
    ax.set_xticks([i + width / 2 for i in range(len(scores))], list(scores))
    ax.set_ylabel("unbiased test accuracy")
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.plot)
    print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
