"""Where a run's numbers go: a JSON-lines log always, tensorboard and wandb when asked for."""
from __future__ import annotations

import json
import os
from pathlib import Path

from debiaslab import UserError
from debiaslab.io import atomic_write_text


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
    def __init__(self, run_dir: Path, config: dict, tensorboard: bool = False, wandb: bool = False,
                 wandb_project: str = "debiaslab", name: str | None = None, resume_step: int = 0):
        """``resume_step`` > 0: the run continues from that step; later records (logged before a kill) are dropped."""
        self.path = Path(run_dir) / "metrics.jsonl"
        if resume_step:
            self._truncate(resume_step)
        self.file = open(self.path, "a", buffering=1)
        self.tb = None
        self.wandb = None
        if wandb:
            self.wandb = start_wandb(run_dir, config, wandb_project, name)
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"), purge_step=resume_step + 1 if resume_step else None)

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
        scalars = _flat(record["kind"], {k: v for k, v in record.items() if k not in ("step", "kind")})
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
        raise UserError("--wandb needs the wandb package, which is not installed: "
                        "pip install 'debiaslab[wandb]' (or drop --wandb)") from None
    return wandb


def start_wandb(run_dir, config: dict, project: str, name: str | None):
    wandb = require_wandb()
    # Without credentials, log offline (sync later with `wandb sync`) instead of prompting.
    mode = os.environ.get("WANDB_MODE")
    if mode is None:
        netrc = Path.home() / ".netrc"
        has_key = "WANDB_API_KEY" in os.environ or (netrc.exists() and "api.wandb.ai" in netrc.read_text(errors="ignore"))
        mode = "online" if has_key else "offline"
    return wandb.init(project=project, name=name, config=config, dir=str(run_dir), mode=mode)
