"""A run directory and a sweep folder as files on disk: what ``collect``, ``report`` and ``sweep``
read to know a run's state, without importing the training loop or the sweep."""

from __future__ import annotations

import json
import os
from pathlib import Path

PLAN_FILE = "sweep.json"  # a sweep folder's plan: every run it holds or will hold, with its config


def last_step(run_dir: Path) -> int:
    """The last step logged in ``metrics.jsonl`` (0 when none)."""
    path = run_dir / "metrics.jsonl"
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 8192))
            lines = f.read().splitlines()
    except OSError:
        return 0
    for line in reversed(lines):
        try:
            return int(json.loads(line)["step"])
        except (ValueError, KeyError, TypeError):
            continue
    return 0


def read_log(run_dir: Path, skip_damaged: bool = False) -> list:
    """The records of a run's ``metrics.jsonl``, in order, blank lines left out; a line that does
    not parse (a write cut short) is left out with ``skip_damaged``, else a ValueError. A run
    without a readable log is an OSError."""
    records = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        if not line:
            continue
        try:
            records.append(json.loads(line))
        except ValueError:
            if not skip_damaged:
                raise
    return records


def read_record(run_dir: Path, name: str) -> dict:
    """``name`` (config.json, results.json) of a run, as a dict; a damaged file is a UserError
    that names it and the way out."""
    from debiaslab.errors import UserError

    path = run_dir / name
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        why = e.strerror if isinstance(e, OSError) else "not valid JSON (truncated?)"
        raise UserError(
            f"{path}: {why}; the run's record is damaged: retrain it (same command with "
            "--overwrite, or overwrite=True) or restore the file"
        ) from None
    if not isinstance(record, dict) or "config" not in record:
        raise UserError(f"{path} is not a debiaslab {name} (no config inside); restore the file")
    return record


def read_results(run_dir: Path) -> dict | None:
    """A finished run's ``results.json`` (None when the run has none or it does not parse)."""
    try:
        return json.loads((run_dir / "results.json").read_text())
    except (OSError, ValueError):
        return None


def status(run_dir: Path) -> str:
    """finished | failed (stopped; resumable) | unfinished (running, or killed) | missing."""
    if (run_dir / "results.json").exists():
        return "finished"
    if (run_dir / "FAILED").exists():
        return "failed"
    if (run_dir / "config.json").exists():
        return "unfinished"
    return "missing"
