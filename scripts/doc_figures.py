"""Rewrite (or, with --check, verify) every figure block of the docs pages.

Each block names the command that prints it (see src/debiaslab/docblocks.py); this reruns it from
the repository root, on the committed runs and raw outputs. --check changes nothing: it lists the
blocks whose command prints something else now, and figures written outside any block, and exits
1 if there is any.

    python scripts/doc_figures.py                       # every results page and docs/speed.md
    python scripts/doc_figures.py docs/results/cmnist.md
    python scripts/doc_figures.py --check
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from debiaslab.docblocks import BLOCK, body, loose_figures
from debiaslab.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
SHELL = re.compile(r"[|;&<>$]")  # a command that needs a shell (a pipe, ...)


def run(command: str, root: Path = ROOT) -> str:
    """What ``command`` prints, run from ``root``: a plain ``debiaslab`` command in this process
    (no interpreter start-up per block), anything else (a pipe, a script) in a shell. A command
    that fails is a UserError naming it."""
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


def refresh(text: str, root: Path = ROOT, only: Callable[[str], bool] = lambda c: True) -> str:
    """``text`` with the body of every block whose command passes ``only`` printed anew."""

    def redo(m: re.Match) -> str:
        command = m["command"]
        new = body(command, run(command, root)) if only(command) else m["body"]
        return f"<!-- figures: {command} -->\n{new}<!-- /figures -->"

    return BLOCK.sub(redo, text)


def stale(text: str, root: Path = ROOT) -> list[str]:
    """The commands of the blocks of ``text`` whose body is not what the command prints now."""
    return [
        m["command"]
        for m in BLOCK.finditer(text)
        if body(m["command"], run(m["command"], root)) != m["body"]
    ]


def pages() -> list[Path]:
    """The pages whose every figure must be printed by a command named beside it."""
    results = sorted((ROOT / "docs" / "results").glob("*.md"))
    return results + [ROOT / "docs" / "speed.md", ROOT / "docs" / "selection-own-data.md"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("pages", nargs="*", type=Path, help="default: docs/results/*.md, docs/speed.md")
    p.add_argument("--check", action="store_true", help="compare only; exit 1 on any difference")
    args = p.parse_args()
    problems = 0
    for page in args.pages or pages():
        text = page.read_text()
        if not args.check:
            page.write_text(refresh(text, ROOT))
            print(f"{page}: blocks rewritten")
            continue
        for command in stale(text, ROOT):
            print(f"{page}: the block of `{command}` is not what it prints now")
            problems += 1
        loose = loose_figures(text)
        if loose:
            print(f"{page}: figures outside any block: {', '.join(loose)}")
            problems += 1
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
