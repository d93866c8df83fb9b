"""A run directory and a sweep folder as files on disk. ``RunDir`` owns a run folder's format (the
names of its files, how its config, results and status are written and read back, which of its
files are checkpoints), so that ``train``, the API, ``collect``, ``report`` and ``sweep`` read and
write the same folder without spelling it each their own way, nor importing the training loop."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

from debiaslab.io import atomic_write_json

PLAN_FILE = "sweep.json"  # a sweep folder's plan: every run it holds or will hold, with its config


class RunDir:
    """One run's folder: ``<log_dir>/<dataset>/<exp>``.

    - ``config.json``: written first, the run's identity (its resolved config, its data's
      checksums) and what it built; a folder with one is a run.
    - ``metrics.jsonl``: one JSON record per logged step (train, eval, stage_end, skip).
    - ``results.json``: written last; a run with one is finished.
    - ``FAILED``: a stopped run (resumable), one line saying how a rerun goes on.
    - ``checkpoint_last.pt``, ``checkpoint_step<N>.pt``: full checkpoints (``checkpoints.py``);
      ``checkpoint_<rule>.pt``: the models a selection rule picked.
    - ``w_snapshots.pt``, ``tensorboard/``: diagnostics; ``report/``: ``report``'s default output.
    """

    CONFIG = "config.json"
    RESULTS = "results.json"
    LOG = "metrics.jsonl"
    FAILED = "FAILED"
    W_SNAPSHOTS = "w_snapshots.pt"
    TENSORBOARD = "tensorboard"
    REPORT = "report"
    _STEP_FILE = re.compile(r"^checkpoint_step(\d+)\.pt$")
    _CHECKPOINT_FILE = re.compile(r"^checkpoint_(.+)\.pt$")

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __str__(self) -> str:
        return str(self.path)

    def __eq__(self, other) -> bool:
        return isinstance(other, RunDir) and other.path == self.path

    def __hash__(self) -> int:
        return hash(self.path)

    # -- paths ---------------------------------------------------------------------------------
    @property
    def config_file(self) -> Path:
        return self.path / self.CONFIG

    @property
    def results_file(self) -> Path:
        return self.path / self.RESULTS

    @property
    def log_file(self) -> Path:
        return self.path / self.LOG

    @property
    def failed_file(self) -> Path:
        return self.path / self.FAILED

    @property
    def w_snapshots_file(self) -> Path:
        return self.path / self.W_SNAPSHOTS

    @property
    def tensorboard_dir(self) -> Path:
        return self.path / self.TENSORBOARD

    @property
    def report_dir(self) -> Path:
        return self.path / self.REPORT

    def checkpoint(self, rule: str = "last") -> Path:
        """``checkpoint_<rule>.pt``: the models ``rule`` picked; ``last``: the full checkpoint."""
        return self.path / f"checkpoint_{rule}.pt"

    @property
    def last_checkpoint(self) -> Path:
        return self.checkpoint("last")

    def step_checkpoint(self, step: int) -> Path:
        """A kept older full checkpoint (``keep_checkpoints`` > 1), named by its step."""
        return self.path / f"checkpoint_step{step}.pt"

    def step_checkpoints(self) -> list[tuple[int, Path]]:
        """The kept older full checkpoints, newest first."""
        out = []
        for p in self.path.iterdir():
            m = self._STEP_FILE.match(p.name)
            if m:
                out.append((int(m.group(1)), p))
        return sorted(out, reverse=True)

    def full_checkpoints(self) -> list[Path]:
        """Every full checkpoint, newest first: the last, then the kept older ones."""
        last = [self.last_checkpoint] if self.last_checkpoint.exists() else []
        return last + [p for _, p in self.step_checkpoints()]

    def has_checkpoint(self) -> bool:
        """Whether any checkpoint was written (full or a rule's pick): a rerun resumes from it."""
        return any(self.path.glob("checkpoint*.pt"))

    @classmethod
    def rule_in_name(cls, path: str | os.PathLike) -> str | None:
        """The rule a ``checkpoint_<rule>.pt`` file is named by (None: another name)."""
        m = cls._CHECKPOINT_FILE.match(Path(path).name)
        return m.group(1) if m else None

    @classmethod
    def under(cls, root: Path) -> list[RunDir]:
        """Every run folder under ``root`` (a folder holding a config.json), in path order."""
        return [cls(p.parent) for p in sorted(Path(root).rglob(cls.CONFIG))]

    # -- reading -------------------------------------------------------------------------------
    def read_json(self, name: str) -> dict:
        """``name`` (``CONFIG``, ``RESULTS``) as it parses; OSError or ValueError where it cannot."""
        return json.loads((self.path / name).read_text())

    def read_config(self) -> dict:
        """config.json as it parses; OSError or ValueError where it cannot."""
        return self.read_json(self.CONFIG)

    def read_results(self) -> dict | None:
        """A finished run's ``results.json`` (None when the run has none or it does not parse)."""
        try:
            return self.read_json(self.RESULTS)
        except (OSError, ValueError):
            return None

    def read_record(self, name: str) -> dict:
        """``name`` (``CONFIG``, ``RESULTS``) as a dict; a damaged file is a UserError that names
        it and the way out."""
        from debiaslab.errors import UserError

        path = self.path / name
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            why = e.strerror if isinstance(e, OSError) else "not valid JSON (truncated?)"
            raise UserError(
                f"{path}: {why}; the run's record is damaged: retrain it (same command with "
                "--overwrite, or overwrite=True) or restore the file"
            ) from None
        if not isinstance(record, dict) or "config" not in record:
            raise UserError(
                f"{path} is not a debiaslab {name} (no config inside); restore the file"
            )
        return record

    def last_step(self) -> int:
        """The last step logged in ``metrics.jsonl`` (0 when none): read from its end, as a
        sweep polls it while the run writes."""
        try:
            with open(self.log_file, "rb") as f:
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

    def read_log(self, skip_damaged: bool = False) -> list:
        """The records of ``metrics.jsonl``, in order, blank lines left out; a line that does not
        parse (a write cut short) is left out with ``skip_damaged``, else a ValueError. A run
        without a readable log is an OSError."""
        records = []
        for line in self.log_file.read_text().splitlines():
            if not line:
                continue
            try:
                records.append(json.loads(line))
            except ValueError:
                if not skip_damaged:
                    raise
        return records

    def status(self) -> str:
        """finished | failed (stopped; resumable) | unfinished (running, or killed) | missing."""
        if self.results_file.exists():
            return "finished"
        if self.failed_file.exists():
            return "failed"
        if self.config_file.exists():
            return "unfinished"
        return "missing"

    def looks_like_run(self) -> bool:
        """Whether the folder holds what only a run writes (its config.json may be damaged)."""
        return any(p.exists() for p in (self.results_file, self.log_file, self.failed_file))

    def is_empty(self) -> bool:
        return not self.path.exists() or not any(self.path.iterdir())

    # -- writing -------------------------------------------------------------------------------
    def write_config(self, record: dict) -> None:
        atomic_write_json(self.config_file, record)

    def write_results(self, results: dict) -> None:
        """results.json, the last file a run writes: from now on the run is finished."""
        atomic_write_json(self.results_file, results)

    def create_empty(self) -> None:
        """The folder, emptied of an earlier run (an OSError where it cannot be made)."""
        if self.path.exists():
            shutil.rmtree(self.path)
        self.path.mkdir(parents=True)

    def reopen(self) -> None:
        """Ready to resume: no longer marked FAILED, without the half-written files of a killed
        save (the complete ones are in place) and without results (a grown ``num_steps``: the
        old results no longer hold)."""
        self.failed_file.unlink(missing_ok=True)
        for tmp in self.path.glob(".*.tmp"):
            tmp.unlink()
        self.results_file.unlink(missing_ok=True)

    def mark_failed(self, error: BaseException) -> None:
        """Mark the run FAILED, saying whether a rerun resumes it or starts it again; a folder
        that cannot be written to stays as it is (the error itself is raised on)."""
        saved = self.has_checkpoint()
        rerun = "resume from the last checkpoint" if saved else "start it again (no checkpoint yet)"
        try:
            self.failed_file.write_text(
                f"training did not finish ({type(error).__name__}); rerun the same command to "
                f"{rerun}\n"
            )
        except OSError:
            pass
