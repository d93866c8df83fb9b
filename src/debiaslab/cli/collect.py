"""``debiaslab collect``: the results table of every run under a folder (``debiaslab.collect``),
printed, written to a file or into its block of a docs page."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from debiaslab.errors import UserError
from debiaslab.selection import CHOOSE_RULES, TABLE_RULES, selection_names


def cmd_collect(args) -> int:
    from debiaslab.collect import collect
    from debiaslab.io import atomic_write_bytes

    if args.gaps and (args.format != "markdown" or args.rules):
        raise UserError(
            "--gaps prints its own markdown table of every rule; drop --format / --rules"
        )
    if args.choose and (args.gaps or args.format != "markdown" or args.rules):
        raise UserError(
            "--choose prints its own markdown table of one rule; drop --gaps / --format / --rules"
        )
    if args.per_run and (args.gaps or args.choose or args.format != "markdown"):
        raise UserError(
            "--per_run prints its own markdown table; drop --gaps / --choose / --format"
        )
    text = collect(
        args.dir, args.format, args.rules, gaps=args.gaps, choose=args.choose, per_run=args.per_run
    )
    if args.into:
        from debiaslab.docblocks import replace_block

        page = replace_block(Path(args.into), text, lambda command: _same_collect(command, args))
        atomic_write_bytes(Path(args.into), page.encode())
        print(f"table updated in {args.into}")
    elif args.output:
        atomic_write_bytes(Path(args.output), text.encode())
        print(f"table written to {args.output}")
    else:
        sys.stdout.write(text)
    return 0


def _same_collect(command: str, args) -> bool:
    """Whether a docs block's ``command`` is this collect (same folder and table), whatever its
    --into / --output."""
    import shlex

    argv = shlex.split(command)
    if argv[:2] != ["debiaslab", "collect"]:
        return False
    parser = argparse.ArgumentParser(add_help=False)
    add_collect_args(parser)
    other = parser.parse_args(argv[2:])
    fields = ("format", "rules", "gaps", "choose", "per_run")
    same = [Path(d).resolve() for d in other.dir] == [Path(d).resolve() for d in args.dir]
    return same and all(getattr(other, f) == getattr(args, f) for f in fields)


RULE_CHOICES = selection_names()


def add_collect_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "dir",
        nargs="+",
        help="sweep --out folders, or any folders holding run directories (a run found in two "
        "counts once)",
    )
    p.add_argument(
        "--format",
        choices=["markdown", "csv", "latex"],
        default="markdown",
        help="output format (default: markdown)",
    )
    p.add_argument(
        "--rules",
        nargs="+",
        default=None,
        choices=[*RULE_CHOICES, "shipped", "today_default"],
        metavar="RULE",
        help=f"selection rules to show, of {', '.join(RULE_CHOICES)} (default: {' '.join(TABLE_RULES)})",
    )
    p.add_argument(
        "--gaps",
        action="store_true",
        help="instead of the results tables: each selection rule's "
        "test score minus the oracle's and minus last's, per cell and over cells (runs from before a "
        "rule existed are replayed from their eval logs)",
    )
    p.add_argument(
        "--choose",
        default=None,
        choices=CHOOSE_RULES,
        metavar="RULE",
        help="instead of the results tables: for each dataset, ratio and method, the setting "
        "(e.g. of a hyperparameter grid) whose runs score highest on the validation score RULE "
        f"maximises, of {', '.join(CHOOSE_RULES)}; the test scores are shown, never used",
    )
    p.add_argument(
        "--per_run",
        action="store_true",
        help="instead of the results tables: one row per finished run (seed by seed), a column "
        "per rule of --rules (default: shipped and the table rules), each figure marked by what "
        "it read",
    )
    p.add_argument("--output", default=None, help="write to this file instead of stdout")
    p.add_argument(
        "--into",
        default=None,
        metavar="DOC",
        help="write the table into DOC (e.g. docs/results/cmnist.md), in the block that names "
        "this command ('<!-- figures: debiaslab collect ... -->' ... '<!-- /figures -->'); the "
        "rest of DOC stays",
    )


COMMANDS = [
    (
        "collect",
        cmd_collect,
        add_collect_args,
        "the results table of every run under a folder, beside the paper's numbers",
        "Read every run under DIR and print mean ± std over seeds per cell, one table per "
        "selection rule, with the paper's "
        "number and the difference; missing and unfinished runs are shown as such.",
    ),
]
