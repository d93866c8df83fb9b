"""What each figure read: the labels a selection and a run's training read, recorded per run and
carried by every table as marks (◊ test labels, † bias labels)."""

import json
import shutil
from pathlib import Path

import pytest

from debiaslab.collect import collect
from debiaslab.selection import effective_reads, figure_reads, marks, selection_names
from tests.conftest import quick_train_args, run_cli, tiny_split

REPO = Path(__file__).resolve().parents[1]
COUNTS = {s: {"n": 4, "aligned": 3, "conflicting": 1} for s in ("train", "valid", "test")}


def data_record(valid="v", test="t", counts=COUNTS):
    return {"sha256": {"train": "a" * 64, "valid": valid * 64, "test": test * 64}, "counts": counts}


def test_a_split_in_two_roles_is_read_in_both():
    assert effective_reads(("valid_labels",), data_record()) == ["valid_labels"]
    same = data_record(valid="t")
    assert effective_reads(("valid_labels",), same) == ["valid_labels", "test_labels"]
    assert effective_reads(("valid_labels", "valid_bias_labels"), same) == [
        "valid_labels",
        "valid_bias_labels",
        "test_labels",
        "test_bias_labels",
    ]
    assert effective_reads((), same) == []  # last reads nothing, whatever the data


def test_no_bias_labels_none_read_and_no_checksums_unknown():
    no_bias = {**COUNTS, "test": {"n": 4}}
    assert effective_reads(("test_labels", "test_bias_labels"), data_record(counts=no_bias)) == [
        "test_labels"
    ]
    assert effective_reads(("valid_labels",), {"counts": COUNTS}) is None
    assert marks(None) == "?" and marks([]) == "" and marks(["test_bias_labels"]) == "◊†"
    assert marks(["valid_labels"]) == "" and marks(["train_bias_labels"]) == "†"


def test_figure_reads_adds_the_training_reads_of_the_method():
    base = {"data": data_record(), "selections": {"last": {}}}
    assert figure_reads({**base, "config": {"method": "vanilla"}}, "last") == []
    assert figure_reads({**base, "config": {"method": "groupdro"}}, "last") == ["train_bias_labels"]
    be = {**base, "config": {"method": "lff_be"}}
    assert figure_reads(be, "last") == ["valid_labels"]  # its aux models are picked on valid
    oracle = {**base, "config": {"method": "denetdm", "denetdm_stage1_pick": "oracle_test"}}
    assert figure_reads(oracle, "last") == ["test_labels", "test_bias_labels"]
    recorded = {**base, "training_reads": [], "selections": {"last": {"reads": ["test_labels"]}}}
    assert figure_reads(recorded, "last") == ["test_labels"]  # as recorded, never re-derived


@pytest.fixture
def valid_is_test(tiny_reference):
    """tiny_reference whose validation split holds exactly the test split's samples."""
    from debiaslab.data.reference import write_split

    valid = tiny_reference / "cmnist" / "1pct" / "valid"
    shutil.rmtree(valid)
    write_split(tiny_split(10, 3, 2, 2), valid, "flat", start_id=2000)
    return tiny_reference


def train(data, logs, method="lff"):
    args = quick_train_args(data, logs)
    return run_cli(
        "train", "--dataset", "cmnist", "--percent", "1pct", "--exp", "r", "--method", method, *args
    )


def test_a_validation_split_that_is_the_test_split_turns_its_reads_into_test_reads(
    valid_is_test, tmp_path
):
    """A fresh run: results.json records each selection's reads, the validation reads count as
    test reads, the printed table marks them, and collect does too."""
    r = train(valid_is_test, tmp_path)
    assert r.returncode == 0, r.stderr
    run = tmp_path / "cmnist" / "r"
    results = json.loads((run / "results.json").read_text())
    sel = results["selections"]
    assert results["shared_splits"] == [["valid", "test"]] and results["training_reads"] == []
    assert sel["last"]["reads"] == [] and sel["wa_last"]["reads"] == []
    assert sel["best_valid"]["reads"] == ["valid_labels", "test_labels"]
    assert sel["wa_best_valid_pseudo_unbiased"]["reads"] == ["valid_labels", "test_labels"]
    assert "valid_bias_labels" in sel["best_valid_unbiased"]["reads"]
    assert "test_bias_labels" in sel["best_valid_unbiased"]["reads"]
    assert "the valid split is the test split (same sha256)" in r.stdout
    printed = {line.split(" (step")[0]: line for line in r.stdout.splitlines() if "(step" in line}
    assert "◊" in printed["best_valid"] and "◊" not in printed["last"]
    assert "◊" in printed["wa_best_valid_pseudo_unbiased"]
    shipped = results["default_selection"]
    import debiaslab as dl

    loaded = dl.load_run(run)
    assert loaded.reads() == loaded.reads(shipped) == ["valid_labels", "test_labels"]
    assert loaded.reads("last") == []
    text = collect(str(tmp_path))
    glance = next(line for line in text.splitlines() if line.startswith("| cmnist 1pct lff"))
    assert f"| {shipped} | " in glance and glance.split(" | ")[2].endswith("◊")
    # a run recorded before selections recorded reads reads back the same from its checksums
    for name in selection_names():
        if sel[name] is not None:
            stripped = {
                **results,
                "selections": {name: {k: v for k, v in sel[name].items() if k != "reads"}},
            }
            del stripped["training_reads"]
            assert figure_reads(stripped, name) == figure_reads(results, name), name


