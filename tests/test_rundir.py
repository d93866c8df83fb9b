"""``RunDir``, a run folder's format: its status as the files appear, its checkpoints found by
their names, its log read back (also while a write is cut short), its records refused when
damaged. The loop, the API, collect, report and sweep all read a run folder through it."""

import json

import pytest

from debiaslab.errors import UserError
from debiaslab.rundir import RunDir


def test_a_run_folders_status_follows_the_files_it_holds(tmp_path):
    run = RunDir(tmp_path / "run")
    assert run.status() == "missing" and run.is_empty()
    run.create_empty()
    run.write_config({"config": {"method": "vanilla"}})
    assert run.status() == "unfinished" and not run.is_empty()
    assert run.read_record(RunDir.CONFIG)["config"] == {"method": "vanilla"}
    run.mark_failed(KeyboardInterrupt())
    assert run.status() == "failed"
    assert run.failed_file.read_text() == (
        "training did not finish (KeyboardInterrupt); rerun the same command to start it again "
        "(no checkpoint yet)\n"
    )
    run.write_results({"config": {}, "steps": 3})
    assert run.status() == "finished" and run.read_results() == {"config": {}, "steps": 3}
    (run.path / ".checkpoint_last.pt.x.tmp").write_bytes(b"")  # a save cut short
    run.reopen()  # to resume: no longer failed, nor finished, nor half-written
    assert run.status() == "unfinished" and sorted(p.name for p in run.path.iterdir()) == [
        "config.json"
    ]


def test_checkpoints_are_found_by_their_names(tmp_path):
    run = RunDir(tmp_path)
    assert not run.has_checkpoint() and run.full_checkpoints() == []
    for step in (20, 100):
        run.step_checkpoint(step).write_bytes(b"")
    run.checkpoint("best_valid").write_bytes(b"")
    assert run.has_checkpoint() and run.full_checkpoints() == [
        tmp_path / "checkpoint_step100.pt",
        tmp_path / "checkpoint_step20.pt",
    ]
    run.last_checkpoint.write_bytes(b"")
    assert run.checkpoint() == run.last_checkpoint == tmp_path / "checkpoint_last.pt"
    assert run.full_checkpoints()[0] == run.last_checkpoint  # newest first
    assert RunDir.rule_in_name(run.checkpoint("wa_best_valid")) == "wa_best_valid"
    assert RunDir.rule_in_name(tmp_path / "best_model.th") is None
    run.mark_failed(OSError())
    assert "resume from the last checkpoint" in run.failed_file.read_text()


def test_the_log_reads_back_and_its_last_step_survives_a_cut_line(tmp_path):
    run = RunDir(tmp_path)
    assert run.last_step() == 0
    with pytest.raises(OSError):
        run.read_log()
    lines = [json.dumps({"kind": "train", "step": s}) for s in (10, 20)]
    run.log_file.write_text("\n".join(lines) + '\n\n{"kind": "eval", "st')  # a write cut short
    assert run.last_step() == 20
    assert [r["step"] for r in run.read_log(skip_damaged=True)] == [10, 20]
    with pytest.raises(ValueError):
        run.read_log()


def test_a_damaged_record_is_one_line_naming_the_way_out(tmp_path):
    run = RunDir(tmp_path)
    run.results_file.write_text('{"config": {"meth')
    assert run.read_results() is None
    with pytest.raises(UserError, match=r"not valid JSON \(truncated\?\).*--overwrite"):
        run.read_record(RunDir.RESULTS)
    run.config_file.write_text("[1, 2]")
    with pytest.raises(UserError, match="is not a debiaslab config.json"):
        run.read_record(RunDir.CONFIG)


def test_runs_under_a_folder_are_those_with_a_config(tmp_path):
    for name in ("b", "a/x", "a/y"):
        RunDir(tmp_path / name).write_config({"config": {}})
    (tmp_path / "c").mkdir()  # no config.json: not a run
    assert [r.path.relative_to(tmp_path).as_posix() for r in RunDir.under(tmp_path)] == [
        "a/x",
        "a/y",
        "b",
    ]
