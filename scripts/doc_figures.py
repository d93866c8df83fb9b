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
import sys
from pathlib import Path

from debiaslab.docblocks import loose_figures, refresh, stale

ROOT = Path(__file__).resolve().parents[1]


def pages() -> list[Path]:
    """The pages whose every figure must be printed by a command named beside it."""
    return sorted((ROOT / "docs" / "results").glob("*.md")) + [ROOT / "docs" / "speed.md"]


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
