"""Reading, for the report: a run folder (its config, results and logged steps) as a ``RunData``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from debiaslab.config import TrainConfig
from debiaslab.errors import UserError
from debiaslab.rundir import RunDir


@dataclass
class RunData:
    path: Path
    meta: dict
    cfg: TrainConfig
    results: dict | None
    train: list[dict] = field(default_factory=list)
    evals: list[dict] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.cfg.method} {self.cfg.data_label()} seed {self.cfg.seed} ({self.path.name})"


def load_run(path: Path) -> RunData:
    path = Path(path)
    folder = RunDir(path)
    try:
        meta = folder.read_config()
        cfg = TrainConfig.from_saved(meta["config"])
    except (OSError, ValueError, KeyError, TypeError):
        raise UserError(
            f"{path} is not a debiaslab run directory (no readable {RunDir.CONFIG}); pass a folder "
            "written by debiaslab train or sweep"
        ) from None
    results = folder.read_json(RunDir.RESULTS) if folder.results_file.exists() else None
    run = RunData(path, meta, cfg, results)
    if folder.log_file.exists():
        for rec in folder.read_log(skip_damaged=True):
            (
                run.train
                if rec.get("kind") == "train"
                else run.evals
                if rec.get("kind") == "eval"
                else []
            ).append(rec)
    return run
