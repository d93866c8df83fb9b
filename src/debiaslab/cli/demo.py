"""``debiaslab demo``: what to run first."""

from __future__ import annotations

import argparse


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
        "demo",
        cmd_demo,
        add_demo_args,
        "compare Vanilla, LfF and DisEnt on Colored Digits (no download, about a minute on a CPU)",
        "Train each method briefly on Colored Digits (scikit-learn's bundled digits, coloured by "
        "the Colored MNIST protocol) "
        "and print aligned / conflicting / unbiased test accuracy.",
    ),
]
