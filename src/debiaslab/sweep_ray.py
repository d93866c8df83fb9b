"""``debiaslab sweep --backend ray``: the same runs as Ray tasks (``pip install 'debiaslab[ray]'``).

Each task trains one unit of the sweep, a fused group of compatible runs
(``sweep_local.fused_units``, at most ``--fuse_max`` runs, one group per task) or a lone run,
asking for ``--cpus_per_run`` CPUs and ``--gpus_per_run`` GPUs. Tasks write to
the sweep's results folder, which must be visible at the same path on every node (a shared file
system); relative data paths are read from the driver's working directory, as with a local sweep.
Skip and resume work as locally: the driver skips finished runs and ``train`` resumes unfinished ones.
``sweep.BACKENDS`` names ``ray_backend`` and imports this module when a sweep asks for it.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from debiaslab.errors import UserError
from debiaslab.runner import run_config, run_group
from debiaslab.sweep import SweepOptions
from debiaslab.sweep_local import Progress, Run, fused_units, headline


def _ray():
    try:
        import ray
    except ImportError:
        raise UserError(
            "--backend ray needs Ray: pip install 'debiaslab[ray]' (or pip install ray)"
        ) from None
    return ray


def run_ray(
    runs: list[Run],
    out: Path,
    address: str | None,
    cpus_per_run: float | None,
    gpus_per_run: float | None,
    progress: bool,
    runs_per_device: int | None = None,
    fuse_max: int = 12,
) -> dict:
    ray = _ray()
    started = False
    if not ray.is_initialized():
        kwargs = dict(include_dashboard=False, log_to_driver=False)
        if address is None:  # a local instance for this sweep only
            kwargs["object_store_memory"] = 256 * 1024**2
        try:
            ray.init(address=address, **kwargs)
        except (ConnectionError, ValueError, RuntimeError) as e:
            raise UserError(
                f"cannot start or reach Ray at {address or 'a new local instance'}: "
                f"{str(e).splitlines()[0][:200]}; check --address"
            ) from None
        started = True
    try:
        return _submit(
            ray, runs, out, cpus_per_run, gpus_per_run, progress, runs_per_device, fuse_max
        )
    finally:
        if started:
            ray.shutdown()


def _submit(
    ray,
    runs: list[Run],
    out: Path,
    cpus_per_run,
    gpus_per_run,
    progress: bool,
    runs_per_device: int | None = None,
    fuse_max: int = 12,
) -> dict:
    resources = ray.cluster_resources()
    cluster_gpus = resources.get("GPU", 0)
    ngpu = gpus_per_run if gpus_per_run is not None else (1 if cluster_gpus else 0)
    if runs_per_device:
        if not cluster_gpus:
            raise UserError(
                "--runs_per_device under --backend ray packs runs onto GPUs, and the Ray cluster "
                "has none; size CPU runs with --cpus_per_run instead"
            )
        ngpu = 1.0 / runs_per_device
    ncpu = cpus_per_run if cpus_per_run is not None else 1
    if ngpu > 0 and cluster_gpus == 0:
        raise UserError(f"--gpus_per_run {ngpu}: the Ray cluster has no GPU; pass --gpus_per_run 0")
    if ncpu > resources.get("CPU", 0):
        raise UserError(
            f"--cpus_per_run {ncpu}: the Ray cluster has only {resources.get('CPU', 0):g} CPUs"
        )
    options = dict(num_cpus=ncpu, num_gpus=ngpu, max_retries=0)
    lone, group = (ray.remote(f).options(**options) for f in (run_config, run_group))
    root = Path(out).resolve()  # tasks may run elsewhere: an absolute results path (not hashed)
    cwd = os.getcwd()
    device = "cuda" if ngpu else "cpu"
    runs = [Run(r.name, dataclasses.replace(r.cfg, log_dir=str(root), device=device)) for r in runs]
    slots = max(1, int(resources.get("GPU", 0) / ngpu if ngpu else resources.get("CPU", 1) / ncpu))
    refs = {}
    for unit in fused_units(runs, fuse_max, slots):
        cfgs = [r.cfg.to_dict() for r in unit]
        threads = max(1, int(ncpu))
        ref = (
            group.remote(cfgs, threads, cwd)
            if len(unit) > 1
            else lone.remote(cfgs[0], threads, cwd)
        )
        refs[ref] = unit
    view = Progress(runs, progress)
    pending = list(refs)
    try:
        while pending:
            ready, pending = ray.wait(pending, num_returns=1, timeout=0.5)
            for ref in ready:
                _finish(ray, ref, refs[ref], view)
            view.poll([r for ref in pending for r in refs[ref]])
    except KeyboardInterrupt:
        for ref in pending:
            ray.cancel(
                ref, force=True
            )  # the run keeps its last checkpoint; the next sweep resumes it
        view.close()
        raise
    view.close()
    return view.counts


def _finish(ray, ref, unit: list[Run], view: Progress) -> None:
    """A task's runs, each finished or failed on its own (a fused group's failed run is marked
    FAILED, its partners finish)."""
    try:
        res = ray.get(ref)
    except ray.exceptions.RayError as e:
        res = {"status": "error", "message": str(e).strip().splitlines()[-1][:300]}
    for run in unit:
        ok = res["status"] == "finished" or run.folder.status() == "finished"
        view.finish(run, ok, headline(run.run_dir) if ok else res["message"])


def ray_backend(todo: list[Run], out: Path, options: SweepOptions) -> dict:
    return run_ray(
        todo,
        out,
        options.address,
        options.cpus_per_run,
        options.gpus_per_run,
        options.progress,
        options.runs_per_device,
        options.fuse_max,
    )
