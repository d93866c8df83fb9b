"""Reference-layout reader/writer, the label parser, and the Colored MNIST protocol."""

import json

import numpy as np
import pytest
import torch

from debiaslab import UserError
from debiaslab.data.colored import (
    PALETTE,
    PALETTES,
    bias_labels,
    colorize,
    match_palette,
    read_palette,
)
from debiaslab.data.reference import load_reference, parse_labels, read_split, write_split
from tests.conftest import run_cli, tiny_split


@pytest.mark.parametrize(
    "name,expected",
    [
        ("123_4_7.png", (4, 7)),
        ("0_0_0.jpg", (0, 0)),
        ("a_b_12_3.png", (12, 3)),
        ("img_1_9_1.jpeg", (9, 1)),
    ],
)
def test_parse_labels(name, expected):
    assert parse_labels(name) == expected


@pytest.mark.parametrize(
    "name", ["123.png", "1_2.png", "a_b_c.png", "1_-2_3.png", "1_2_x.png", "_1.png"]
)
def test_parse_labels_errors_name_the_file_and_the_fix(name):
    with pytest.raises(UserError) as e:
        parse_labels(name)
    msg = str(e.value)
    assert name in msg and "<id>_<target>_<bias>" in msg and "\n" not in msg


def test_write_then_read_roundtrip_and_conlict_spelling(tmp_path):
    split = tiny_split(5, 3, 4, 0)
    base = tmp_path / "cmnist"
    write_split(split, base / "1pct", "train")
    (base / "1pct" / "conflict").rename(base / "1pct" / "conlict")  # the original README's spelling
    write_split(split, base / "1pct" / "valid", "flat", start_id=100)
    write_split(split, base / "test", "class", start_id=200)
    (base / "test" / "0" / ".DS_Store").write_text("junk")
    with pytest.warns(UserWarning, match="DS_Store"):
        b = load_reference(tmp_path, "cmnist", "1pct")
    assert b.num_classes == 3 and len(b.train) == len(split) and len(b.test) == len(split)
    assert b.counts()["train"]["conflicting"] == int((split.targets != split.biases).sum())
    order = torch.argsort(split.targets * 100 + split.biases, stable=True)
    got = torch.argsort(b.test.targets * 100 + b.test.biases, stable=True)
    assert torch.equal(b.test.images[got], split.images[order])  # PNG is lossless
    # the second read comes from the cache and gives the same content
    b2 = load_reference(tmp_path, "cmnist", "1pct")
    assert b2.checksums() == b.checksums()
    assert (base / ".debiaslab_cache").is_dir()


def test_a_ratio_without_conflicting_images_is_written_and_read(tmp_path):
    """A small build can draw no conflicting training image at a ratio: its conflict/ folder is
    still written (empty), and the split reads as all aligned."""
    aligned = tiny_split(4, 2, 0, 0)
    write_split(aligned, tmp_path / "cmnist" / "0.5pct", "train")
    write_split(aligned, tmp_path / "cmnist" / "0.5pct" / "valid", "flat", start_id=100)
    write_split(tiny_split(4, 2, 2, 1), tmp_path / "cmnist" / "test", "class", start_id=200)
    assert (tmp_path / "cmnist" / "0.5pct" / "conflict").is_dir()
    bundle = load_reference(tmp_path, "cmnist", "0.5pct")
    assert bundle.counts()["train"]["conflicting"] == 0 and len(bundle.train) == 8


def test_cache_is_invalidated_when_files_change(tmp_path):
    split = tiny_split(4, 2, 0, 0)
    folder = tmp_path / "d" / "test"
    write_split(split, folder, "class")
    s1, c1 = read_split([folder], tmp_path / "d", "test")
    (folder / "0" / "0_0_0.png").unlink()
    s2, c2 = read_split([folder], tmp_path / "d", "test")
    assert len(s2) == len(s1) - 1 and c1 != c2


