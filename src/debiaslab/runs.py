"""A run's folder made ready to train (``open_run``): fresh, resumed from its last checkpoint, or
done (the finished run of the same config and data, read back); and a run that stops on an error
marked FAILED (``marked_failed_on_error``). The folder's format is ``rundir.RunDir``'s."""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import sys
from pathlib import Path

import torch

from debiaslab import checkpoints
from debiaslab.config import RUNTIME_FIELDS, TrainConfig
from debiaslab.data.checks import check_bundle
from debiaslab.data.splits import DatasetBundle, Split, data_id
from debiaslab.errors import UserError
from debiaslab.logging import require_wandb
from debiaslab.methods import METHODS
from debiaslab.methods.base import StagePlan
from debiaslab.models import DATASET_MODEL
from debiaslab.preflight import check_batch_size, check_models, setting_warnings
from debiaslab.prepare import load_data, resolve_device
from debiaslab.rundir import RunDir


@dataclasses.dataclass
class OpenedRun:
    """A run made ready to train: its resolved config, device, data and directory, the
    checkpoint it resumes from (None: fresh), or ``done``, the results of a finished one."""

    cfg: TrainConfig
    device: torch.device | None = None
    bundle: DatasetBundle | None = None
    run_dir: Path | None = None
    state: dict | None = None
    done: dict | None = None


def open_run(cfg: TrainConfig, bundle: DatasetBundle | None = None, load=load_data) -> OpenedRun:
    """Resolve and check ``cfg``, read and check its data (``bundle``, else ``load(cfg)``) and
    make its directory ready: fresh (emptied), resumed (its last checkpoint read) or done (the
    finished run of the same config and data: its results read, nothing else touched)."""
    cfg = cfg.resolved()
    if cfg.model is None:
        cfg.model = DATASET_MODEL.get(cfg.dataset, "resnet18")
    cfg.validate()
    device = resolve_device(cfg.device)
    if cfg.wandb:
        require_wandb()
    if bundle is None:
        bundle = load(cfg)  # before the run directory exists: bad data leaves nothing behind
    bundle = bundle.with_checksums()
    check_bundle(bundle)
    run = RunDir(cfg.run_dir())
    mode, state = _existing_run(cfg, run, bundle.checksums())
    if mode == "done":
        print(
            f"{cfg.run_dir()} already holds this finished run, of these settings on this data "
            f"(data {data_id(bundle.checksums())}); reusing it, not retraining (pass --overwrite "
            "to retrain)"
        )
        return OpenedRun(cfg, done=run.read_json(RunDir.RESULTS))
    method_cls = METHODS[cfg.method]
    bias_labels_for(method_cls, bundle.train, bundle.name)  # refused before anything is written
    check_models(method_cls, cfg, bundle)
    check_batch_size(cfg, bundle)
    if mode == "fresh":
        try:
            run.create_empty()
        except OSError as e:
            raise UserError(
                f"cannot create the run directory {run} ({e.strerror}); check --log_dir "
                f"{cfg.log_dir}: it must be a writable folder"
            ) from None
    else:
        run.reopen()
        print(f"resuming {run} from step {state['step']}")
    for line in setting_warnings(cfg):
        print(f"warning: {line}", file=sys.stderr)
    return OpenedRun(cfg, device, bundle, run.path, state)


