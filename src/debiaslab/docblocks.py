"""Figures in the docs, each printed by the command its block names.

A page keeps its figures in blocks that name the command printing them, run from the repository
root on committed runs or committed raw output::

    <!-- figures: debiaslab collect docs/results/cmnist_runs -->
    ...what that command prints, verbatim...
    <!-- /figures -->

``python scripts/doc_figures.py [PAGE ...]`` reruns every block's command and writes what it
prints; ``--check`` only compares, and also lists figures written outside any block (prose that
no command prints, ``loose_figures``). ``debiaslab collect ... --into PAGE`` rewrites the block of
that command (``replace_block``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from debiaslab.errors import UserError

BLOCK = re.compile(r"<!-- figures: (?P<command>.+?) -->\n(?P<body>.*?)<!-- /figures -->", re.S)
LEGACY_BEGIN, LEGACY_END = "<!-- collect:begin -->\n", "<!-- collect:end -->"
# a measured figure in prose: a decimal (12.34, -0.5, 1.24x, 3.5%) or a percentage (17%); not a
# ratio folder (0.5pct), a version (2.14.1), or anything in `code`
FIGURE = re.compile(r"(?<![\w.])[-+−]?\d+(?:,\d{3})*\.\d+(?:x|%)?(?![\w.])|(?<![\w.])\d+%")
NOT_PROSE = re.compile(r"```.*?```|`[^`\n]*`|\]\([^)]*\)|<!--.*?-->", re.S)


def body(command: str, printed: str) -> str:
    """A block's body: the command, shown where the page renders (the markers are comments),
    then what it printed."""
    return f"*Printed by* `{command}`:\n\n{printed}"


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