def test_reader_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_reference(tmp_path / "nope", "cmnist", "1pct")
    (tmp_path / "cmnist" / "0.5pct").mkdir(parents=True)
    with pytest.raises(UserError, match="available under .*0.5pct"):
        load_reference(tmp_path, "cmnist", "3pct")
    folder = tmp_path / "x"
    folder.mkdir()
    (folder / "1_2_3.png").write_bytes(b"not a png")
    with pytest.raises(UserError, match="cannot read image .*1_2_3.png"):
        read_split([folder], tmp_path, "k", use_cache=False)
    (folder / "1_2_3.png").unlink()
    (folder / "nolabels.png").write_bytes(b"x")
    with pytest.raises(UserError, match="nolabels.png"):
        read_split([folder], tmp_path, "k", use_cache=False)


def test_bias_labels_follow_the_lff_rule():
    targets = torch.arange(10).repeat_interleave(1000)
    b = bias_labels(targets, 0.95, 10, torch.Generator().manual_seed(0))
    for c in range(10):
        cls = b[targets == c]
        assert (cls == c).sum() == 950
        others = torch.bincount(cls[cls != c], minlength=10)
        others = others[torch.arange(10) != c]
        assert others.max() - others.min() <= 1 and others.sum() == 50
    uniform = bias_labels(targets, 0.1, 10, torch.Generator().manual_seed(0))
    assert torch.bincount(uniform[targets == 3], minlength=10).tolist() == [100] * 10
    again = bias_labels(targets, 0.95, 10, torch.Generator().manual_seed(0))
    assert torch.equal(b, again)


def test_colorize_uses_the_palette_and_intensity():
    gray = torch.full((4, 2, 2), 255, dtype=torch.uint8)
    gray[:, 0, 0] = 0
    rgb = colorize(gray, torch.tensor([0, 4, 6, 9]), 0.0, torch.Generator().manual_seed(0))
    assert rgb.shape == (4, 3, 2, 2) and rgb.dtype == torch.uint8
    assert torch.equal(rgb[:, :, 1, 1].double(), (PALETTE[[0, 4, 6, 9]].double() * 255).floor())
    assert rgb[:, :, 0, 0].sum() == 0
    noisy = colorize(gray, torch.tensor([0, 4, 6, 9]), 0.05, torch.Generator().manual_seed(0))
    assert not torch.equal(noisy, rgb)


def test_the_default_palette_is_disents_saturated_hues():
    expected = [
        (1, 0, 0),
        (1, 0.5, 0),
        (1, 1, 0),
        (0.5, 1, 0),
        (0, 1, 0),
        (0, 1, 1),
        (0, 0, 1),
        (0.5, 0, 1),
        (1, 0, 0.5),
        (1, 0, 1),
    ]
    assert torch.equal(PALETTE, torch.tensor(expected, dtype=torch.float32))
    assert PALETTES["lff"][0].tolist() == pytest.approx([0.9837, 0.3125, 0.1686])


@pytest.mark.parametrize("name", ["disent", "lff"])
def test_read_palette_gives_back_the_colours_of_each_label(name):
    g = torch.Generator().manual_seed(0)
    gray = torch.randint(0, 200, (300, 6, 6), generator=g, dtype=torch.uint8)
    gray[:, 2, 3] = 255  # a full-intensity stroke pixel, as MNIST digits have
    biases = torch.arange(10).repeat(30)
    rgb = colorize(gray, biases, 0.005, g, PALETTES[name])
    measured = read_palette(rgb, biases)
    assert (measured - PALETTES[name]).abs().max() < 0.01
    assert match_palette(measured) == name
    assert match_palette(measured.flip(0)) is None  # colours that are no known palette
    assert read_palette(rgb[biases != 4], biases[biases != 4])[4].isnan().all()


