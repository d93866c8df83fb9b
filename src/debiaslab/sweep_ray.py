"""``debiaslab sweep --backend ray``: the same runs as Ray tasks (``pip install 'debiaslab[ray]'``).

Each run is one task asking for ``--cpus_per_run`` CPUs and ``--gpus_per_run`` GPUs. Tasks write to
the sweep's results folder, which must be visible at the same path on every node (a shared file
system); relative data paths are read from the driver's working directory, as with a local sweep.
Skip and resume work as locally: the driver skips finished runs and ``train`` resumes unfinished ones.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from debiaslab.errors import UserError
from debiaslab.runner import run_config
from debiaslab.sweep import BACKENDS, Progress, Run, SweepOptions, _headline


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
        return _submit(ray, runs, out, cpus_per_run, gpus_per_run, progress, runs_per_device)
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
    task = ray.remote(run_config).options(num_cpus=ncpu, num_gpus=ngpu, max_retries=0)
    root = Path(
        out
    ).resolve()  # tasks may run elsewhere: an absolute results path (not part of the run's hash)
    cwd = os.getcwd()
    refs = {}
    for run in runs:
        cfg = dataclasses.replace(run.cfg, log_dir=str(root), device="cuda" if ngpu else "cpu")
        refs[task.remote(cfg.to_dict(), max(1, int(ncpu)), cwd)] = Run(run.name, cfg)
    view = Progress(list(refs.values()), progress)
    pending = list(refs)
    try:
        while pending:
            ready, pending = ray.wait(pending, num_returns=1, timeout=0.5)
            for ref in ready:
                run = refs[ref]
                try:
                    res = ray.get(ref)
                except ray.exceptions.RayError as e:
                    res = {"status": "error", "message": str(e).strip().splitlines()[-1][:300]}
                ok = res["status"] == "finished"
                view.finish(run, ok, _headline(run.run_dir) if ok else res["message"])
            view.poll([refs[r] for r in pending])
    except KeyboardInterrupt:
        for ref in pending:
            ray.cancel(
                ref, force=True
            )  # the run keeps its last checkpoint; the next sweep resumes it
        view.close()
        raise
    view.close()
    return view.counts


def ray_backend(todo: list[Run], out: Path, options: SweepOptions) -> dict:
    return run_ray(
        todo,
        out,
        options.address,
        options.cpus_per_run,
        options.gpus_per_run,
        options.progress,
        options.runs_per_device,
    )


BACKENDS["ray"] = ray_backend
