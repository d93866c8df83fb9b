"""benchmarks/gpu_table.sh rehearsed on the CPU: the GPU table's command stops at its budget with
every run resumable, resumes to the end on the next call, and copies each finished run once.

The rehearsal (``REHEARSE=1``) builds a tiny Corrupted CIFAR-10 from the real CIFAR-10 (the shared
JPEG zip; skipped where it is absent) and trains 20-step runs as fused groups, every step captured
through a stand-in for the CUDA graph. Here a part of the table (DisEnt, the longest method, at
two ratios and two seeds: two fused groups, one per seed pass) with the MLP keeps the test short.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from tests.conftest import REPO, assert_same_tensors, read_log, shared_data_dir

PART = {"METHODS": "disent", "RATIOS": "0.5 5", "SEEDS": "0 1", "REHEARSE_MODEL": "mlp"}
RUNS = 4  # the part's runs: 1 method x 2 ratios x 2 seeds
STOP = 12  # seconds: a budget that ends inside the table (two sweeps of a fused group each)
# the rehearsal's run settings (benchmarks/gpu_table.sh), for the run trained here in process
REHEARSAL_SET = dict(
    num_steps=20, batch_size=32, valid_freq=10, log_freq=5, curr_step=10, lr_decay_step=5,
    wa_decay=0.5,
)  # fmt: skip


def gpu_table(out, work, budget: int, **env) -> tuple[subprocess.CompletedProcess, float]:
    """One call of the rehearsal, and its wall seconds."""
    zip_ = shared_data_dir() / "cifar10-jpeg.zip"
    env = {
        **os.environ,
        **PART,
        "REHEARSE": "1",
        "BUDGET": str(budget),
        "WORK": str(work),
        "CIFAR10": str(zip_),
        "PYTHON": sys.executable,
        **env,
    }
    t0 = time.time()
    r = subprocess.run(
        ["bash", "benchmarks/gpu_table.sh", str(out)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=budget + 60,
    )
    return r, time.time() - t0


def landed(out) -> dict[str, dict]:
    """The runs in OUT: folder name -> results.json."""
    folder = out / "runs" / "cifar10c"
    return {
        d.name: json.loads((d / "results.json").read_text())
        for d in (folder.iterdir() if folder.exists() else [])
    }


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A first call whose whole budget is kept from the table (for speed figures it is not
    asked for): it builds the tiny data and nothing else, so the next call's table starts at
    once and its budget ends inside the table on a fast machine and a slow one alike."""
    d = shared_data_dir()
    if d is None or not (d / "cifar10-jpeg.zip").exists():
        pytest.skip(
            "real CIFAR-10 not available: set DEBIASLAB_SHARED_DATA or place cifar10-jpeg.zip "
            "in ../shared/data"
        )
    if not shutil.which("setsid"):
        pytest.skip("benchmarks/gpu_table.sh needs setsid (util-linux)")
    root = tmp_path_factory.mktemp("gpu_table")
    out, work = root / "out", root / "work"
    r, _ = gpu_table(out, work, 60, SPEED_SECONDS="60", SPEED_K="")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "building Corrupted CIFAR-10 (0.5, 5 pct)" in r.stdout
    assert "table: stopped at its time, before seeds 0" in r.stdout
    return out, work


def test_the_rehearsal_stops_at_its_budget_and_resumes_where_it_stopped(built):
    """Stopped by its budget inside the table (the data is there: the table starts at once),
    then called again: every run finishes, each copied to OUT once."""
    out, work = built
    r, seconds = gpu_table(out, work, STOP, SPEED_K="")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    # stopped inside a sweep at the budget, or before the next one with too little time for it
    assert "table: stopped at its time" in r.stdout, r.stdout[-3000:]
    assert STOP - 6 <= seconds <= STOP + 15
    first = landed(out)
    assert len(first) < RUNS
    runs = work / "runs" / "cifar10c"
    stopped_runs = [d for d in runs.iterdir() if not (d / "results.json").exists()]
    assert all((d / "FAILED").exists() for d in stopped_runs)
    # a run stopped during its steps holds a checkpoint at the step it was at (the table saves
    # every 5,000 steps: a 20-step run has no other before its end)
    at = {
        d.name: torch.load(d / "checkpoint_last.pt", weights_only=True)["step"]
        for d in stopped_runs
        if (d / "checkpoint_last.pt").exists()
    }
    assert all(0 < step < 20 for step in at.values())

    r2, _ = gpu_table(out, work, 150, SPEED_K="")
    assert r2.returncode == 0, r2.stdout[-3000:] + r2.stderr[-3000:]
    assert (
        f"table: {RUNS} runs finished in {out / 'runs'} ({RUNS} in this call's table)" in r2.stdout
    )
    logs = "".join(p.read_text() for p in (work / "runs" / ".sweep-logs").iterdir())
    for name, step in at.items():
        assert f"resuming {runs / name} from step {step}" in logs

    done = landed(out)
    assert len(done) == RUNS  # each run once, and nothing else
    cells = {(r["method"], r["percent"], r["seed"]) for r in done.values()}
    assert cells == {("disent", p, s) for p in ("0.5pct", "5pct") for s in (0, 1)}
    for name, results in done.items():
        copied = out / "runs" / "cifar10c" / name
        assert sorted(p.name for p in copied.iterdir()) == [
            "config.json",
            "metrics.jsonl",
            "results.json",
        ]
        assert (copied / "results.json").read_bytes() == (runs / name / "results.json").read_bytes()
        assert results["cuda_graph"] and results["fused_with"]  # captured (stand-in), fused
        steps = [(x["kind"], x["step"]) for x in read_log(copied)]
        assert steps == sorted(set(steps), key=steps.index)  # no record twice after a resume
        assert [s for k, s in steps if k == "eval"] == [10, 20]
    assert all(f"landed: cifar10c/{name}" not in r2.stdout for name in first)  # copied once

    # a fresh machine given the tarball of an earlier call: its finished runs are not retrained
    fresh = out.parent / "fresh"
    r3, _ = gpu_table(
        fresh / "out",
        fresh / "work",
        60,
        SPEED_K="",
        SEEDS="0",
        DATA=str(work / "data"),
        EARLIER=str(out / "table_runs.tar.gz"),
    )
    assert r3.returncode == 0, r3.stdout[-3000:] + r3.stderr[-3000:]
    assert "2 finished (skipped), 0 to resume, 0 to start" in r3.stdout
    assert sorted(landed(fresh / "out")) == sorted(done)  # all of them, copied to its OUT


