"""``debiaslab demo`` and ``debiaslab presets``: what to run first."""

from __future__ import annotations

import argparse


def add_presets_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("patterns", nargs="*", help="shell patterns, e.g. 'cmnist-*' (default: all)")
    p.add_argument("--json", action="store_true", help="print them as JSON")


def preset_defaults(name: str) -> dict:
    """A preset as argparse defaults of the train command (explicit flags still win)."""
    from debiaslab.presets import get_preset

    return {**get_preset(name).config, "exp": name}


def cmd_presets(args) -> int:
    from debiaslab.presets import PAPER_SOURCE, PRESETS, match_presets

    presets = match_presets(args.patterns) if args.patterns else list(PRESETS.values())
    if args.json:
        import json

        print(
            json.dumps(
                {
                    p.name: {
                        "config": p.config,
                        "uses_bias_labels": p.uses_bias_labels,
                        "paper": {
                            "mean": p.paper_mean,
                            "std": p.paper_std,
                            "metric": p.metric,
                            "source": p.source,
                        },
                    }
                    for p in presets
                },
                indent=2,
            )
        )
        return 0
    sources = sorted({p.source for p in presets}, key=lambda s: s != PAPER_SOURCE)
    print(f"{len(presets)} presets; run one with: debiaslab train --preset NAME")
    for source in sources:  # one section per source of the published numbers
        print(f"\npaper numbers from {source}:")
        for p in presets:
            if p.source == source:
                print("  " + p.describe())
    return 0


def add_demo_args(p: argparse.ArgumentParser) -> None:
    from debiaslab.demo import DEMO_DEFAULTS

    p.add_argument(
        "--methods",
        nargs="+",
        default=["vanilla", "lff", "disent"],
        choices=["vanilla", "lff", "disent"],
        help="methods to compare",
    )
    p.add_argument(
        "--num_steps",
        type=int,
        default=DEMO_DEFAULTS["num_steps"],
        help=f"steps per method (default: {DEMO_DEFAULTS['num_steps']})",
    )
    p.add_argument(
        "--percent",
        type=float,
        default=DEMO_DEFAULTS["percent"],
        help=f"bias-conflicting percentage of the training split (default: {DEMO_DEFAULTS['percent']})",
    )
    p.add_argument(
        "--seed", type=int, default=0, help="seed of the data and of the runs (default: 0)"
    )
    p.add_argument(
        "--log_dir",
        default="log",
        help="runs go to <log_dir>/colored_digits/demo_<method> (default: log)",
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda (default: auto)")
    p.add_argument("--no_progress", action="store_true", help="no progress bars")


def cmd_demo(args) -> int:
    from debiaslab.demo import run_demo

    run_demo(
        args.methods,
        args.num_steps,
        args.percent,
        args.seed,
        args.log_dir,
        args.device,
        not args.no_progress,
    )
    return 0


COMMANDS = [
    (
        "presets",
        cmd_presets,
        add_presets_args,
        "list the presets: one per cell of the paper's table, with its number",
        "List the presets (the paper's hyper-parameters and number for each table cell).",
    ),
    (
        "demo",
        cmd_demo,
        add_demo_args,
        "compare Vanilla, LfF and DisEnt on Colored Digits (no download, about a minute on a CPU)",
        "Train each method briefly on Colored Digits (scikit-learn's bundled digits, coloured by "
        "the Colored MNIST protocol) "
        "and print aligned / conflicting / unbiased test accuracy.",
    ),
]
