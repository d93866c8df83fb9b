"""Where a run's numbers go: a JSON-lines log always, tensorboard and wandb when asked for."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from debiaslab.errors import UserError
from debiaslab.io import atomic_write_text
from debiaslab.rundir import RunDir


def _flat(prefix: str, d: dict) -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}/{k}" if prefix else k
        if isinstance(v, dict):
            out.update(_flat(key, v))
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[key] = v
    return out


class RunLogger:
    def __init__(
        self,
        run_dir: Path,
        config: dict,
        tensorboard: bool = False,
        wandb: bool = False,
        wandb_project: str = "debiaslab",
        name: str | None = None,
        resume_step: int = 0,
    ):
        """``resume_step`` > 0: the run continues from that step; later records (logged before a kill) are dropped."""
        self.path = RunDir(run_dir).log_file
        if resume_step:
            self._truncate(resume_step)
        self.file = open(self.path, "a", buffering=1)
        self.tb = None
        self.wandb = None
        if wandb:
            self.wandb = start_wandb(run_dir, config, wandb_project, name)
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(
                log_dir=str(RunDir(run_dir).tensorboard_dir),
                purge_step=resume_step + 1 if resume_step else None,
            )

    def _truncate(self, step: int) -> None:
        """Keep the records up to ``step``; a line cut short by a kill is dropped."""
        if not self.path.exists():
            return
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                if json.loads(line)["step"] <= step:
                    kept.append(line)
            except (ValueError, KeyError, TypeError):
                continue
        atomic_write_text(self.path, "".join(f"{line}\n" for line in kept))

    def log(self, record: dict) -> None:
        """``record`` has a ``step`` and a ``kind`` ("train" / "eval"); nested dicts are flattened for tb/wandb."""
        self.file.write(json.dumps(record) + "\n")
        step = record["step"]
        scalars = _flat(
            record["kind"], {k: v for k, v in record.items() if k not in ("step", "kind")}
        )
        if self.tb is not None:
            for k, v in scalars.items():
                self.tb.add_scalar(k, v, step)
        if self.wandb is not None:
            self.wandb.log(scalars, step=step)

    def close(self) -> None:
        self.file.close()
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()


def require_wandb():
    """Import wandb (only when asked for) or fail with the fix."""
    try:
        import wandb
    except ImportError:
        raise UserError(
            "--wandb needs the wandb package, which is not installed: "
            "pip install 'debiaslab[wandb]' (or drop --wandb)"
        ) from None
    return wandb


def start_wandb(run_dir, config: dict, project: str, name: str | None):
    wandb = require_wandb()
    # Without credentials, log offline (sync later with `wandb sync`) instead of prompting.
    mode = os.environ.get("WANDB_MODE")
    if mode is None:
        netrc = Path.home() / ".netrc"
        has_key = "WANDB_API_KEY" in os.environ or (
            netrc.exists() and "api.wandb.ai" in netrc.read_text(errors="ignore")
        )
        mode = "online" if has_key else "offline"
    return wandb.init(project=project, name=name, config=config, dir=str(run_dir), mode=mode)


class StepWindow:
    """What the steps since the last boundary left on the device, read only at boundaries.

    The loss terms of applied steps are summed on the device, one running sum per term name (mean
    per train-log record); each step's flags are kept so that, at the next boundary, one host read
    says which steps did not apply and which of their terms were not finite.
    """

    def __init__(self, sums: dict | None = None, count: int = 0):
        self.names: list[str] = []
        self.sums: torch.Tensor | None = None  # [len(names)]
        self.count = count  # applied steps in the sums: an int or a device tensor
        self.flags: list[tuple[int, tuple[str, ...], torch.Tensor, torch.Tensor]] = []
        self._slots: dict[tuple[str, ...], torch.Tensor] = {}
        for name, value in (sums or {}).items():
            self._slots_of((name,), value.device)
            self.sums[-1] = value

    def _slots_of(self, names: tuple[str, ...], device) -> torch.Tensor:
        """Where the terms ``names`` sit in ``sums``; a name seen for the first time gets a new slot."""
        if names not in self._slots:
            new = [n for n in names if n not in self.names]
            if new or self.sums is None:
                zeros = torch.zeros(len(new), device=device)
                self.sums = zeros if self.sums is None else torch.cat([self.sums, zeros])
                self.names += new
            self._slots[names] = torch.tensor([self.names.index(n) for n in names], device=device)
        return self._slots[names]

    def add(self, step: int, out) -> None:
        """Fold in a ``StepOutput`` of step ``step`` (1-based)."""
        slots = self._slots_of(out.names, out.values.device)
        self.sums.index_add_(0, slots, torch.where(out.applied, out.values, 0.0))
        self.count = out.applied.to(torch.int64) + self.count
        self.flags.append((step, out.names, out.finite, out.applied))

    def not_applied(self) -> list[tuple[int, list[str]]]:
        """(step, non-finite terms) of every step since the last call that did not apply."""
        flags, self.flags = self.flags, []
        if not flags:
            return []
        applied = torch.stack([f[3] for f in flags]).tolist()
        return [
            (step, [n for n, ok in zip(names, finite.tolist()) if not ok])
            for (step, names, finite, _), ok in zip(flags, applied)
            if not ok
        ]

    def take_means(self) -> dict[str, float] | None:
        """The mean of each term over the applied steps since the last call, or None if none applied."""
        count, sums = int(self.count), self.sums
        names, self.names, self.sums, self.count, self._slots = self.names, [], None, 0, {}
        return {n: float(v) / count for n, v in zip(names, sums.tolist())} if count else None

    def state_dict(self) -> dict:
        sums = {} if self.sums is None else dict(zip(self.names, self.sums.detach().cpu().unbind()))
        return {"log_sums": sums, "log_count": int(self.count)}
