"""The Ray backend against a local Ray instance started here: the runs are Ray tasks, skip/resume as locally."""

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO, cli_env

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'debiaslab[ray]')")


@pytest.fixture(scope="module")
def local_ray():
    os.environ["PYTHONPATH"] = (
        str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")
    )  # for the workers
    # no GPUs in this cluster, also on a GPU machine: the runs and the "no GPU" refusal below are CPU's
    ray.init(
        num_cpus=2,
        num_gpus=0,
        include_dashboard=False,
        object_store_memory=200 * 1024**2,
        log_to_driver=False,
    )
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


def spec(data, seeds):
    return {
        "methods": ["vanilla", "disent"],
        "ratios": [1],
        "seeds": seeds,
        "set": {"data_dir": str(data), "num_steps": 60, "batch_size": 16, "valid_freq": 20},
    }


def test_ray_backend_runs_skips_and_extends_a_sweep(local_ray, tiny_reference, tmp_path, capsys):
    from debiaslab.sweep import sweep

    out = tmp_path / "shared_results"
    assert sweep(spec(tiny_reference, [0]), out, backend="ray", progress=False) == 0
    runs = sorted((out / "cmnist").iterdir())
    assert len(runs) == 2 and all((d / "results.json").exists() for d in runs)
    assert not (out / ".sweep-logs").exists()  # no local subprocess ran them
    assert "2 runs finished and 0 failed" in capsys.readouterr().out
    mtimes = {d.name: (d / "results.json").stat().st_mtime_ns for d in runs}

    # the CLI, connecting to the running cluster by its address: finished runs skipped, the new seed run as tasks
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "debiaslab",
            "sweep",
            "--methods",
            "vanilla",
            "disent",
            "--ratios",
            "1",
            "--seeds",
            "0",
            "1",
            "--set",
            f"data_dir={tiny_reference}",
            "num_steps=60",
            "batch_size=16",
            "valid_freq=20",
            "--out",
            str(out),
            "--backend",
            "ray",
            "--address",
            local_ray,
            "--no_progress",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=cli_env(),
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "4 runs in" in r.stdout and "2 finished (skipped), 0 to resume, 2 to start" in r.stdout
    assert "2 runs finished and 0 failed" in r.stdout
    runs = sorted((out / "cmnist").iterdir())
    assert len(runs) == 4 and all((d / "results.json").exists() for d in runs)
    assert all(
        (out / "cmnist" / n / "results.json").stat().st_mtime_ns == t for n, t in mtimes.items()
    )
    for d in runs:
        cfg = json.loads((d / "config.json").read_text())
        assert cfg["device"] == "cpu" and cfg["config"]["log_dir"] == str(out.resolve())


def test_ray_backend_reports_a_failing_run_and_bad_resources(
    local_ray, tiny_reference, tmp_path, capsys
):
    from debiaslab import UserError
    from debiaslab.sweep import sweep

    bad = spec(tiny_reference, [0])
    bad["ratios"] = [2]  # not in the tiny dataset
    assert sweep(bad, tmp_path / "out", backend="ray", progress=False) == 1
    assert capsys.readouterr().out.count("2pct not found") == 2
    with pytest.raises(UserError, match="no GPU"):
        sweep(
            spec(tiny_reference, [0]),
            tmp_path / "out2",
            backend="ray",
            gpus_per_run=1,
            progress=False,
        )


def test_ray_backend_trains_compatible_runs_as_one_fused_task_each_as_alone(
    local_ray, tiny_reference, tmp_path, capsys
):
    """Two seeds of DisEnt on a 2-CPU cluster, 2 CPUs a task: one task trains them fused; each
    run's results are those it gets alone, and a second sweep skips both."""
    from debiaslab.config import TrainConfig
    from debiaslab.sweep import sweep
    from debiaslab.train import train

    grid = {**spec(tiny_reference, [0, 1]), "methods": ["disent"]}
    out = tmp_path / "fused"
    assert sweep(grid, out, backend="ray", cpus_per_run=2, progress=False) == 0
    assert "2 runs finished and 0 failed" in capsys.readouterr().out
    results = [
        json.loads((d / "results.json").read_text()) for d in sorted((out / "cmnist").iterdir())
    ]
    assert [r["fused_steps"] for r in results] == [60, 60] and all(r["fused_with"] for r in results)
    saved = json.loads((sorted((out / "cmnist").iterdir())[1] / "config.json").read_text())
    alone = TrainConfig.from_saved({**saved["config"], "log_dir": str(tmp_path / "alone")})
    assert train(alone)["selections"] == results[1]["selections"]
    assert sweep(grid, out, backend="ray", cpus_per_run=2, progress=False) == 0
    assert "2 finished (skipped)" in capsys.readouterr().out
