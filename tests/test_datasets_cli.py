"""The paper's C-CIFAR10 and BFFHQ commands, and BAR / your-own datasets, end to end through subprocesses."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import (
    REPO,
    run_cli,
    write_bar_layout,
    write_image,
    write_image_folder,
    write_reference,
)

FAST = [
    "--num_steps",
    "2",
    "--valid_freq",
    "1",
    "--batch_size",
    "4",
    "--no_progress",
    "--device",
    "cpu",
]


def results(log, dataset, exp):
    return json.loads((log / dataset / exp / "results.json").read_text())


def test_cifar10c_paper_scripts_run_verbatim(tmp_path):
    data = write_reference(tmp_path / "dataset", "cifar10c", ["0.5pct", "1pct", "2pct", "5pct"])
    log = tmp_path / "log"
    # the scripts call `python`: make it this interpreter
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    for script in ("run_cifar10c_vanilla.sh", "run_cifar10c_ours.sh"):
        r = subprocess.run(
            [
                "bash",
                str(REPO / "scripts" / script),
                "--data_dir",
                str(data),
                "--log_dir",
                str(log),
                *FAST,
            ],
            capture_output=True,
            text=True,
            timeout=600,
            env=env,
        )
        assert r.returncode == 0, r.stderr[-2000:]
    ours = results(log, "cifar10c", "cifar10c_0.5_ours")["config"]
    assert (
        ours["method"],
        ours["model"],
        ours["lr"],
        ours["lambda_dis_align"],
        ours["batch_size"],
    ) == ("disent", "resnet18", 0.0005, 1.0, 4)
    assert ours["image_size"] == 32 and ours["augment"] and ours["normalize"]
    assert results(log, "cifar10c", "cifar10c_1_ours")["config"]["lambda_swap_align"] == 5.0
    assert results(log, "cifar10c", "cifar10c_5_vanilla")["config"]["lr"] == 0.001


def test_bffhq_paper_commands_verbatim_then_test(tmp_path):
    data = write_reference(
        tmp_path / "dataset", "bffhq", ["0.5pct"], size=24, flat_eval_one_level_up=True
    )
    log = tmp_path / "log"
    ours = (
        "--dataset bffhq --exp=bffhq_0.5_ours --lr=0.0001 --percent=0.5pct --lambda_swap=0.1 --curr_step=10000 "
        "--use_lr_decay --lr_decay_step=10000 --lambda_dis_align 2. --lambda_swap_align 2. "
        "--dataset bffhq --train_ours --tensorboard"
    ).split()
    vanilla = (
        "--dataset bffhq --exp=bffhq_0.5_vanilla --lr=0.0001 --percent=0.5pct --train_vanilla "
        "--tensorboard"
    ).split()
    for cmd in (ours, vanilla):
        r = run_cli("train.py", *cmd, "--data_dir", data, "--log_dir", log, *FAST, module=False)
        assert r.returncode == 0, r.stderr[-2000:]
    res = results(log, "bffhq", "bffhq_0.5_ours")
    assert (
        res["config"]["image_size"] == 224
        and res["config"]["lambda_swap"] == 0.1
        and res["config"]["lr_gamma"] == 0.1
    )
    assert res["primary_metric"] == "conflicting accuracy"
    r = run_cli(
        "test.py",
        f"--pretrained_path={log / 'bffhq' / 'bffhq_0.5_ours'}",
        "--dataset=bffhq",
        "--percent=0.5pct",
        "--data_dir",
        data,
        "--device",
        "cpu",
        "--json",
        module=False,
    )
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["metrics"]["test"]["n"] == 6 and out["metrics"]["test"]["conflicting"] is not None


def test_cifar10c_type1_folder_and_resnet20(tmp_path):
    data = write_reference(tmp_path / "dataset", "cifar10c_type1", ["1pct"])
    log = tmp_path / "log"
    r = run_cli(
        "train.py",
        "--dataset",
        "cifar10c",
        "--use_type1",
        "--use_resnet20",
        "--percent",
        "1pct",
        "--train_vanilla",
        "--exp",
        "t1",
        "--data_dir",
        data,
        "--log_dir",
        log,
        *FAST,
        module=False,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    res = results(log, "cifar10c", "t1")
    assert res["config"]["corruption_type"] == 1 and res["config"]["model"] == "resnet20"
    assert res["data"]["source"].endswith("cifar10c_type1")
    missing = run_cli(
        "train",
        "--dataset",
        "cifar10c",
        "--train_vanilla",
        "--data_dir",
        data,
        "--log_dir",
        log,
        *FAST,
    )
    assert missing.returncode == 2 and "debiaslab data build cifar10c" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1


def learnable_rows(root, n_per_class=8, with_bias=True):
    """A two-class manifest: class = red vs green; bias = a bright corner (aligned for most train rows)."""
    rows = []
    for split, n in (("train", n_per_class), ("test", 4)):
        for t in (0, 1):
            for i in range(n):
                b = t if (split == "train" and i % 4) else 1 - t if split == "train" else i % 2
                colour = (200, 30, 30 + 100 * b) if t == 0 else (30, 200, 30 + 100 * b)
                path = root / "images" / f"{split}_{t}_{i}.png"
                write_image(path, colour)
                rows.append(
                    {
                        "path": f"images/{path.name}",
                        "target": ["cat", "dog"][t],
                        "bias": b,
                        "split": split,
                    }
                )
    with open(root / "my_data.csv", "w", newline="") as f:
        fields = ["path", "target", "bias", "split"] if with_bias else ["path", "target", "split"]
        w = csv.DictWriter(f, fields, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    return root / "my_data.csv"


@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("method", ["vanilla", "disent"])
def test_manifest_dataset_train_and_test(tmp_path, with_bias, method):
    manifest = learnable_rows(tmp_path, with_bias=with_bias)
    log = tmp_path / "log"
    r = run_cli(
        "train",
        "--manifest",
        manifest,
        "--method",
        method,
        "--exp",
        "m",
        "--log_dir",
        log,
        "--model",
        "resnet20",
        "--num_steps",
        "4",
        "--valid_freq",
        "2",
        "--batch_size",
        "4",
        "--no_progress",
        "--device",
        "cpu",
    )
    assert r.returncode == 0, r.stderr[-2000:]
    res = results(log, "my_data", "m")
    test = res["selections"]["last"]["test"]
    assert res["data"]["counts"]["test"]["n"] == 8 and res["data"]["classes"] == ["cat", "dog"]
    assert (test["conflicting"] is not None) == with_bias and (
        test["unbiased"] is not None
    ) == with_bias
    if not with_bias:
        assert "n/a" in r.stdout  # metrics that need bias labels are reported as unavailable
    t = run_cli(
        "test",
        "--pretrained_path",
        log / "my_data" / "m",
        "--manifest",
        manifest,
        "--device",
        "cpu",
        "--json",
    )
    assert t.returncode == 0, t.stderr
    assert json.loads(t.stdout)["metrics"]["test"]["accuracy"] == pytest.approx(test["accuracy"])


def test_image_folder_dataset_trains(tmp_path):
    write_image_folder(tmp_path / "insects", {"train": 6, "test": 2})
    r = run_cli(
        "train",
        "--image_folder",
        tmp_path / "insects",
        "--train_lff",
        "--exp",
        "f",
        "--log_dir",
        tmp_path / "log",
        "--model",
        "resnet20",
        *FAST,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    res = results(tmp_path / "log", "insects", "f")
    assert (
        res["data"]["classes"] == ["ants", "bees"]
        and res["data"]["valid_from_train"]["fraction"] == 0.1
    )


def test_bar_dataset_trains_with_bias_metrics_unavailable(tmp_path):
    write_bar_layout(tmp_path / "dataset")
    r = run_cli(
        "train",
        "--dataset",
        "bar",
        "--data_dir",
        tmp_path / "dataset",
        "--train_vanilla",
        "--exp",
        "b",
        "--log_dir",
        tmp_path / "log",
        "--image_size",
        "32",
        *FAST,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    res = results(tmp_path / "log", "bar", "b")
    test = res["selections"]["last"]["test"]
    assert res["data"]["bias_labels"] == "unavailable" and res["data"]["test_all_bias_conflicting"]
    assert test["conflicting"] is None and test["unbiased"] is None and test["worst_group"] is None
    assert (
        res["selections"]["last"]["test_primary"] == test["accuracy"]
        and res["primary_metric"] == "accuracy (no bias labels)"
    )
    assert res["selections"]["best_valid_unbiased"] is None  # needs bias labels on valid


def test_manifest_errors_are_one_line(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("path,label\nx.png,0\n")
    r = run_cli("train", "--manifest", bad, "--train_vanilla", "--log_dir", tmp_path / "log", *FAST)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "target" in r.stderr
    assert not (tmp_path / "log").exists()
    both = run_cli("train", "--manifest", bad, "--image_folder", tmp_path, "--train_vanilla")
    assert both.returncode == 2 and "not allowed with" in both.stderr
