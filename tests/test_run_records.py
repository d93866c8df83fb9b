"""Run records name their data by checksum and a path relative to the data root, never by an
absolute path of a machine: new runs, the loaders, and the records committed under docs/."""

import importlib.util
import json

from debiaslab.data.folders import load_image_folder, load_manifest
from debiaslab.data.reference import load_reference, write_split
from tests.conftest import REPO, quick_train_args, run_cli, tiny_split, write_image


def _rewriter():
    spec = importlib.util.spec_from_file_location(
        "rewrite_run_records", REPO / "scripts" / "rewrite_run_records.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def absolute_strings(tree, where="") -> list[str]:
    """``where: value`` of every string in a JSON tree that is an absolute path."""
    if isinstance(tree, dict):
        return [s for k, v in tree.items() for s in absolute_strings(v, f"{where}.{k}")]
    if isinstance(tree, list):
        return [s for i, v in enumerate(tree) for s in absolute_strings(v, f"{where}[{i}]")]
    return [f"{where}: {tree}"] if isinstance(tree, str) and tree.startswith("/") else []


def test_a_run_records_no_absolute_path(tiny_reference, tmp_path):
    # the paths as a user types them, relative to the folder the command runs in
    assert tiny_reference == tmp_path / "data"
    args = quick_train_args(
        "data", "logs", "--num_steps", "20", "--exp", "e", "--method", "vanilla"
    )
    r = run_cli("train", "--dataset", "cmnist", "--percent", "1pct", *args, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    run = tmp_path / "logs" / "cmnist" / "e"
    for name in ("config.json", "results.json"):
        record = json.loads((run / name).read_text())
        assert absolute_strings(record) == [], name
        assert record["data"]["source"] == "cmnist"  # the dataset's folder in --data_dir
        assert set(record["data"]["sha256"]) == {"train", "valid", "test"}


def test_loaders_record_the_source_relative_to_the_data_root(tmp_path):
    data = tmp_path / "data"
    write_split(tiny_split(4, 2, 2, 0), data / "cmnist" / "1pct", "train")
    write_split(tiny_split(2, 2, 2, 1), data / "cmnist" / "1pct" / "valid", "flat", start_id=100)
    write_split(tiny_split(2, 2, 2, 2), data / "cmnist" / "test", "class", start_id=200)
    assert load_reference(data.resolve(), "cmnist", "1pct").info["source"] == "cmnist"

    folder = tmp_path / "pets"
    for split in ("train", "test"):
        for cls, colour in (("cat", (250, 0, 0)), ("dog", (0, 0, 250))):
            for i in range(3):
                write_image(folder / split / cls / f"{i}.png", colour, size=8)
    assert load_image_folder(folder.resolve()).info["source"] == "."

    rows = [f"{split}/{cls}/{i}.png,{cls},{split}" for split in ("train", "test")
            for cls in ("cat", "dog") for i in range(3)]  # fmt: skip
    csv_path = folder / "list.csv"
    csv_path.write_text("path,target,split\n" + "\n".join(rows) + "\n")
    assert load_manifest(csv_path.resolve()).info["source"] == "list.csv"  # in the CSV's folder


def test_committed_records_name_no_absolute_path_and_their_checksums():
    files = _rewriter().record_files()
    assert len(files) > 100
    bad = []
    for path in files:
        record = json.loads(path.read_text())
        sums = record["data"]["sha256"]
        if set(sums) != {"train", "valid", "test"} or any(len(v) != 64 for v in sums.values()):
            bad.append(f"{path}: data.sha256 {sums}")
        bad += [f"{path}: {s}" for s in absolute_strings(record)]
    assert bad == []


def test_rewriting_the_committed_records_again_changes_nothing():
    rewriter = _rewriter()
    assert [p for p in rewriter.record_files() if rewriter.rewrite(p) is not None] == []
