"""Runs survive SIGKILL: resumed runs end bit for bit where an uninterrupted run ends."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

from tests.conftest import assert_same_tensors, cli_env, read_log

STEPS = 1500


def command(data, logs, *extra):
    return [
        sys.executable,
        "-m",
        "debiaslab",
        "train",
        "--method",
        "disent",
        "--dataset",
        "cmnist",
        "--percent",
        "1pct",
        "--data_dir",
        str(data),
        "--log_dir",
        str(logs),
        "--exp",
        "r",
        "--num_steps",
        str(STEPS),
        "--valid_freq",
        "50",
        "--log_freq",
        "7",
        "--save_freq",
        "5",
        "--batch_size",
        "16",
        "--lr",
        "0.01",
        "--curr_step",
        "300",
        "--use_lr_decay",
        "--lr_decay_step",
        "200",
        "--lr_gamma",
        "0.5",
        "--keep_checkpoints",
        "2",
        "--no_progress",
        "--device",
        "cpu",
        *extra,
    ]


def run_dir(logs):
    return logs / "cmnist" / "r"


def kill_during(proc, logs, during_save: bool, rng: random.Random) -> str:
    """SIGKILL ``proc`` once it trains: right as a checkpoint is being written, or after a random delay."""
    folder = run_dir(logs)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        try:
            names = os.listdir(folder)
        except (
            FileNotFoundError
        ):  # not created yet, or being replaced by a restart that had nothing to resume
            names = []
        if during_save:
            if any(n.startswith(".checkpoint_last.pt.") for n in names):
                proc.send_signal(signal.SIGKILL)
                return "during a checkpoint write"
        elif "checkpoint_last.pt" in names:
            time.sleep(rng.uniform(0.0, 1.0))
            proc.send_signal(signal.SIGKILL)
            return "at a random step"
    return "not killed: the run ended first"


def state_of(logs):
    folder = run_dir(logs)
    results = json.loads((folder / "results.json").read_text())
    last = torch.load(folder / "checkpoint_last.pt", weights_only=True)
    best = {
        p.name: torch.load(p, weights_only=True)["models"]
        for p in folder.glob("checkpoint_*.pt")
        if p.name != "checkpoint_last.pt" and not p.name.startswith("checkpoint_step")
    }
    log = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    return results, last, best, log


def test_sigkill_and_resume_is_bit_for_bit(tiny_reference, tmp_path):
    """A run SIGKILLed five times (twice mid-save) and resumed ends bit for bit as an uninterrupted run."""
    ref = subprocess.run(
        command(tiny_reference, tmp_path / "ref"),
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert ref.returncode == 0, ref.stderr
    rng = random.Random(1234)
    logs = tmp_path / "killed"
    kills = []
    for i in range(5):
        proc = subprocess.Popen(
            command(tiny_reference, logs),
            env=cli_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        kills.append(kill_during(proc, logs, during_save=i % 2 == 0, rng=rng))
        proc.wait(timeout=120)
        if proc.returncode == 0:
            break
    assert sum(k.startswith("during") for k in kills) >= 2, kills
    final = subprocess.run(
        command(tiny_reference, logs), env=cli_env(), capture_output=True, text=True, timeout=600
    )
    assert final.returncode == 0, final.stderr
    assert "resuming" in final.stdout or kills[-1].startswith("not killed")

    (r1, last1, best1, log1), (r2, last2, best2, log2) = state_of(tmp_path / "ref"), state_of(logs)
    assert r1["selections"] == r2["selections"]  # every metric of every selection rule, exactly
    assert_same_tensors(
        last1["method_state"], last2["method_state"], "method_state"
    )  # weights, Adam, schedulers, EMA
    assert_same_tensors(last1["sampler"], last2["sampler"], "sampler")
    assert (
        last2["average"]["count"] > 0
    )  # weight averaging (from --curr_step) resumes bit for bit too
    assert_same_tensors(last1["average"], last2["average"], "weight average")
    assert best1.keys() == best2.keys()
    assert_same_tensors(best1, best2, "best checkpoints")
    assert log1 == log2  # the log too: no duplicated or lost records
    kept = sorted(p.name for p in run_dir(logs).glob("checkpoint_step*.pt"))
    assert len(kept) == 1  # --keep_checkpoints 2: the last one plus one older
    assert not any(p.name.endswith(".tmp") for p in run_dir(logs).iterdir())


def test_finished_run_is_done_and_resume_can_extend_it(tiny_reference, tmp_path):
    """A finished run is not retrained; a longer one is refused, unless --resume extends it exactly."""
    base = command(tiny_reference, tmp_path)
    short = [a if a != str(STEPS) else "60" for a in base]
    assert subprocess.run(short, env=cli_env(), capture_output=True, timeout=600).returncode == 0
    again = subprocess.run(short, env=cli_env(), capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "not retraining" in again.stdout
    first = json.loads((run_dir(tmp_path) / "results.json").read_text())
    longer = [a if a != str(STEPS) else "100" for a in base]
    refused = subprocess.run(longer, env=cli_env(), capture_output=True, text=True, timeout=600)
    assert (
        refused.returncode == 2
        and "different run" in refused.stderr
        and "num_steps" in refused.stderr
    )
    extended = subprocess.run(
        longer + ["--resume"], env=cli_env(), capture_output=True, text=True, timeout=600
    )
    assert (
        extended.returncode == 0
        and "resuming" in extended.stdout
        and "from step 60" in extended.stdout
    )
    # the time spent evaluating and checkpointing is timed, and adds up across sessions
    parts = json.loads((run_dir(tmp_path) / "results.json").read_text())["boundary_seconds"]
    assert set(parts) == {"evaluation", "best_checkpoints", "full_checkpoints"}
    assert all(v > 0 for v in parts.values())
    # a checkpoint holds the evaluations before it (the time of its own writing comes after)
    assert all(parts[k] >= first["boundary_seconds"][k] for k in ("evaluation", "best_checkpoints"))
    assert sum(first["boundary_seconds"].values()) < first["train_seconds"]
    straight = subprocess.run(
        [a if a != str(tmp_path) else str(tmp_path / "s") for a in longer],
        env=cli_env(),
        capture_output=True,
        timeout=600,
    )
    assert straight.returncode == 0
    assert (
        json.loads((run_dir(tmp_path) / "results.json").read_text())["selections"]
        == json.loads((run_dir(tmp_path / "s") / "results.json").read_text())["selections"]
    )


def kill_when_ready(proc, logs, keep: int) -> None:
    """SIGKILL ``proc`` as soon as the run holds what the test needs: checkpoint_last.pt (keep 1), or
    also an older checkpoint_step*.pt to fall back to (keep 2)."""
    folder, deadline = run_dir(logs), time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        names = os.listdir(folder) if folder.is_dir() else []
        older = any(n.startswith("checkpoint_step") for n in names)
        if "checkpoint_last.pt" in names and (keep == 1 or older):
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    proc.wait(timeout=120)


def newest_kept_step(logs) -> int | None:
    """The step stored in the newest checkpoint_step<N>.pt (None when there is none)."""
    kept = {
        int(p.stem.removeprefix("checkpoint_step")): p
        for p in run_dir(logs).glob("checkpoint_step*.pt")
    }
    if not kept:
        return None
    step = torch.load(kept[max(kept)], weights_only=True)["step"]
    assert step == max(kept)  # the file's name says the step it holds
    return step


@pytest.mark.parametrize("keep", [1, 2])
@pytest.mark.parametrize("corrupt", ["truncate", "garbage"])
def test_unreadable_last_checkpoint_falls_back_or_says_how_to_restart(
    tiny_reference, tmp_path, corrupt, keep
):
    """A killed run whose checkpoint_last.pt is unreadable resumes from the kept older checkpoint
    (--keep_checkpoints 2), or without one says in one line how to restart (--overwrite)."""
    # later flags override command()'s: a short run (200 steps) keeping `keep` full checkpoints
    cmd = command(tiny_reference, tmp_path, "--keep_checkpoints", str(keep), "--num_steps", "200")
    proc = subprocess.Popen(
        cmd, env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    kill_when_ready(proc, tmp_path, keep)
    assert proc.returncode == -signal.SIGKILL and not (run_dir(tmp_path) / "results.json").exists()
    step = newest_kept_step(tmp_path)
    assert (step is None) == (keep == 1)
    last = run_dir(tmp_path) / "checkpoint_last.pt"
    data = last.read_bytes()
    # unlink first: save_full hard-links the previous last to checkpoint_step<N>.pt before replacing it,
    # so a kill in between leaves both names on one file, which writing in place would corrupt too
    last.unlink()
    last.write_bytes(data[: len(data) // 2] if corrupt == "truncate" else b"garbage")
    r = subprocess.run(cmd, env=cli_env(), capture_output=True, text=True, timeout=600)
    if keep == 2:  # falls back to the kept older checkpoint and finishes
        assert r.returncode == 0, r.stderr
        assert f"resuming {run_dir(tmp_path)} from step {step}\n" in r.stdout
        assert (run_dir(tmp_path) / "results.json").exists()
        assert [rec["step"] for rec in read_log(run_dir(tmp_path), "eval")] == [50, 100, 150, 200]
    else:
        assert r.returncode == 2 and "--overwrite" in r.stderr and "Traceback" not in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
