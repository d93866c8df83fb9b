"""What the commands share: a parser with one-line errors, the metrics table, the data flags."""

from __future__ import annotations

import argparse
from pathlib import Path

from debiaslab.config import PALETTE_CHOICES


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (exit code 2)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}{self._closest(message)} (see --help)\n")

    def _closest(self, message: str) -> str:
        """``; did you mean X?`` for a mistyped choice or flag, the nearest known one."""
        import re

        from debiaslab.errors import closest

        choice = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
        flag = re.search(r"unrecognized arguments: (--[^\s=]+)", message)
        if choice:
            word, known = choice[1], re.findall(r"'([^']*)'", choice[2])
        elif flag:
            word, known = flag[1], sorted(_option_strings(self))
            if word in known:  # a flag of another command, not a typo
                return self._elsewhere(word)
        else:
            return ""
        close = closest(word, known)
        return f"; did you mean {close[0]}?" if close else ""

    def _elsewhere(self, flag: str) -> str:
        import sys

        owners = [name for name, sub in _subcommands(self) if flag in _option_strings(sub)]
        hint = f"; {flag} is a flag of debiaslab {' and '.join(owners)}"
        if sys.argv[1:2] == ["sweep"] and "train" in owners:
            hint += f", which a sweep takes as --set {flag[2:]}=VALUE"
        return hint


def _subcommands(parser: argparse.ArgumentParser) -> list:
    return [
        item
        for action in parser._actions
        if isinstance(action, argparse._SubParsersAction)
        for item in action.choices.items()
    ]


def _option_strings(parser: argparse.ArgumentParser) -> set[str]:
    """Every flag of ``parser`` and of its subcommands (an unknown flag of a subcommand is
    reported by the top parser)."""
    found = set()
    for action in parser._actions:
        found |= {s for s in action.option_strings if s.startswith("--")}
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found |= _option_strings(sub)
    return found


def _fmt(v) -> str:
    return "   n/a" if v is None else f"{100 * v:6.2f}"


def metrics_table(rows: list[tuple[str, dict]]) -> str:
    width = max([28] + [len(name) for name, _ in rows])
    head = f"{'':{width}s} {'acc':>6s} {'align':>6s} {'confl':>6s} {'unbias':>6s} {'worst':>6s}"
    lines = [head]
    for name, m in rows:
        lines.append(
            f"{name:{width}s} {_fmt(m['accuracy'])} {_fmt(m['aligned'])} {_fmt(m['conflicting'])} "
            f"{_fmt(m['unbiased'])} {_fmt(m['worst_group'])}"
        )
    return "\n".join(lines)


def add_data_args(g) -> None:
    g.add_argument(
        "--dataset",
        default=None,
        help="dataset folder under --data_dir: cmnist, cifar10c, bffhq, bar "
        "(default: cmnist; with --manifest / --image_folder: that file's or folder's name)",
    )
    g.add_argument(
        "--percent",
        default="1pct",
        help="ratio of bias-conflicting training samples, a folder name such as 0.5pct, 1pct, "
        "2pct, 5pct (default: 1pct, as the reference)",
    )
    g.add_argument(
        "--data_dir",
        default="dataset",
        help="folder holding <dataset>/ in the reference layout (default: dataset)",
    )
    t = g.add_mutually_exclusive_group()
    t.add_argument(
        "--use_type0",
        action="store_true",
        help="cifar10c: corruption type 0 in <data_dir>/cifar10c (the default)",
    )
    t.add_argument(
        "--use_type1",
        action="store_true",
        help="cifar10c: corruption type 1 in <data_dir>/cifar10c_type1",
    )
    u = g.add_mutually_exclusive_group()
    u.add_argument(
        "--manifest",
        default=None,
        help="your own dataset: a CSV with columns path, target and optionally bias, split (see docs/datasets.md)",
    )
    u.add_argument(
        "--image_folder",
        default=None,
        help="your own dataset: a folder with train/<class>/, test/<class>/ and optionally valid/<class>/ images",
    )
    g.add_argument(
        "--image_size",
        type=int,
        default=None,
        help="resize every image to N x N once, at load time (default per dataset: 32 cifar10c, "
        "224 bffhq and bar, none otherwise)",
    )
    g.add_argument(
        "--palette",
        choices=PALETTE_CHOICES,
        default=None,
        help="cmnist: the colours the data must have, read back from its images: disent (the default; the "
        "paper's data), lff (LfF's protocol) or any (whatever the folder holds); a folder of the other palette "
        "is refused",
    )


def data_config(args) -> dict:
    """The TrainConfig fields that say which dataset to read."""
    dataset = args.dataset
    if dataset is None:
        source = args.manifest or args.image_folder
        dataset = Path(source).resolve().stem if source else "cmnist"
    return dict(
        dataset=dataset,
        percent=args.percent,
        data_dir=args.data_dir,
        corruption_type=1 if args.use_type1 else 0,
        manifest=args.manifest,
        image_folder=args.image_folder,
        image_size=args.image_size,
        palette=args.palette,
    )