def test_palettes_change_only_the_colours(mnist_npz):
    from debiaslab.data.cmnist import build_cmnist
    from debiaslab.data.mnist import load_mnist

    mnist, _ = load_mnist(str(mnist_npz), None)
    small = {k: v[:4000] for k, v in mnist.items()}
    disent, lff = (
        build_cmnist(small, 1.0, seed=0, valid_size=500, palette=p) for p in ("disent", "lff")
    )
    for name in ("train", "valid", "test"):
        a, b = getattr(disent, name), getattr(lff, name)
        assert torch.equal(a.targets, b.targets) and torch.equal(a.biases, b.biases)
        assert not torch.equal(a.images, b.images)
        assert match_palette(read_palette(a.images, a.biases)) == "disent"
        assert match_palette(read_palette(b.images, b.biases)) == "lff"
    assert disent.info["palette"] == "disent" and lff.info["palette"] == "lff"


def test_build_cmnist_in_memory_follows_the_protocol(mnist_npz):
    from debiaslab.data.cmnist import build_cmnist
    from debiaslab.data.mnist import load_mnist

    mnist, prov = load_mnist(str(mnist_npz), None)
    assert prov["sha256"] == "094b831e432331f1f6d6829ab9bfff4551410a81e1f816c9cce482d3e9b3ba57"
    b = build_cmnist(mnist, 0.5, seed=0)
    counts = b.counts()
    assert (
        counts["train"]["n"] == 55000
        and counts["valid"]["n"] == 5000
        and counts["test"]["n"] == 10000
    )
    assert 250 <= counts["train"]["conflicting"] <= 280
    assert 20 <= counts["valid"]["conflicting"] <= 30
    # test: unbiased, every colour equally likely within each class
    t = b.test
    for c in range(10):
        per = torch.bincount(t.biases[t.targets == c], minlength=10)
        assert per.max() - per.min() <= 1
    # the colour of a digit is its bias colour
    img = b.train.images[:200].float().flatten(2)
    for i in range(0, 200, 37):
        colour = img[i][:, img[i].sum(0).argmax()] / 255  # the brightest stroke pixel
        assert torch.allclose(
            colour / colour.max(),
            PALETTE[b.train.biases[i]] / PALETTE[b.train.biases[i]].max(),
            atol=0.08,
        )
    # deterministic under its seed; another seed differs
    assert build_cmnist(mnist, 0.5, seed=0).checksums() == b.checksums()
    assert build_cmnist(mnist, 0.5, seed=1).checksums()["train"] != b.checksums()["train"]


def write_mnist_slice(mnist_npz, path, n_train: int, n_test: int) -> None:
    """The first digits of the real MNIST, as an .npz the builder reads."""
    with np.load(mnist_npz) as z:
        np.savez(
            path,
            x_train=z["x_train"][:n_train],
            y_train=z["y_train"][:n_train],
            x_test=z["x_test"][:n_test],
            y_test=z["y_test"][:n_test],
        )


