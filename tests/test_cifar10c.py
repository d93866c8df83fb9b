"""Corrupted CIFAR-10 builder end to end on a slice of the real CIFAR-10 (the shared JPEG zip)."""

import json
import zipfile

import numpy as np
import pytest
import torch

from debiaslab.data.colored import percent_to_rho
from tests.conftest import run_cli, shared_data_dir

PER_CLASS_TRAIN, PER_CLASS_TEST = 60, 20


@pytest.fixture(scope="module")
def cifar_slice(tmp_path_factory):
    """The first images of each class of ../shared/data/cifar10-jpeg.zip, as a zip of the same layout."""
    d = shared_data_dir()
    if d is None or not (d / "cifar10-jpeg.zip").exists():
        pytest.skip(
            "real CIFAR-10 not available: set DEBIASLAB_SHARED_DATA or place cifar10-jpeg.zip in ../shared/data"
        )
    out = tmp_path_factory.mktemp("cifar") / "slice.zip"
    with zipfile.ZipFile(d / "cifar10-jpeg.zip") as src, zipfile.ZipFile(out, "w") as dst:
        names = sorted(n for n in src.namelist() if n.endswith(".jpg"))
        for split, k in (("train", PER_CLASS_TRAIN), ("test", PER_CLASS_TEST)):
            by_class = {}
            for n in names:
                parts = n.split("/")
                if parts[-3] == split:
                    by_class.setdefault(parts[-2], []).append(n)
            for members in by_class.values():
                for n in members[:k]:
                    dst.writestr(n, src.read(n))
    return out


def expected_cells(targets: np.ndarray, rho: float) -> np.ndarray:
    """[target, bias] counts of the LfF rule: per class, diff of round(n_c * cumsum(ratios))."""
    eye = np.eye(10)
    ratios = rho * eye + (1 - rho) / 9 * (1 - eye)
    out = np.zeros((10, 10), np.int64)
    for c in range(10):
        n = int((targets == c).sum())
        milestones = np.round(n * np.cumsum(ratios[c])).astype(np.int64)
        milestones[-1] = n
        out[c] = np.diff(np.concatenate([[0], milestones]))
    return out


def cells(split) -> np.ndarray:
    return np.bincount((split.targets * 10 + split.biases).numpy(), minlength=100).reshape(10, 10)


def build(cifar_slice, out, *extra):
    r = run_cli(
        "data",
        "build",
        "cifar10c",
        "--cifar10",
        cifar_slice,
        "--out",
        out,
        "--percent",
        "1",
        "5",
        "--valid_size",
        "100",
        "--workers",
        "2",
        *extra,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads((out / "cifar10c" / "manifest.json").read_text())


def test_builder_follows_the_protocol_and_is_reproducible(cifar_slice, tmp_path):
    from debiaslab.data.reference import load_reference

    manifest = build(cifar_slice, tmp_path / "a")
    assert (
        manifest["severity"] == 5
        and manifest["corruption_type"] == 0
        and manifest["corruptions"][0] == "snow"
    )
    assert manifest["source"]["kind"] == "zip" and len(manifest["source"]["sha256"]) == 64
    for pct in ("1pct", "5pct"):
        b = load_reference(tmp_path / "a", "cifar10c", pct)
        assert (
            len(b.train) == 10 * PER_CLASS_TRAIN - 100
            and len(b.valid) == 100
            and len(b.test) == 10 * PER_CLASS_TEST
        )
        assert b.train.images.shape[1:] == (3, 32, 32) and b.train.images.dtype == torch.uint8
        rho = percent_to_rho(float(pct[:-3]))
        for split in (b.train, b.valid):
            assert (cells(split) == expected_cells(split.targets.numpy(), rho)).all()
        assert (cells(b.test) == expected_cells(b.test.targets.numpy(), 0.1)).all()
        assert manifest["splits"][pct]["train"]["sha256"] == b.train.checksum()
    assert manifest["splits"]["test"]["sha256"] == b.test.checksum()
    again = build(
        cifar_slice, tmp_path / "b", "--workers", "1"
    )  # a different worker count: same bytes
    assert again["splits"] == manifest["splits"]
    other = build(cifar_slice, tmp_path / "c", "--seed", "1")
    assert (
        other["splits"]["1pct"]["train"]["sha256"] != manifest["splits"]["1pct"]["train"]["sha256"]
    )


def test_each_bias_is_its_corruption(cifar_slice):
    """Every image with bias b is its clean source image corrupted by the b-th corruption."""
    from debiaslab.data.cifar10 import load_cifar10
    from debiaslab.data.cifar10c import Corrupter, build_test
    from debiaslab.data.corruptions import TYPE1

    cifar, _ = load_cifar10(str(cifar_slice), None)
    with Corrupter(1, 3, seed=0, workers=1) as corrupter:
        test = build_test(cifar, corrupter)
    clean = torch.from_numpy(cifar["x_test"]).permute(0, 3, 1, 2)
    original = TYPE1.index("original")
    same = (test.images == clean).flatten(1).all(1)
    assert torch.equal(same, test.biases == original)  # only "original" leaves an image untouched
    blur = test.biases == TYPE1.index("gaussian_blur")
    diff_blur = (test.images[blur].float() - clean[blur].float()).abs().mean()
    noise = test.biases == TYPE1.index("impulse_noise")
    diff_noise = (test.images[noise].float() - clean[noise].float()).abs().mean()
    assert diff_blur > 1 and diff_noise > 1


def test_preview_and_type1_folder(cifar_slice, tmp_path):
    from PIL import Image

    r = run_cli(
        "data",
        "preview",
        "cifar10c",
        "--cifar10",
        cifar_slice,
        "--output",
        tmp_path / "grid.png",
        "--type",
        "1",
    )
    assert r.returncode == 0, r.stderr
    with Image.open(tmp_path / "grid.png") as im:
        assert (
            im.width > 10 * 96 and im.height > 11 * 96
        )  # 11 rows (clean + 10 corruptions), 10 columns, 3x scale
    r = run_cli(
        "data",
        "build",
        "cifar10c",
        "--cifar10",
        cifar_slice,
        "--out",
        tmp_path,
        "--percent",
        "2",
        "--valid_size",
        "50",
        "--type",
        "1",
        "--severity",
        "1",
    )
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "cifar10c_type1" / "2pct" / "valid").is_dir() and not (
        tmp_path / "cifar10c"
    ).exists()