def _existing_run(cfg: TrainConfig, run: RunDir, checksums: dict) -> tuple[str, dict | None]:
    """("fresh", None), ("done", None) for a finished identical run, or ("resume", checkpoint).

    A run's identity is its config and its data: ``checksums`` (split -> sha256 of images,
    targets and biases) must equal those its config.json recorded. Refuses a directory that
    holds a different run. An unfinished run of the same config and data resumes from its last
    checkpoint (or starts again if it never saved one); with ``cfg.resume`` a finished run also
    continues when ``--num_steps`` grew.
    """
    if run.is_empty() or cfg.overwrite:
        return "fresh", None
    try:
        record = run.read_config()
        old = TrainConfig.from_saved(record["config"]).to_dict()
    except (OSError, ValueError, KeyError, TypeError):
        raise UserError(
            f"{run} exists but holds no readable {RunDir.CONFIG}, so it cannot be resumed; "
            "pass another --exp / exp= (or --log_dir / log_dir=), or --overwrite / overwrite=True "
            "to replace it"
        ) from None
    _check_same_run(run, old, cfg)
    _check_same_data(run, (record.get("data") or {}).get("sha256"), checksums)
    finished = run.results_file.exists()
    if finished and not (cfg.resume and cfg.num_steps > old["num_steps"]):
        return "done", None
    state = checkpoints.load_for_resume(run.path)
    if state is None:
        return "fresh", None
    if state["step"] > StagePlan(METHODS[cfg.method].stages(cfg)).total:
        raise UserError(
            f"{run} is at step {state['step']}, beyond --num_steps {cfg.num_steps} (and the "
            "method's earlier stages); raise --num_steps"
        )
    return "resume", state


def _check_same_run(run: RunDir, old: dict, cfg: TrainConfig) -> None:
    """Refuses to reuse or resume ``run`` with settings other than those it was trained with
    (``num_steps`` aside under ``cfg.resume``: more steps of the same run)."""
    ignore = {"num_steps"} if cfg.resume else set()
    if _comparable(old, ignore) == _comparable(cfg.to_dict(), ignore):
        return
    diff = sorted(k for k in _comparable(old, ignore) if old.get(k) != cfg.to_dict().get(k))
    raise UserError(
        f"{run} already holds a different run (differs in {', '.join(diff[:5])}); pass "
        "another --exp / exp= (or --log_dir / log_dir=) to keep both, or --overwrite / "
        "overwrite=True to replace it"
        + (
            "; for more steps of the same run, --resume / resume=True"
            if diff == ["num_steps"]
            else ""
        )
    )


def _check_same_data(run: RunDir, recorded: dict | None, checksums: dict) -> None:
    """Refuses to reuse or resume ``run`` on data other than the data it trained on."""
    if recorded is None:  # no run has been written without checksums; nothing to compare
        return
    changed = [name for name in checksums if recorded.get(name) != checksums[name]]
    if changed:
        shown = ", ".join(
            f"{name} {str(recorded.get(name))[:8]} there, {checksums[name][:8]} now"
            for name in changed
        )
        raise UserError(
            f"{run} holds a run of these settings on other data (sha256 of {shown}); pass "
            "another --exp / exp= to keep both, or --overwrite / overwrite=True to replace it"
        )


def _comparable(d: dict, ignore=frozenset()) -> dict:
    return {k: v for k, v in d.items() if k not in RUNTIME_FIELDS and k not in ignore}


def bias_labels_for(method_cls, train_split: Split, name: str) -> dict:
    """The constructor argument of a method that trains on bias labels; refused without them."""
    if not method_cls.uses_bias_labels:
        return {}
    if train_split.biases is None:
        raise UserError(
            f"{method_cls.name} trains on bias labels, and the training split of {name} has none; "
            "choose a label-free method (e.g. lff, disent, jtt) or data with bias labels"
        )
    return {"train_biases": train_split.biases}


@contextlib.contextmanager
def marked_failed_on_error(run_dirs: list[Path]):
    """Never leave a results.json-less run that looks like something: on any error, mark every
    run of ``run_dirs`` FAILED (resumable) and re-raise; a full disk becomes a one-line error."""
    try:
        yield
    except BaseException as e:
        for run_dir in run_dirs:
            RunDir(run_dir).mark_failed(e)
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            run = RunDir(run_dirs[0])
            raise UserError(
                f"no space left on the device while writing {e.filename or run}; the last "
                f"complete checkpoint ({_last_saved(run)}) is intact: free space and rerun the "
                "same command to resume"
            ) from None
        raise


def _last_saved(run: RunDir) -> str:
    """The run's last full checkpoint and its step, as a failure message names them."""
    try:
        step = torch.load(run.last_checkpoint, weights_only=True)["step"]
        return f"{run.last_checkpoint}, step {step}"
    except Exception:
        return "none was written yet"