def test_cli_builds_cmnist_from_npz(tmp_path, mnist_npz):
    # a slice of the real MNIST keeps this test quick; the full build runs the same code
    write_mnist_slice(mnist_npz, tmp_path / "small.npz", 3000, 1000)
    out = tmp_path / "dataset"
    r = run_cli(
        "data",
        "build",
        "cmnist",
        "--mnist",
        tmp_path / "small.npz",
        "--out",
        out,
        "--percent",
        "1",
        "5",
        "--valid_size",
        "500",
        "--seed",
        "3",
    )
    assert r.returncode == 0, r.stderr
    manifest = json.loads((out / "cmnist" / "manifest.json").read_text())
    assert (
        manifest["seed"] == 3 and manifest["sigma"] == 0.005 and manifest["source"]["kind"] == "npz"
    )
    assert set(manifest["splits"]) == {"test", "1pct", "5pct"}
    assert manifest["palette"] == "disent" and manifest["palette_rgb"] == PALETTE.tolist()
    assert "assets/data.png" in manifest["palette_source"]
    assert manifest["splits"]["5pct"]["train"]["n"] == 2500
    assert abs(manifest["splits"]["5pct"]["train"]["conflicting"] - 125) <= 5  # per-class rounding
    b = load_reference(out, "cmnist", "5pct")
    assert b.checksums()["train"] == manifest["splits"]["5pct"]["train"]["sha256"]
    # decoding the PNGs without the cache gives exactly the cached content
    from debiaslab.data.reference import split_folders

    fresh, checksum = read_split(
        split_folders(out, "cmnist", "5pct")["train"], out / "cmnist", "x", use_cache=False
    )
    assert checksum == manifest["splits"]["5pct"]["train"]["sha256"]
    # rebuilding is refused without --force, and reproduces the same checksums with it
    again = run_cli(
        "data",
        "build",
        "cmnist",
        "--mnist",
        tmp_path / "small.npz",
        "--out",
        out,
        "--percent",
        "1",
        "5",
        "--valid_size",
        "500",
        "--seed",
        "3",
    )
    assert again.returncode == 2 and "--force" in again.stderr
    forced = run_cli(
        "data",
        "build",
        "cmnist",
        "--mnist",
        tmp_path / "small.npz",
        "--out",
        out,
        "--percent",
        "1",
        "5",
        "--valid_size",
        "500",
        "--seed",
        "3",
        "--force",
    )
    assert forced.returncode == 0, forced.stderr
    assert (
        json.loads((out / "cmnist" / "manifest.json").read_text())["splits"] == manifest["splits"]
    )


def test_a_folder_of_one_palette_is_never_used_as_the_other(tmp_path, mnist_npz):
    write_mnist_slice(mnist_npz, tmp_path / "small.npz", 2000, 500)
    out = tmp_path / "lff_data"
    r = run_cli(
        "data",
        "build",
        "cmnist",
        "--palette",
        "lff",
        "--mnist",
        tmp_path / "small.npz",
        "--out",
        out,
        "--percent",
        "5",
        "--valid_size",
        "200",
    )
    assert r.returncode == 0 and "lff palette" in r.stdout, r.stderr
    manifest = json.loads((out / "cmnist" / "manifest.json").read_text())
    assert manifest["palette"] == "lff" and manifest["palette_rgb"] == PALETTES["lff"].tolist()
    train = [
        "train",
        "--train_vanilla",
        "--percent",
        "5pct",
        "--data_dir",
        out,
        "--num_steps",
        "20",
        "--valid_freq",
        "10",
        "--log_dir",
        tmp_path / "log",
        "--no_progress",
    ]
    refused = run_cli(*train, "--exp", "default")  # the default palette is DisEnt's
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert (
        refused.stderr.count("\n") == 1
        and "lff palette" in refused.stderr
        and "--palette disent" in refused.stderr
    )
    assert (
        "--palette lff" in refused.stderr and not (tmp_path / "log" / "cmnist" / "default").exists()
    )
    for palette in ("lff", "any"):
        ok = run_cli(*train, "--exp", palette, "--palette", palette)
        assert ok.returncode == 0, ok.stderr
        meta = json.loads((tmp_path / "log" / "cmnist" / palette / "config.json").read_text())
        assert meta["config"]["palette"] == palette and meta["data"]["palette"] == "lff"
        assert meta["data"]["palette_measured"][3] == pytest.approx(
            PALETTES["lff"][3].tolist(), abs=0.01
        )
    # test.py checks the data it evaluates on in the same way
    bad = run_cli(
        "test",
        "--pretrained_path",
        tmp_path / "log" / "cmnist" / "lff",
        "--dataset",
        "cmnist",
        "--percent",
        "5pct",
        "--data_dir",
        out,
        "--palette",
        "disent",
    )
    assert bad.returncode == 2 and "lff palette" in bad.stderr