def table_configs(data, log_dir):
    """The part's seed-0 runs of configs/cifar10c_table.toml as the rehearsal's sweep plans them."""
    import dataclasses

    from debiaslab.sweep import expand, load_spec_file, plan

    spec = load_spec_file(str(REPO / "configs" / "cifar10c_table.toml"))
    spec.update(methods=["disent"], ratios=[0.5, 5], seeds=[0])
    spec["set"] = {**spec["set"], "data_dir": str(data), "model": "mlp", **REHEARSAL_SET}
    return [dataclasses.replace(r.cfg, device="cpu") for r in plan(expand(spec), log_dir)]


def test_a_group_stopped_mid_steps_resumes_to_the_uninterrupted_runs(built, tmp_path, monkeypatch):
    """SIGTERM during the steps (what the budget sends): every run of the fused group saves a
    checkpoint at one step and the process exits 143; resumed, each run ends exactly where the
    same run trained without a stop ends (captured through the stand-in, as rehearsed)."""
    import debiaslab.graphs
    import debiaslab.train
    from debiaslab.group import FusedLoop, train_group
    from tests.test_graphs import StandInGraph

    _, work = built
    data = work / "data"
    monkeypatch.setattr(debiaslab.graphs, "CudaGraph", StandInGraph)
    monkeypatch.setattr(debiaslab.train, "capture_step", lambda cfg, device, method: True)
    original = FusedLoop.step

    def step_with_a_stop(self, step, k):
        if step == 13:
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, step, k)

    cfgs = table_configs(data, tmp_path / "stopped")
    monkeypatch.setattr(FusedLoop, "step", step_with_a_stop)
    with pytest.raises(SystemExit) as stop:
        train_group(cfgs)
    assert stop.value.code == 128 + signal.SIGTERM
    run_dirs = [tmp_path / "stopped" / "cifar10c" / c.exp for c in cfgs]
    for d in run_dirs:
        assert (d / "FAILED").exists() and not (d / "results.json").exists()
        assert torch.load(d / "checkpoint_last.pt", weights_only=True)["step"] == 14
    monkeypatch.setattr(FusedLoop, "step", original)
    resumed = train_group(cfgs)
    whole = train_group(table_configs(data, tmp_path / "whole"))
    for a, b, d in zip(resumed, whole, run_dirs):
        assert a["selections"] == b["selections"]
        other = tmp_path / "whole" / "cifar10c" / d.name
        assert read_log(d) == read_log(other)
        last_a = torch.load(d / "checkpoint_last.pt", weights_only=True)
        last_b = torch.load(other / "checkpoint_last.pt", weights_only=True)
        for part in ("method_state", "sampler", "average", "rng", "tracker"):
            assert_same_tensors(last_a.get(part), last_b.get(part), part)


def test_the_speed_figures_size_k_to_the_gpu_memory():
    """A K whose fused process would not fit is skipped: its peak is extrapolated from the two
    largest K measured (from one alone: K times its peak per run)."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        from fused_speed import too_big
    finally:
        sys.path.remove(str(REPO / "benchmarks"))

    gib = 2**30
    assert too_big({}, 36, 80 * gib, 0.85) is None  # nothing measured yet
    assert too_big({1: 2 * gib}, 4, None, 0.85) is None  # the CPU: no sizing
    assert too_big({1: 2 * gib}, 30, 80 * gib, 0.85) is None  # ~60 GiB of 68
    assert "~72.0 GiB" in too_big({1: 2 * gib}, 36, 80 * gib, 0.85)
    # 1 GiB a run more from K = 4 to 12: K = 36 needs ~14 + 24 GiB
    assert too_big({4: 6 * gib, 12: 14 * gib}, 36, 80 * gib, 0.85) is None
    assert "~38.0 GiB" in too_big({4: 6 * gib, 12: 14 * gib}, 36, 40 * gib, 0.85)