def test_a_fresh_run_on_its_own_validation_split_reads_no_test_label(tiny_reference, tmp_path):
    r = train(tiny_reference, tmp_path)
    assert r.returncode == 0, r.stderr
    results = json.loads((tmp_path / "cmnist" / "r" / "results.json").read_text())
    assert results["shared_splits"] == []
    assert results["selections"]["best_valid"]["reads"] == ["valid_labels"]
    assert results["selections"]["oracle_best_test"]["reads"] == ["test_labels", "test_bias_labels"]
    assert "split is the" not in r.stdout


def committed_results():
    return sorted((REPO / "docs").rglob("results.json"))


def test_every_committed_run_reads_back_what_it_read():
    """On DeNetDM's build (validation split = test split) every validation-picked figure read
    test labels; on the others the label-free rules read validation class labels only."""
    paths = committed_results()
    assert len(paths) > 150
    twins = 0
    for path in paths:
        results = json.loads(path.read_text())
        sha = results["data"]["sha256"]
        reads = figure_reads(results, "wa_best_valid_pseudo_unbiased")
        if results["selections"].get("wa_best_valid_pseudo_unbiased") is None:
            continue
        if sha["valid"] == sha["test"]:
            twins += 1
            assert "test_labels" in reads, path
        elif results["config"]["method"] not in ("groupdro", "denetdm"):
            assert marks(reads) == "", (path, reads)
    assert twins >= 13


def write_run(root: Path, name: str, results: str | None, config: str | None = None) -> Path:
    src = next(p.parent for p in committed_results() if "cmnist_runs" in str(p))
    run = root / "cmnist" / name
    run.mkdir(parents=True)
    for f in ("config.json", "metrics.jsonl", "results.json"):
        shutil.copy(src / f, run / f)
    if results is not None:
        (run / "results.json").write_text(results)
    if config is not None:
        (run / "config.json").write_text(config)
    return run


def test_collect_says_what_it_could_not_count(tmp_path):
    """A truncated results.json: its row says unreadable and its figure is not counted; a
    truncated config.json: a line naming the file; the same run twice: counted once."""
    good = write_run(tmp_path / "a", "good", None)
    text = good.joinpath("results.json").read_text()
    write_run(tmp_path / "b", "good", None)  # the same run committed twice
    cut = write_run(tmp_path / "c", "cut", text[: len(text) // 2])
    record = json.loads((cut / "config.json").read_text())
    record["config"]["seed"] = 5  # another run
    (cut / "config.json").write_text(json.dumps(record))
    write_run(tmp_path / "d", "lost", None, config="{")
    out = collect(str(tmp_path))
    assert f"{tmp_path}/b/cmnist/good is {tmp_path}/a/cmnist/good again (same config and" in out
    assert "d/cmnist/lost/config.json: unreadable (not valid JSON: truncated?); run not" in out
    assert "1 unreadable, not counted (seed 5: " in out
    assert "c/cmnist/cut/results.json: not valid JSON" in out
    assert "1 finished; 1 unreadable" in out  # the good run, once
    r = run_cli("collect", tmp_path, "--format", "csv")
    assert r.returncode == 0 and "d/cmnist/lost/config.json: unreadable" in r.stderr


def test_collect_marks_a_figure_whose_reads_are_unknown(tmp_path):
    """A run that recorded no checksums: what its validation rules read cannot be told (?)."""
    run = write_run(tmp_path, "old", None)
    for name in ("config.json", "results.json"):
        record = json.loads((run / name).read_text())
        record["data"].pop("sha256")
        (run / name).write_text(json.dumps(record))
    out = collect(str(tmp_path), rules=["last", "best_valid"])
    best_valid = out.split("### Selection: best_valid")[1]
    assert " ? | 1 (0) |" in best_valid and " ? | 1 (0) |" not in out.split("### Selection:")[1]


def test_collect_reports_what_each_run_shipped_and_where_todays_default_differs(tmp_path):
    run = write_run(tmp_path, "r", None)
    results = json.loads((run / "results.json").read_text())
    results["default_selection"] = "last"
    (run / "results.json").write_text(json.dumps(results))
    out = collect(str(tmp_path))
    row = next(line for line in out.splitlines() if line.startswith("| cmnist "))
    assert "| last (today's default: wa_best_valid_pseudo_unbiased_mean5) |" in row
    last = results["selections"]["last"]["test_primary"]
    assert row.split(" | ")[2] == f"{100 * last:.2f}"  # the figure it shipped, not today's
