"""Rewrite the committed run records under docs/ so that they name no folder of a machine.

Older runs recorded ``data.source`` as an absolute path (``/work/data/cmnist``) and some an
absolute ``config.log_dir``. This rewrites, in every committed ``config.json`` and
``results.json`` under ``docs/``:

- ``data.source`` to the path relative to the data root that runs record now: the dataset's
  folder under ``--data_dir`` (``cmnist``), the manifest's file name for ``--manifest``, ``.``
  for ``--image_folder``;
- an absolute ``config.log_dir`` to the folder the run is committed under, relative to the
  repository root (``docs/results/cmnist_later_runs`` for
  ``docs/results/cmnist_later_runs/cmnist/<exp>/config.json``).

Nothing else changes: the checksums (``data.sha256``) and every other byte stay as they are (a
file that ``json.dumps(..., indent=2)``, the format runs write, would not reproduce exactly is
refused). Values that are already relative are left alone, so running it again changes nothing.

    python scripts/rewrite_run_records.py            # rewrite, print what changed
    python scripts/rewrite_run_records.py --check    # change nothing; exit 1 if a file would change
"""

import argparse
import json
import subprocess
import sys
from pathlib import Path, PurePosixPath

ROOT = Path(__file__).resolve().parents[1]
NAMES = ("config.json", "results.json")


def record_files(root: Path = ROOT) -> list[Path]:
    """The committed config.json / results.json files under ``root/docs`` (every such file when
    ``root`` is not a git checkout)."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-z", "docs"], cwd=root, capture_output=True, check=True
        ).stdout.decode()
        paths = [root / p for p in listed.split("\0") if p]
    except (OSError, subprocess.CalledProcessError):
        paths = list((root / "docs").rglob("*.json"))
    return sorted(p for p in paths if p.name in NAMES and p.is_file())


def dump(record: dict) -> str:
    """A record as runs write it (``debiaslab.io.atomic_write_json``)."""
    return json.dumps(record, indent=2, sort_keys=False, default=str) + "\n"


def relative_source(source: str, config: dict) -> str:
    """``data.source`` relative to the data root the run named."""
    if not source.startswith("/"):
        return source
    if config.get("image_folder"):
        return "."
    return PurePosixPath(source).name  # the dataset's folder in --data_dir, or the manifest's name


def rewrite(path: Path, root: Path = ROOT) -> str | None:
    """The new text of the record at ``path``, or None when it needs no change."""
    text = path.read_text()
    record = json.loads(text)
    if dump(record) != text:
        raise SystemExit(f"{path}: not in the format runs write (indent=2); rewrite it by hand")
    config = record.get("config") or {}
    data = record.get("data") or {}
    if isinstance(data.get("source"), str):
        data["source"] = relative_source(data["source"], config)
    if isinstance(config.get("log_dir"), str) and config["log_dir"].startswith("/"):
        # <log_dir>/<dataset>/<exp>/config.json
        config["log_dir"] = path.parent.parent.parent.relative_to(root).as_posix()
    new = dump(record)
    return None if new == text else new


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--check", action="store_true", help="change nothing; exit 1 if a file would change"
    )
    args = parser.parse_args(argv)
    files = record_files()
    changed = 0
    for path in files:
        new = rewrite(path)
        if new is None:
            continue
        changed += 1
        if not args.check:
            path.write_text(new)
    verb = "would change" if args.check else "rewrote"
    print(f"{verb} {changed} of {len(files)} run records under docs/")
    return 1 if args.check and changed else 0


if __name__ == "__main__":
    sys.exit(main())