def test_cli_build_errors(tmp_path):
    r = run_cli(
        "data", "build", "cmnist", "--mnist", tmp_path / "missing.npz", "--out", tmp_path / "o"
    )
    assert r.returncode == 2 and "missing.npz" in r.stderr and "Traceback" not in r.stderr
    r = run_cli(
        "data", "build", "cmnist", "--mnist", tmp_path, "--out", tmp_path / "o", "--percent", "abc"
    )
    assert r.returncode == 2 and "abc" in r.stderr


def _write_idx(path, array):
    import struct

    magic = 0x0803 if array.ndim == 3 else 0x0801
    with open(path, "wb") as f:
        f.write(struct.pack(">II", magic, len(array)))
        if array.ndim == 3:
            f.write(struct.pack(">II", *array.shape[1:]))
        f.write(array.astype(np.uint8).tobytes())


def test_mnist_sources_agree(tmp_path):
    """The .npz, torchvision-root and image-folder sources give the same digits."""
    from PIL import Image

    from debiaslab.data.mnist import load_mnist

    rng = np.random.default_rng(0)
    arrays = {
        "x_train": rng.integers(0, 256, (20, 28, 28), dtype=np.uint8),
        "y_train": np.arange(20) % 10,
        "x_test": rng.integers(0, 256, (10, 28, 28), dtype=np.uint8),
        "y_test": np.arange(10) % 10,
    }
    np.savez(tmp_path / "m.npz", **arrays)
    raw = tmp_path / "tv" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for prefix, split in (("train", "train"), ("t10k", "test")):
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", arrays[f"x_{split}"])
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", arrays[f"y_{split}"])
    for split in ("train", "test"):
        for i, (img, label) in enumerate(zip(arrays[f"x_{split}"], arrays[f"y_{split}"])):
            d = tmp_path / "folder" / split / str(label)
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(d / f"{i:03d}.png")
    npz, prov = load_mnist(str(tmp_path / "m.npz"), None)
    tv, prov_tv = load_mnist(str(tmp_path / "tv"), None)
    folder, prov_f = load_mnist(str(tmp_path / "folder"), None)
    assert (prov["kind"], prov_tv["kind"], prov_f["kind"]) == (
        "npz",
        "torchvision-folder",
        "image-folder",
    )
    for k in arrays:
        assert torch.equal(npz[k], tv[k]), k
    # the image folder is read class by class: same digits, grouped by label
    order = np.argsort(arrays["y_train"], kind="stable")
    assert torch.equal(folder["x_train"], npz["x_train"][order]) and torch.equal(
        folder["y_train"], npz["y_train"][order]
    )
    with pytest.raises(UserError, match="is not an MNIST .npz file"):
        load_mnist(str(tmp_path / "folder" / "train"), None)


