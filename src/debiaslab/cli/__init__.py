"""The ``debiaslab`` command (and the paper's ``python train.py`` / ``python test.py``): one
module per command family, assembled here."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from debiaslab.cli import collect, data, demo, presets, report, sweep, train
from debiaslab.cli.common import Parser
from debiaslab.cli.presets import preset_defaults
from debiaslab.cli.train import METHOD_CHOICES, config_from_args
from debiaslab.errors import UserError
from debiaslab.version import __version__

__all__ = ["METHOD_CHOICES", "build_parser", "config_from_args", "main", "reference_main"]


def _add_commands(sub, commands) -> dict:
    parsers = {}
    for name, func, add_args, help_text, description in commands:
        parsers[name] = sub.add_parser(name, help=help_text, description=description)
        add_args(parsers[name])
        parsers[name].set_defaults(func=func)
    return parsers


def build_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="debiaslab",
        description=(
            "Train and evaluate debiased image classifiers: Vanilla, LfF, DisEnt and the later "
            "methods (JTT, LC, GroupDRO, LfF-BE, DisEnt-BE, DeNetDM)."
        ),
    )
    p.add_argument("--version", action="version", version=f"debiaslab {__version__}")
    p.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    parsers = _add_commands(sub, train.COMMANDS)
    d = sub.add_parser(
        "data", help="build datasets", description="Build datasets in the reference layout."
    )
    dsub = d.add_subparsers(dest="data_command", metavar="ACTION", parser_class=Parser)
    b = dsub.add_parser(
        "build",
        help="build a dataset",
        description="Build a dataset in the reference layout, with a fast cache and a manifest.",
    )
    _add_commands(
        b.add_subparsers(dest="build_dataset", metavar="DATASET", parser_class=Parser),
        data.BUILD_COMMANDS,
    )
    pv = dsub.add_parser(
        "preview",
        help="write a PNG grid of a dataset's biases",
        description="Write a PNG grid to look at a builder's output.",
    )
    _add_commands(
        pv.add_subparsers(dest="preview_dataset", metavar="DATASET", parser_class=Parser),
        data.PREVIEW_COMMANDS,
    )
    commands = [presets, sweep, collect, report, demo]
    _add_commands(sub, [c for module in commands for c in module.COMMANDS])
    p._train_parser = parsers["train"]
    return p


def _one_line_warnings() -> None:
    """debiaslab's own warnings print as one line, without the source line Python adds."""
    import warnings

    package = str(Path(__file__).resolve().parents[1])
    default = warnings.formatwarning

    def formatwarning(message, category, filename, lineno, line=None):
        if str(filename).startswith(package):
            return f"debiaslab: warning: {message}\n"
        return default(message, category, filename, lineno, line)

    warnings.formatwarning = formatwarning


def main(argv=None) -> int:
    _one_line_warnings()
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "preset", None):
        try:
            method = train.chosen_method(args)  # a method flag beside the preset wins
            parser._train_parser.set_defaults(**preset_defaults(args.preset, method))
        except UserError as e:
            print(f"debiaslab: error: {e}", file=sys.stderr)
            return 2
        args = parser.parse_args(argv)  # again: explicit flags override the preset's values
    if not hasattr(args, "func"):
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except UserError as e:
        if args.debug:
            raise
        print(f"debiaslab: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("debiaslab: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `debiaslab presets | head`: the reader left, nothing went wrong
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as e:  # the file system said no: a full disk, a permission, a path that is not what it should be
        if args.debug:
            raise
        where = f" ({e.filename})" if e.filename else ""
        print(
            f"debiaslab: error: {e.strerror or e}{where}; check the path, its permissions and the free space "
            "(--debug shows where it happened)",
            file=sys.stderr,
        )
        return 2


def reference_main(command: str, argv=None) -> int:
    """``python train.py ...`` / ``python test.py ...`` from the repo root: the paper's commands."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    return main((["--debug"] if debug else []) + [command] + argv)
