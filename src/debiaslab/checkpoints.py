"""A run's checkpoints: the full training state for exact resumption, and the best models per rule.

- ``checkpoint_last.pt``: everything needed to continue bit for bit (models, optimizers, LR
  schedulers, per-sample state, sampler position, every generator and global RNG state, the
  pending log accumulators). With ``keep_checkpoints = k > 1`` the k - 1 previous ones stay as
  ``checkpoint_step<N>.pt``; older ones are deleted, so a run holds a bounded number of files.
- ``checkpoint_<rule>.pt``: the models picked by each selection rule (``metrics.SELECTION_RULES``).
  Rules that pick the same models at the same step share one file through hard links (the rule
  is the file's name, not its content), so a run's disk use grows with the distinct picks, not
  with the number of rules; a rule that moves on is renamed over its own link only.

Every file is written to a temporary file in the same folder, fsynced and renamed into place
(``io.atomic_torch_save``): a kill or a full disk during a save leaves the previous file valid.
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch

from debiaslab.errors import UserError
from debiaslab.io import atomic_torch_save
from debiaslab.rundir import RunDir

FORMAT = 2


def rng_state() -> dict:
    """Every global RNG state, in types that ``torch.load(weights_only=True)`` accepts."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "python": _to_lists(random.getstate()),
        "numpy": [
            name,
            torch.from_numpy(keys.astype(np.int64)),
            int(pos),
            int(has_gauss),
            float(gauss),
        ],
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_to_tuples(state["python"]))
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_lists(x):
    return [_to_lists(v) for v in x] if isinstance(x, (tuple, list)) else x


def _to_tuples(x):
    return tuple(_to_tuples(v) for v in x) if isinstance(x, list) else x


def save_full(run_dir: Path, state: dict, keep: int, previous_step: int | None) -> None:
    """Write ``state`` as ``checkpoint_last.pt``, keeping the ``keep - 1`` previous full checkpoints."""
    run = RunDir(run_dir)
    last = run.last_checkpoint
    if keep > 1 and previous_step is not None and last.exists():
        kept = run.step_checkpoint(previous_step)
        if not kept.exists():
            try:
                os.link(last, kept)  # the old file stays reachable under its step; no copy
            except OSError:
                atomic_torch_save(torch.load(last, map_location="cpu", weights_only=True), kept)
    atomic_torch_save({"kind": "full", "format": FORMAT, **state}, last)
    for _, old in run.step_checkpoints()[max(keep - 1, 0) :]:
        old.unlink(missing_ok=True)


def save_models(run_dir: Path, rules: list[str], state: dict) -> None:
    """Write one pick as ``checkpoint_<rule>.pt`` for every rule in ``rules``: once, then linked."""
    run = RunDir(run_dir)
    first = run.checkpoint(rules[0])
    atomic_torch_save({"kind": "models", "format": FORMAT, **state}, first)
    for rule in rules[1:]:
        _link_over(first, run.checkpoint(rule))


def _link_over(source: Path, target: Path) -> None:
    """``target`` becomes another name of ``source``, atomically (a link, renamed into place);
    a file system without hard links gets a copy."""
    tmp = target.with_name(f".{target.name}.link")
    tmp.unlink(missing_ok=True)
    try:
        os.link(source, tmp)
    except OSError:
        shutil.copyfile(source, tmp)
    os.replace(tmp, target)


def rule_of(path: Path, blob: dict) -> str:
    """The rule a models file holds the pick of: its name (files written before picks were shared
    recorded it inside)."""
    named = RunDir.rule_in_name(path)
    if blob.get("kind") == "models" and "rule" not in blob and named:
        return named
    return blob.get("rule", "last")


def load_for_resume(run_dir: Path) -> dict | None:
    """The newest full checkpoint that loads, or None when the run has none.

    An unreadable newest file (e.g. truncated by a failing disk) falls back to the previous kept one;
    if none loads, the run cannot be resumed and the error says how to restart it.
    """
    errors = []
    for path in RunDir(run_dir).full_checkpoints():
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            if state.get("kind") == "full" and state.get("format") == FORMAT:
                return state
            errors.append(f"{path.name}: written by another version of debiaslab")
        except Exception as e:
            errors.append(f"{path.name}: {type(e).__name__}")
    if errors:
        raise UserError(
            f"cannot resume {run_dir}: no loadable checkpoint ({'; '.join(errors)}); "
            "pass --overwrite to start this run again"
        )
    return None