def test_builder_errors_are_one_line(tmp_path, cifar_slice):
    for args, needle in (
        (["--cifar10", tmp_path / "nope.zip"], "does not exist"),
        (["--cifar10", cifar_slice, "--percent", "abc"], "not a number"),
        (["--cifar10", cifar_slice, "--valid_size", "0"], "--valid_size"),
        (["--cifar10", cifar_slice, "--workers", "0"], "--workers"),
    ):
        r = run_cli("data", "build", "cifar10c", "--out", tmp_path / "o", *args)
        assert (
            r.returncode == 2 and needle in r.stderr and len(r.stderr.strip().splitlines()) == 1
        ), r.stderr
    (tmp_path / "junk.zip").write_bytes(b"not a zip")
    r = run_cli(
        "data", "build", "cifar10c", "--out", tmp_path / "o", "--cifar10", tmp_path / "junk.zip"
    )
    assert r.returncode == 2 and "zip" in r.stderr
    assert not (tmp_path / "o" / "cifar10c").exists()


def test_cifar10_sources_agree(cifar_slice, tmp_path):
    from debiaslab import UserError
    from debiaslab.data.cifar10 import load_cifar10

    zipped, prov = load_cifar10(str(cifar_slice), None)
    assert prov["kind"] == "zip" and zipped["x_train"].shape == (10 * PER_CLASS_TRAIN, 32, 32, 3)
    assert (np.bincount(zipped["y_test"]) == PER_CLASS_TEST).all()
    np.savez(
        tmp_path / "c.npz",
        x_train=zipped["x_train"].transpose(0, 3, 1, 2),
        y_train=zipped["y_train"],
        x_test=zipped["x_test"],
        y_test=zipped["y_test"],
    )  # NCHW is accepted too
    from_npz, prov = load_cifar10(str(tmp_path / "c.npz"), None)
    assert prov["kind"] == "npz" and all(np.array_equal(zipped[k], from_npz[k]) for k in zipped)
    with zipfile.ZipFile(cifar_slice) as z:
        z.extractall(tmp_path / "folder")
    from_folder, prov = load_cifar10(str(tmp_path / "folder"), None)
    assert prov["kind"] == "image-folder" and all(
        np.array_equal(zipped[k], from_folder[k]) for k in zipped
    )
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="is not a CIFAR-10 .npz"):
        load_cifar10(str(tmp_path / "empty"), None)
