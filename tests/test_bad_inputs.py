"""Every bad input a user can type or point at: one line naming the problem and the fix, exit 2, no traceback,
nothing left behind that a later run would trust."""

import shutil

import pytest
import torch
from PIL import Image

from tests.conftest import run_cli

RUN = [
    "--train_vanilla",
    "--dataset",
    "cmnist",
    "--percent",
    "1pct",
    "--num_steps",
    "3",
    "--valid_freq",
    "3",
    "--batch_size",
    "8",
    "--no_progress",
    "--device",
    "cpu",
    "--exp",
    "x",
]


def first_png(folder):
    return sorted(folder.rglob("*.png"))[0]


def no_labels(root):
    Image.new("RGB", (8, 8)).save(root / "cmnist" / "1pct" / "align" / "0" / "holiday.png")


def target_out_of_range(root):
    Image.new("RGB", (8, 8)).save(root / "cmnist" / "test" / "0" / "999_12_0.png")


def bias_out_of_range(root):
    Image.new("RGB", (8, 8)).save(root / "cmnist" / "1pct" / "valid" / "998_1_10.png")


def class_missing_in_train(root):
    Image.new("RGB", (8, 8)).save(root / "cmnist" / "test" / "0" / "999_5_5.png")


def empty_split(root):
    shutil.rmtree(root / "cmnist" / "test")
    (root / "cmnist" / "test").mkdir()


def truncated_image(root):
    p = first_png(root / "cmnist" / "1pct" / "align")
    p.write_bytes(p.read_bytes()[:40])


def other_size(root):
    p = first_png(root / "cmnist" / "1pct" / "conflict")
    Image.new("RGB", (10, 8)).save(p)


def not_an_image(root):
    (root / "cmnist" / "1pct" / "align" / "notes.txt").write_text("hello")


def missing_conflict(root):
    shutil.rmtree(root / "cmnist" / "1pct" / "conflict")


@pytest.mark.parametrize(
    "mutate,needles",
    [
        (no_labels, ["holiday.png", "<id>_<target>_<bias>"]),
        (target_out_of_range, ["target label 12", "out of range", "*_12_*"]),
        (bias_out_of_range, ["bias label 10", "out of range"]),
        (class_missing_in_train, ["not in the training split"]),
        (empty_split, ["no images found", "test"]),
        (truncated_image, ["cannot read image", "re-download or remove it"]),
        (other_size, ["10x8", "same size"]),
        (not_an_image, ["notes.txt", "not an image"]),
        (missing_conflict, ["conflict", "incomplete"]),
    ],
)
def test_bad_dataset_one_line_exit_2_nothing_left(tiny_reference, tmp_path, mutate, needles):
    mutate(tiny_reference)
    r = run_cli("train", *RUN, "--data_dir", tiny_reference, "--log_dir", tmp_path / "log")
    assert r.returncode == 2, r.stdout + r.stderr
    lines = [
        line
        for line in r.stderr.strip().splitlines()
        if "Warning" not in line and "warnings.warn" not in line
    ]
    assert (
        len(lines) == 1 and lines[0].startswith("debiaslab: error:") and "Traceback" not in r.stderr
    ), r.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert not (tmp_path / "log").exists()


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--num_steps", "-5"], "--num_steps"),
        (["--valid_freq", "0"], "--valid_freq"),
        (["--keep_checkpoints", "0"], "--keep_checkpoints"),
        (["--q", "0"], "--q"),
        (["--image_size", "0"], "--image_size"),
        (["--train_ours"], "not allowed with"),
        (["--use_resnet20", "--model", "mlp"], "--use_resnet20"),
        (["--model", "vgg"], "--model 'vgg' is not a model"),
        (["--on_nonfinite", "ignore"], "invalid choice"),
    ],
)
def test_bad_flags(tiny_reference, tmp_path, args, needle):
    r = run_cli("train", *RUN, *args, "--data_dir", tiny_reference, "--log_dir", tmp_path / "log")
    assert (
        r.returncode == 2
        and needle in r.stderr
        and "Traceback" not in r.stderr
        and r.stderr.strip().count("\n") == 0
    ), r.stderr
    assert not (tmp_path / "log").exists()


def test_junk_grey_and_rgba_images_are_handled(tiny_reference, tmp_path):
    align = tiny_reference / "cmnist" / "1pct" / "align"
    (align / ".DS_Store").write_bytes(b"\0\0")
    (align / "0" / "Thumbs.db").write_bytes(b"\0")
    grey, rgba = sorted(align.rglob("*.png"))[:2]
    Image.open(grey).convert("L").save(grey)
    Image.open(rgba).convert("RGBA").save(rgba)
    r = run_cli("train", *RUN, "--data_dir", tiny_reference, "--log_dir", tmp_path / "log")
    assert r.returncode == 0, r.stderr
    assert "skipping" in r.stderr and ".DS_Store" in r.stderr and "Thumbs.db" in r.stderr


