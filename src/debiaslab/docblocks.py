"""Figures in the docs, each printed by the command its block names.

A page keeps its figures in blocks that name the command printing them, run from the repository
root on committed runs or committed raw output::

    <!-- figures: debiaslab collect docs/results/cmnist_runs -->
    ...what that command prints, verbatim...
    <!-- /figures -->

``python scripts/doc_figures.py [PAGE ...]`` reruns every block's command and writes what it
prints; ``--check`` only compares, and also lists figures written outside any block (prose that
no command prints). ``debiaslab collect ... --into PAGE`` rewrites the block of that command.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
import subprocess
from collections.abc import Callable
from pathlib import Path

from debiaslab.errors import UserError

BLOCK = re.compile(r"<!-- figures: (?P<command>.+?) -->\n(?P<body>.*?)<!-- /figures -->", re.S)
LEGACY_BEGIN, LEGACY_END = "<!-- collect:begin -->\n", "<!-- collect:end -->"
# a measured figure in prose: a decimal (12.34, -0.5, 1.24x, 3.5%) or a percentage (17%); not a
# ratio folder (0.5pct), a version (2.14.1), or anything in `code`
FIGURE = re.compile(r"(?<![\w.])[-+−]?\d+(?:,\d{3})*\.\d+(?:x|%)?(?![\w.])|(?<![\w.])\d+%")
SHELL = re.compile(r"[|;&<>$]")  # a command that needs a shell (a pipe, ...)
NOT_PROSE = re.compile(r"```.*?```|`[^`\n]*`|\]\([^)]*\)|<!--.*?-->", re.S)


def run(command: str, root: Path) -> str:
    """What ``command`` prints, run from ``root``: a plain ``debiaslab`` command in this
    process, anything else (a pipe, a script) in a shell. A command that fails is a UserError naming it."""
    argv = shlex.split(command)
    if argv[0] == "debiaslab" and not SHELL.search(command):
        from debiaslab.cli import main

        out, here = io.StringIO(), Path.cwd()
        os.chdir(root)  # contextlib.chdir needs Python 3.11
        try:
            with contextlib.redirect_stdout(out):
                code = main(argv[1:])
        finally:
            os.chdir(here)
        if code:
            raise UserError(f"`{command}` exited with {code}")
        return out.getvalue()
    done = subprocess.run(command, shell=True, cwd=root, capture_output=True, text=True)
    if done.returncode:
        raise UserError(f"`{command}` exited with {done.returncode}: {done.stderr.strip()[-300:]}")
    return done.stdout


def body(command: str, printed: str) -> str:
    """A block's body: the command, shown where the page renders (the markers are comments),
    then what it printed."""
    return f"*Printed by* `{command}`:\n\n{printed}"


def refresh(text: str, root: Path, only: Callable[[str], bool] = lambda command: True) -> str:
    """``text`` with the body of every block whose command passes ``only`` printed anew."""

    def redo(m: re.Match) -> str:
        command = m["command"]
        new = body(command, run(command, root)) if only(command) else m["body"]
        return f"<!-- figures: {command} -->\n{new}<!-- /figures -->"

    return BLOCK.sub(redo, text)


def stale(text: str, root: Path) -> list[str]:
    """The commands of the blocks of ``text`` whose body is not what the command prints now."""
    return [
        m["command"]
        for m in BLOCK.finditer(text)
        if body(m["command"], run(m["command"], root)) != m["body"]
    ]


def loose_figures(text: str) -> list[str]:
    """Figures written outside any block (and outside code): prose that no command prints."""
    prose = NOT_PROSE.sub(" ", BLOCK.sub(" ", text))
    return [m.group(0) for m in FIGURE.finditer(prose)]


def replace_block(doc: Path, printed: str, mine: Callable[[str], bool]) -> str:
    """``doc`` with ``printed`` in each block whose command passes ``mine`` (or, in a page of
    the older form, between its collect:begin and collect:end markers)."""
    try:
        text = doc.read_text()
    except OSError as e:
        raise UserError(f"cannot read {doc}: {e.strerror}") from None
    if any(mine(m["command"]) for m in BLOCK.finditer(text)):

        def put(m: re.Match) -> str:
            if not mine(m["command"]):
                return m.group(0)
            return (
                f"<!-- figures: {m['command']} -->\n{body(m['command'], printed)}<!-- /figures -->"
            )

        return BLOCK.sub(put, text)
    start, end = text.find(LEGACY_BEGIN), text.find(LEGACY_END)
    if start < 0 or end < start:
        raise UserError(
            f"{doc} has no block of this command ('<!-- figures: COMMAND -->' ... "
            "'<!-- /figures -->', each marker on its own line); add one where the table goes"
        )
    return text[: start + len(LEGACY_BEGIN)] + printed + text[end:]