def test_killed_build_leaves_no_dataset_and_restarts_cleanly(tmp_path):
    """SIGKILL a build mid-way: nothing that looks like a dataset (or its cache) is left; the rerun completes."""
    import os
    import signal
    import subprocess
    import sys

    from tests.conftest import REPO

    g = np.random.default_rng(0)
    np.savez(
        tmp_path / "m.npz",
        x_train=g.integers(0, 256, (20000, 28, 28), dtype=np.uint8),
        y_train=np.arange(20000) % 10,
        x_test=g.integers(0, 256, (2000, 28, 28), dtype=np.uint8),
        y_test=np.arange(2000) % 10,
    )
    cmd = [
        sys.executable,
        "-m",
        "debiaslab",
        "data",
        "build",
        "cmnist",
        "--mnist",
        str(tmp_path / "m.npz"),
        "--valid_size",
        "1000",
        "--percent",
        "1",
        "5",
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        cmd + ["--out", str(tmp_path / "a")], env=env, stdout=subprocess.PIPE, text=True
    )
    for line in proc.stdout:
        if line.startswith("test:"):  # the test split is written; the 1pct split is being written
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert not (tmp_path / "a" / "cmnist").exists()  # only the hidden staging folder is left
    assert (tmp_path / "a" / ".cmnist.partial").exists()
    with pytest.raises(UserError):
        load_reference(tmp_path / "a", "cmnist", "1pct")
    again = subprocess.run(
        cmd + ["--out", str(tmp_path / "a")], env=env, capture_output=True, text=True, timeout=600
    )
    assert again.returncode == 0, again.stderr
    assert not (tmp_path / "a" / ".cmnist.partial").exists()
    straight = subprocess.run(
        cmd + ["--out", str(tmp_path / "b")], env=env, capture_output=True, text=True, timeout=600
    )
    assert straight.returncode == 0
    read = [
        json.loads((tmp_path / o / "cmnist" / "manifest.json").read_text())["splits"]
        for o in ("a", "b")
    ]
    assert read[0] == read[1]
    assert (
        load_reference(tmp_path / "a", "cmnist", "5pct").train.checksum()
        == read[0]["5pct"]["train"]["sha256"]
    )


def test_the_denetdm_protocol_trains_on_every_digit_and_validates_on_test(tmp_path):
    """DeNetDM's build: LfF's palette, all training digits, the test split doubling as valid;
    recorded in the manifest, and a run reads it (with --palette lff)."""
    import json

    import numpy as np

    from debiaslab.data.cmnist import build_cmnist
    from debiaslab.data.colored import match_palette, read_palette
    from tests.conftest import quick_train_args, run_cli

    g = np.random.default_rng(1)
    arrays = dict(
        x_train=g.integers(0, 256, (600, 28, 28), dtype=np.uint8),
        y_train=np.arange(600) % 10,
        x_test=g.integers(0, 256, (200, 28, 28), dtype=np.uint8),
        y_test=np.arange(200) % 10,
    )
    mnist = {k: torch.from_numpy(v) for k, v in arrays.items()}
    b = build_cmnist(mnist, 5.0, seed=0, palette="lff", protocol="denetdm")
    assert len(b.train) == 600 and b.valid is b.test and len(b.test) == 200
    lff = build_cmnist(mnist, 5.0, seed=0, palette="lff", valid_size=100)
    assert (len(lff.train), len(lff.valid)) == (500, 100)
    assert torch.equal(b.test.images, lff.test.images)  # one test split for both protocols
    np.savez(tmp_path / "m.npz", **arrays)
    built = run_cli("data", "build", "cmnist", "--mnist", tmp_path / "m.npz", "--protocol",
                    "denetdm", "--percent", "5", "--out", tmp_path / "d")  # fmt: skip
    assert built.returncode == 0 and "denetdm protocol, lff palette" in built.stdout, built.stderr
    manifest = json.loads((tmp_path / "d" / "cmnist" / "manifest.json").read_text())
    assert manifest["protocol_name"] == "denetdm" and manifest["valid_from"] == "test"
    assert manifest["palette"] == "lff" and manifest["splits"]["5pct"]["train"]["n"] == 600
    assert manifest["splits"]["5pct"]["valid"]["sha256"] == manifest["splits"]["test"]["sha256"]
    args = quick_train_args(tmp_path / "d", tmp_path / "log", "--percent", "5pct")
    refused = run_cli("train", "--train_vanilla", *args)
    assert refused.returncode == 2 and "--palette lff" in refused.stderr
    run = run_cli("train", "--train_vanilla", "--palette", "lff", "--batch_size", "64", *args)
    assert run.returncode == 0, run.stderr
    config = json.loads((tmp_path / "log" / "cmnist" / "debugging" / "config.json").read_text())
    assert config["data"]["sha256"]["valid"] == config["data"]["sha256"]["test"]
    train = read_palette(b.train.images, b.train.biases, 10)
    assert match_palette(train) == "lff"