@pytest.mark.parametrize("damage", ["truncate", "tamper"])
def test_damaged_cache_is_rebuilt(tiny_reference, tmp_path, damage):
    from debiaslab.data.reference import load_reference

    good = load_reference(tiny_reference, "cmnist", "1pct")
    cache = tiny_reference / "cmnist" / ".debiaslab_cache" / "1pct_train.pt"
    if damage == "truncate":
        cache.write_bytes(cache.read_bytes()[:100])
    else:
        blob = torch.load(cache, weights_only=True)
        blob["images"][0] = 255 - blob["images"][0]
        torch.save(blob, cache)
    with pytest.warns(
        UserWarning,
        match="unreadable cache" if damage == "truncate" else "does not match its checksum",
    ):
        again = load_reference(tiny_reference, "cmnist", "1pct")
    assert torch.equal(again.train.images, good.train.images)
    assert (
        load_reference(tiny_reference, "cmnist", "1pct").train.checksum() == good.train.checksum()
    )  # rewritten


def test_bad_checkpoints(tiny_reference, tmp_path):
    r = run_cli("train", *RUN, "--data_dir", tiny_reference, "--log_dir", tmp_path / "log")
    assert r.returncode == 0, r.stderr
    ckpt = tmp_path / "log" / "cmnist" / "x" / "checkpoint_last.pt"
    state = torch.load(ckpt, weights_only=True)
    state["method_state"]["models"]["model"]["feature.0.weight"] = torch.zeros(100, 5)
    torch.save(state, tmp_path / "other_arch.pt")
    (tmp_path / "garbage.pt").write_bytes(ckpt.read_bytes()[:500])
    for path, needle in (
        (tmp_path / "other_arch.pt", "does not fit"),
        (tmp_path / "garbage.pt", "cannot load checkpoint"),
        (tmp_path / "nope.pt", "does not exist"),
    ):
        t = run_cli(
            "test",
            "--pretrained_path",
            path,
            "--dataset",
            "cmnist",
            "--percent",
            "1pct",
            "--data_dir",
            tiny_reference,
        )
        assert (
            t.returncode == 2
            and needle in t.stderr
            and str(path.name) in t.stderr
            and "Traceback" not in t.stderr
        ), t.stderr
    debug = run_cli(
        "--debug",
        "test",
        "--pretrained_path",
        tmp_path / "garbage.pt",
        "--data_dir",
        tiny_reference,
    )
    assert debug.returncode != 0 and "Traceback" in debug.stderr  # --debug shows where it came from


def test_more_paths_and_names(tiny_reference, tmp_path):
    (tmp_path / "afile").write_text("x")
    cases = [
        (["--data_dir", tmp_path / "afile"], "is a file, not a folder"),
        (
            ["--data_dir", tiny_reference / "cmnist"],
            f"--data_dir {tiny_reference}",
        ),  # the dataset folder itself: the fix
        (["--data_dir", tiny_reference, "--dataset", "cifar10"], "it has: cmnist"),
        (["--data_dir", tiny_reference, "--exp", "../escape"], "plain name"),
        (["--data_dir", tiny_reference, "--lr", "inf"], "--lr"),
        (["--data_dir", tiny_reference, "--log_dir", tmp_path / "afile"], "writable folder"),
    ]
    for args, needle in cases:
        r = run_cli("train", *RUN[:-2], "--exp", "x", "--log_dir", tmp_path / "log", *args)
        assert r.returncode == 2 and needle in r.stderr and r.stderr.strip().count("\n") == 0, (
            args,
            r.stderr,
        )
    assert not (tmp_path / "log").exists() and not (tmp_path / "escape").exists()
    ok = run_cli(
        "train",
        *RUN[:-2],
        "--exp",
        "x",
        "--log_dir",
        tmp_path / "log",
        "--data_dir",
        tiny_reference,
        "--percent",
        "1",
    )  # --percent 1 means the 1pct folder
    assert ok.returncode == 0, ok.stderr


def test_builder_output_that_is_a_file(tmp_path):
    (tmp_path / "afile").write_text("x")
    np = pytest.importorskip("numpy")
    np.savez(
        tmp_path / "m.npz",
        x_train=np.zeros((20, 28, 28), np.uint8),
        y_train=np.arange(20) % 10,
        x_test=np.zeros((10, 28, 28), np.uint8),
        y_test=np.arange(10),
    )
    r = run_cli(
        "data",
        "build",
        "cmnist",
        "--mnist",
        tmp_path / "m.npz",
        "--valid_size",
        "5",
        "--out",
        tmp_path / "afile",
    )
    assert (
        r.returncode == 2
        and "afile" in r.stderr
        and r.stderr.strip().count("\n") == 0
        and "Traceback" not in r.stderr
    )


def test_sigterm_marks_the_run_and_the_rerun_resumes(tiny_reference, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    from tests.conftest import REPO

    cmd = [
        sys.executable,
        "-m",
        "debiaslab",
        "train",
        *map(str, RUN[:-4]),
        "--num_steps",
        "3000",
        "--save_freq",
        "10",
        "--valid_freq",
        "1000",
        "--exp",
        "x",
        "--data_dir",
        str(tiny_reference),
        "--log_dir",
        str(tmp_path / "log"),
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    run = tmp_path / "log" / "cmnist" / "x"
    deadline = time.time() + 120
    while not (run / "checkpoint_last.pt").exists() and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM and (run / "FAILED").exists()
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "resuming" in again.stdout and not (run / "FAILED").exists(), (
        again.stderr
    )
