"""Run one resolved config: the unit of work of a sweep, in a subprocess (local) or a Ray task.

``python -m debiaslab.runner '<config json>'`` trains it (a JSON list: a fused group); ``train``
itself skips a finished run and resumes an unfinished one, so running a config twice never loses
or repeats work.
"""

from __future__ import annotations

import json
import os
import sys


def set_threads(threads: int | None) -> None:
    if threads:
        import torch

        os.environ["OMP_NUM_THREADS"] = str(threads)
        torch.set_num_threads(threads)


def _enter(cwd: str | None) -> None:
    """Ray workers start elsewhere: relative data paths mean the driver's directory."""
    if cwd and os.path.isdir(cwd):
        os.chdir(cwd)


def run_config(cfg_dict: dict, threads: int | None = None, cwd: str | None = None) -> dict:
    """Train one config; returns {"status": "finished" | "error", "message": str}. Never raises on bad runs."""
    from debiaslab.config import TrainConfig
    from debiaslab.train import train

    _enter(cwd)
    set_threads(threads)
    out = _attempt(lambda: train(TrainConfig.from_dict(cfg_dict)))
    if "results" in out:
        out["last_primary"] = (out.pop("results")["selections"].get("last") or {}).get(
            "test_primary"
        )
    return out


def run_group(cfg_dicts: list[dict], threads: int | None = None, cwd: str | None = None) -> dict:
    """Train configs as one fused group (``group.train_group``); the status of the whole group
    ("error" if any run failed: each failed run is marked FAILED, the others finished)."""
    from debiaslab.config import TrainConfig
    from debiaslab.group import train_group

    _enter(cwd)
    set_threads(threads)
    out = _attempt(lambda: train_group([TrainConfig.from_dict(d) for d in cfg_dicts]))
    out.pop("results", None)
    return out


def _attempt(work) -> dict:
    """``work()`` as a status: finished (with its ``results``) or error (with the message)."""
    from debiaslab.errors import UserError

    try:
        results = work()
    except UserError as e:
        return {"status": "error", "message": str(e)}
    except Exception as e:  # noqa: BLE001 - a sweep reports a crashed run and goes on with the others
        return {"status": "error", "message": f"{type(e).__name__}: {e}"}
    return {"status": "finished", "message": "", "results": results}


def main(argv=None) -> int:
    """``python -m debiaslab.runner CONFIG``: one config (a JSON object) or a fused group of
    them (a JSON list)."""
    argv = sys.argv[1:] if argv is None else argv
    threads = int(os.environ["DEBIASLAB_THREADS"]) if os.environ.get("DEBIASLAB_THREADS") else None
    spec = json.loads(argv[0])
    out = run_group(spec, threads) if isinstance(spec, list) else run_config(spec, threads)
    if out["status"] != "finished":
        print(f"debiaslab: error: {out['message']}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
