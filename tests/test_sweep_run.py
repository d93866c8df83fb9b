"""Sweeps end to end on a tiny real dataset: killed and relaunched, nothing finished is lost or redone."""

import json
import os
import signal
import subprocess
import sys
import time

from debiaslab.sweep import cpu_count
from tests.conftest import cli_env


def sweep_cmd(
    data, out, *extra, ratios=("1",), seeds=("0", "1"), packing=("--jobs", "2"), num_steps="1500"
):
    return [
        sys.executable,
        "-m",
        "debiaslab",
        "sweep",
        "--methods",
        "vanilla",
        "disent",
        "--ratios",
        *ratios,
        "--seeds",
        *seeds,
        "--set",
        f"data_dir={data}",
        f"num_steps={num_steps}",
        "batch_size=16",
        "valid_freq=100",
        "save_freq=25",
        "log_freq=25",
        "--out",
        str(out),
        *packing,
        "--devices",
        "cpu",
        "--no_progress",
        *extra,
    ]


def env():
    """A sweep's environment: this checkout's sources, one OpenMP thread (the sweep sets each run's own)."""
    return cli_env(OMP_NUM_THREADS="1")


def run_dirs(out):
    return sorted((out / "cmnist").iterdir()) if (out / "cmnist").exists() else []


def wait_for(proc, cond, timeout=240):
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if cond():
            return True
        time.sleep(0.05)
    return False


def finished_and_midway(out):
    dirs = run_dirs(out)
    done = [d for d in dirs if (d / "results.json").exists()]
    midway = [
        d for d in dirs if (d / "checkpoint_last.pt").exists() and not (d / "results.json").exists()
    ]
    return bool(done) and bool(midway)


def test_sweep_killed_and_relaunched_skips_finished_and_resumes_unfinished(
    tiny_reference, tmp_path
):
    """A sweep SIGKILLed mid-way and relaunched skips its finished runs and resumes the others."""
    out = tmp_path / "sweep"
    proc = subprocess.Popen(
        sweep_cmd(tiny_reference, out),
        env=env(),
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert wait_for(proc, lambda: finished_and_midway(out)), proc.communicate()[0]
    os.killpg(proc.pid, signal.SIGKILL)  # the sweep and every run, with no chance to clean up
    proc.wait()
    done = {
        d.name: (d / "results.json").stat().st_mtime_ns
        for d in run_dirs(out)
        if (d / "results.json").exists()
    }
    midway = [
        d.name for d in run_dirs(out) if (d / "checkpoint_last.pt").exists() and d.name not in done
    ]
    assert done and midway and len(run_dirs(out)) <= 4

    r = subprocess.run(
        sweep_cmd(tiny_reference, out), env=env(), capture_output=True, text=True, timeout=600
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"4 runs in {out}: {len(done)} finished (skipped), {len(midway)} to resume" in r.stdout
    assert all(
        (out / "cmnist" / n / "results.json").stat().st_mtime_ns == t for n, t in done.items()
    )  # not retrained
    for name in midway:
        log = (out / ".sweep-logs" / f"cmnist-{name}.log").read_text()
        assert "resuming" in log and "from step" in log, log
    assert len(run_dirs(out)) == 4 and all((d / "results.json").exists() for d in run_dirs(out))
    for d in run_dirs(out):
        steps = [
            json.loads(ln)["step"]
            for ln in (d / "metrics.jsonl").read_text().splitlines()
            if json.loads(ln).get("kind") == "eval"
        ]
        assert steps == list(range(100, 1501, 100)), (
            d.name
        )  # one evaluation per period: nothing lost, nothing twice

    r = subprocess.run(
        sweep_cmd(tiny_reference, out), env=env(), capture_output=True, text=True, timeout=300
    )
    assert (
        r.returncode == 0
        and "4 finished (skipped), 0 to resume, 0 to start" in r.stdout
        and "nothing to do" in r.stdout
    )
    plan = json.loads((out / "sweep.json").read_text())["runs"]
    assert sorted(plan) == sorted(f"cmnist/{d.name}" for d in run_dirs(out))


def test_sweep_sigterm_stops_runs_resumably(tiny_reference, tmp_path):
    """SIGTERM to a sweep stops its runs, marked FAILED and resumable (exit 130)."""
    out = tmp_path / "sweep"
    proc = subprocess.Popen(
        sweep_cmd(tiny_reference, out),
        env=env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert wait_for(proc, lambda: any((d / "checkpoint_last.pt").exists() for d in run_dirs(out)))
    proc.send_signal(
        signal.SIGTERM
    )  # e.g. the job scheduler's pre-emption: the sweep passes it on to its runs
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stdout + stderr
    assert "Rerun the same command to resume" in stderr
    stopped = [d for d in run_dirs(out) if not (d / "results.json").exists()]
    assert stopped and all((d / "FAILED").exists() for d in stopped)
    r = subprocess.run(
        sweep_cmd(tiny_reference, out, "--dry_run"),
        env=env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0 and "failed" in r.stdout and f"{len(stopped)} to resume" in r.stdout


def test_sweep_reports_a_failing_run_and_goes_on(tiny_reference, tmp_path):
    """Runs that fail (the tiny data has no 2pct folder) are reported FAILED with the reader's message;
    the others (1pct) still finish; the summary counts both and the exit code is 1."""
    out = tmp_path / "sweep"
    r = subprocess.run(
        sweep_cmd(
            tiny_reference,
            out,
            ratios=("1", "2"),
            seeds=("0",),
            num_steps="30",
            packing=("--runs_per_device", "2"),
        ),
        env=env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 1, r.stdout + r.stderr
    failed = [ln for ln in r.stdout.splitlines() if ln.startswith("FAILED")]
    done = [ln for ln in r.stdout.splitlines() if ln.startswith("done")]
    assert sorted(ln.split()[1].split("/")[1].split("-")[0] for ln in failed) == [
        "disent",
        "vanilla",
    ]
    assert all("-2pct-" in ln and "2pct not found" in ln for ln in failed), failed
    assert len(done) == 2 and all("-1pct-" in ln for ln in done), done
    assert "2 runs finished and 2 failed" in r.stdout
    finished = [d.name for d in run_dirs(out) if (d / "results.json").exists()]
    assert sorted(n.split("-")[:2] for n in finished) == [["disent", "1pct"], ["vanilla", "1pct"]]
    threads = max(1, cpu_count() // 2)  # two runs at once on the CPU, each with half the cores
    headers = [
        ln
        for log in (out / ".sweep-logs").iterdir()
        for ln in log.read_text().splitlines()
        if ln.startswith("===")
    ]
    assert len(headers) == 4 and all(ln.endswith(f"cpu, {threads} threads") for ln in headers)
