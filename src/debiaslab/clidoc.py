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


def field_docs(cls) -> dict[str, str]:
    """The attribute docstrings of a dataclass (the string right below each field), by field."""
    import ast
    import inspect

    body = ast.parse(inspect.getsource(cls)).body[0].body
    docs = {}
    for node, after in zip(body, body[1:]):
        is_doc = isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
        if isinstance(node, ast.AnnAssign) and is_doc and isinstance(after.value.value, str):
            docs[node.target.id] = inspect.cleandoc(after.value.value)
    return docs


def options_reference() -> str:
    """Markdown: every ``TrainConfig`` field (``fit``'s options, ``train``'s flags) as a table
    row with its type, default and meaning."""
    import dataclasses

    from debiaslab.config import METHOD_FIELDS, METHOD_OPTIONS, TrainConfig

    docs = field_docs(TrainConfig)
    for name, option in METHOD_OPTIONS.items():  # declared by the methods (Method.options)
        docs[name] = f"{' and '.join(METHOD_FIELDS[name])}: {option.describe()}"
    rows = [
        "## Every option of `fit` (`TrainConfig`)",
        "",
        "Generated from `TrainConfig` (`src/debiaslab/config.py`). `None` takes the dataset's or "
        "the method's default, said in the meaning; `debiaslab train` takes the same names as "
        "flags.",
        "",
        "| option | type | default | meaning |",
        "|---|---|---|---|",
    ]
    for f in dataclasses.fields(TrainConfig):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        meaning = " ".join(docs[f.name].split()).replace("|", "\\|")
        kind = str(f.type).replace("|", "or")
        rows.append(f"| `{f.name}` | {kind} | `{default!r}` | {meaning} |")
    return "\n".join(rows) + "\n"
