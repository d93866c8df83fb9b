"""``debiaslab presets``: the presets, one per cell of the paper's table, and a preset as the
defaults of ``debiaslab train --preset``."""

from __future__ import annotations

import argparse


def add_presets_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("patterns", nargs="*", help="shell patterns, e.g. 'cmnist-*' (default: all)")
    p.add_argument("--json", action="store_true", help="print them as JSON")


def preset_defaults(name: str, method: str | None = None) -> dict:
    """A preset as argparse defaults of the train command (explicit flags still win). With
    another ``method`` than the preset's, the preset's settings that are its method's own
    options (DisEnt's lambdas, JTT's T, ...) are left out: they are no setting of ``method``."""
    from debiaslab.config import METHOD_FIELDS
    from debiaslab.presets import get_preset

    config = get_preset(name).config
    if method is not None and method != config["method"]:
        config = {
            k: v for k, v in config.items() if k not in METHOD_FIELDS or method in METHOD_FIELDS[k]
        }
    return {**config, "exp": name}


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
    # the paper's first, then in the order the presets name them (a set's order changes per run)
    sources = sorted(dict.fromkeys(p.source for p in presets), key=lambda s: s != PAPER_SOURCE)
    print(f"{len(presets)} presets; run one with: debiaslab train --preset NAME")
    for source in sources:  # one section per source of the published numbers
        print(f"\npaper numbers from {source}:")
        for p in presets:
            if p.source == source:
                print("  " + p.describe())
    return 0


COMMANDS = [
    (
        "presets",
        cmd_presets,
        add_presets_args,
        "list the presets: one per cell of the paper's table, with its number",
        "List the presets (the paper's hyper-parameters and number for each table cell).",
    ),
]
