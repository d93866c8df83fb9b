"""The CLI reference page of the documentation, generated from the parsers themselves (so a flag
cannot be missing from it: tests/test_docs.py checks every option of every command)."""

from __future__ import annotations

import argparse


def commands(parser: argparse.ArgumentParser, prefix: str = "debiaslab"):
    """(command line, parser) of every command, depth first: ``debiaslab train``,
    ``debiaslab data build cmnist``, ..."""
    yield prefix, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from commands(sub, f"{prefix} {name}")


def cli_reference() -> str:
    """Markdown: one section per command with its ``--help``, widened so lines do not wrap."""
    import os

    from debiaslab.cli import build_parser

    os.environ.setdefault("COLUMNS", "110")
    parts = [
        "# Command-line reference",
        "",
        "Generated from the parsers (`src/debiaslab/clidoc.py`) when the site is built; the same",
        "text as `--help`. The paper's own entry points (`python train.py ...`, `python test.py ...`)",
        "take the flags of `debiaslab train` and `debiaslab test`.",
        "",
    ]
    for line, parser in commands(build_parser()):
        parts += [f"## `{line}`", "", "```text", parser.format_help().rstrip(), "```", ""]
    return "\n".join(parts)
