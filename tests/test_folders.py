"""CSV manifest, image-folder and BAR readers: labels, splits, hold-out, resizing, cache, errors."""

import os

import pytest
import torch

from debiaslab import UserError
from debiaslab.data import folders
from debiaslab.data.folders import load_bar, load_image_folder, load_manifest
from tests.conftest import write_image


def red_values(split):
    return split.images[:, 0, 0, 0].tolist()


def write_manifest(folder, header, rows, name="m.csv"):
    """Write the CSV ``rows`` (path first) and a PNG for each path whose red value is its row number."""
    for i, row in enumerate(rows):
        write_image(folder / row.split(",")[0], (i, 50, 100))
    path = folder / name
    path.write_text(header + "\n" + "\n".join(rows) + "\n")
    return path


def assert_user_error(fn, *needles):
    with pytest.raises(UserError) as e:
        fn()
    msg = str(e.value)
    assert "\n" not in msg
    for needle in needles:
        assert needle in msg, msg
    return msg


# ----------------------------------------------------------------------------- manifest


def test_manifest_with_names_bias_and_splits(tmp_path):
    csv_path = write_manifest(
        tmp_path,
        "path,target,bias,split",
        [
            "imgs/a0.png,dog,outdoor,train",
            "imgs/a1.png,cat,indoor,Train",
            "imgs/a2.png,dog,indoor,TRAIN",
            "imgs/a3.png,cat,indoor,train",
            "imgs/v0.png,cat,outdoor,valid",
            "imgs/t0.png,dog,indoor,test",
            "imgs/t1.png,cat,outdoor, test ",
        ],
    )
    b = load_manifest(csv_path)
    assert b.name == "m" and b.num_classes == 2
    assert b.info["classes"] == ["cat", "dog"] and b.info["bias_classes"] == ["indoor", "outdoor"]
    assert b.info["source"] == csv_path.name and "valid_from_train" not in b.info
    assert b.train.targets.tolist() == [1, 0, 1, 0] and b.train.biases.tolist() == [1, 0, 0, 0]
    assert b.valid.targets.tolist() == [0] and b.valid.biases.tolist() == [1]
    assert b.test.targets.tolist() == [1, 0] and b.test.biases.tolist() == [0, 1]
    assert (
        red_values(b.train) == [0, 1, 2, 3]
        and red_values(b.valid) == [4]
        and red_values(b.test) == [5, 6]
    )
    assert b.train.images.dtype == torch.uint8 and tuple(b.train.images.shape) == (4, 3, 16, 16)
    assert {k: b.info[f"sha256_{k}"] for k in ("train", "valid", "test")} == {
        k: getattr(b, k).checksum() for k in ("train", "valid", "test")
    }


def test_manifest_integer_labels_without_bias_and_relative_paths(tmp_path):
    write_image(tmp_path / "data" / "x.png", (1, 0, 0))
    write_image(tmp_path / "meta" / "y.png", (2, 0, 0))
    write_image(tmp_path / "z.png", (3, 0, 0))
    write_image(tmp_path / "meta" / "w.png", (4, 0, 0))
    (tmp_path / "meta" / "list.csv").write_text(
        f"split,Path,target\ntrain,../data/x.png,0\ntrain,y.png,2\nvalid,{tmp_path / 'z.png'},2\ntest,./w.png,0\n"
    )
    b = load_manifest(tmp_path / "meta" / "list.csv")
    assert b.name == "list" and b.num_classes == 3 and "classes" not in b.info
    assert b.train.biases is None and b.valid.biases is None and b.test.biases is None
    assert (
        red_values(b.train) == [1, 2] and red_values(b.valid) == [3] and red_values(b.test) == [4]
    )
    assert b.train.targets.tolist() == [0, 2] and b.test.targets.tolist() == [0]


def held_out_manifest(tmp_path):
    rows = [
        f"imgs/{c}_{i}.png,{c},train" for c, n in (("a", 10), ("b", 10), ("c", 3)) for i in range(n)
    ]
    return write_manifest(tmp_path, "path,target,split", rows + ["imgs/t.png,a,test"])


def test_manifest_without_valid_rows_holds_out_a_stratified_seeded_valid(tmp_path):
    csv_path = held_out_manifest(tmp_path)
    b = load_manifest(csv_path, valid_fraction=0.2, seed=3)
    assert b.info["valid_from_train"] == {"fraction": 0.2, "seed": 3}
    assert torch.bincount(b.valid.targets).tolist() == [2, 2, 1]  # round(0.2 * 3) = 1: at least one
    assert torch.bincount(b.train.targets).tolist() == [8, 8, 2]
    train, valid = red_values(b.train), red_values(b.valid)
    assert (
        sorted(train + valid) == list(range(23))
        and train == sorted(train)
        and valid == sorted(valid)
    )
    again = load_manifest(csv_path, valid_fraction=0.2, seed=3, use_cache=False)
    assert again.checksums() == b.checksums()
    other = load_manifest(csv_path, valid_fraction=0.2, seed=4)
    assert red_values(other.valid) != valid and other.info["sha256_test"] == b.info["sha256_test"]


def test_manifest_without_split_column_is_rejected(tmp_path):
    csv_path = write_manifest(tmp_path, "path,target", ["a.png,0", "b.png,1"])
    assert_user_error(lambda: load_manifest(csv_path), str(csv_path), "split=test")


@pytest.mark.parametrize(
    "header,rows,needles",
    [
        ("path,label,split", ["a.png,0,train", "b.png,0,test"], ["'target' column", "path,target"]),
        (
            "path,target,split",
            ["a.png,0,train", "b.png,0,trian"],
            ["line 3", "'trian'", "train, valid, test"],
        ),
        ("path,target,split", ["a.png,0,train", "b.png,0,valid"], ["split=test"]),
        (
            "path,target,split",
            ["a.png,0,train", "a.png,0,test"],
            ["lines 2 and 3", "a.png", "duplicate"],
        ),
        (
            "path,target,bias,split",
            ["a.png,0,1,train", "b.png,0,,test"],
            ["line 3", "bias cell is empty"],
        ),
        ("path,target,split", ["a.png,0,train", "b.png,-1,test"], ["line 3", "negative"]),
        (
            "path,target,split",
            ["a.png,0,train", "b.png,1,test"],
            ["[1]", "test split", "no training image"],
        ),
    ],
)
def test_manifest_errors_name_the_row_and_the_fix(tmp_path, header, rows, needles):
    csv_path = write_manifest(tmp_path, header, rows)
    assert_user_error(lambda: load_manifest(csv_path), *needles)


def test_manifest_missing_and_unreadable_images(tmp_path):
    csv_path = write_manifest(tmp_path, "path,target,split", ["a.png,0,train", "b.png,0,test"])
    (tmp_path / "b.png").unlink()
    assert_user_error(
        lambda: load_manifest(csv_path), "line 3", "b.png", "relative to the CSV's folder"
    )
    (tmp_path / "b.png").write_bytes(b"this is not a png")
    assert_user_error(lambda: load_manifest(csv_path), "cannot read image", str(tmp_path / "b.png"))
    assert_user_error(lambda: load_manifest(tmp_path / "nope.csv"), "nope.csv", "does not exist")


def test_manifest_mixed_sizes_need_image_size(tmp_path):
    csv_path = write_manifest(
        tmp_path, "path,target,split", ["a.png,0,train", "b.png,0,train", "c.png,0,test"]
    )
    write_image(tmp_path / "b.png", (9, 9, 9), size=(10, 7))
    assert_user_error(lambda: load_manifest(csv_path), "b.png", "10x7", "--image_size N")
    b = load_manifest(csv_path, image_size=4)
    assert {tuple(getattr(b, s).images.shape[1:]) for s in ("train", "valid", "test")} == {
        (3, 4, 4)
    }
    assert sorted(red_values(b.valid) + red_values(b.train)) == [
        0,
        9,
    ]  # a one-colour image stays one colour


# ----------------------------------------------------------------------------- image folder


def test_image_folder_sorted_classes_and_optional_valid(tmp_path):
    for i, (split, cls) in enumerate(
        [
            ("train", "dog"),
            ("train", "dog"),
            ("train", "cat"),
            ("train", "cat"),
            ("train", "bird"),
            ("train", "bird"),
            ("test", "dog"),
            ("test", "bird"),
        ]
    ):
        write_image(tmp_path / "pets" / split / cls / f"{i}.png", (i, 0, 0))
    b = load_image_folder(tmp_path / "pets", seed=1)
    assert b.name == "pets" and b.num_classes == 3 and b.info["classes"] == ["bird", "cat", "dog"]
    assert b.test.targets.tolist() == [0, 2] and red_values(b.test) == [7, 6]
    assert b.train.biases is None and b.valid.biases is None and b.test.biases is None
    assert torch.bincount(b.valid.targets).tolist() == [1, 1, 1] and "valid_from_train" in b.info

    write_image(tmp_path / "pets" / "valid" / "cat" / "v.png", (42, 0, 0))
    (tmp_path / "pets" / "valid" / ".DS_Store").write_text("junk")
    with pytest.warns(UserWarning, match="DS_Store"):
        b = load_image_folder(tmp_path / "pets")
    assert len(b.train) == 6 and b.valid.targets.tolist() == [1] and red_values(b.valid) == [42]
    assert "valid_from_train" not in b.info


def test_image_folder_errors(tmp_path):
    root = tmp_path / "ds"
    write_image(root / "train" / "cat" / "0.png", (0, 0, 0))
    write_image(root / "test" / "cow" / "0.png", (0, 0, 0))
    assert_user_error(lambda: load_image_folder(root), str(root / "test" / "cow"), "no folder in")
    (root / "test" / "cow").rename(root / "test" / "cat")
    (root / "test" / "cat" / "notes.txt").write_text("hello")
    assert_user_error(lambda: load_image_folder(root), "notes.txt", "not an image")
    assert_user_error(lambda: load_image_folder(tmp_path / "missing"), "train", "does not exist")


# ----------------------------------------------------------------------------- BAR


def write_bar(root):
    names = {
        "train": [
            "climbing_1.jpg",
            "climbing_2.jpg",
            "diving_1.jpg",
            "sub/diving_7.jpg",
            "fishing_3.jpg",
            "fishing_4.jpg",
            "pole_vaulting_3.jpg",
            "Pole Vaulting_4.jpg",
            "racing_1.png",
            "racing_2.jpg",
            "throwing_1.jpg",
            "ThROWing_2.jpg",
            "vaulting_9.jpg",
            "polevaulting_10.jpg",
        ],
        "test": ["racing_7.png", "climbing_9.jpg", "vaulting_1.jpg"],
    }
    for split, files in names.items():
        for i, name in enumerate(files):
            write_image(root / split / name, (i * 10, 0, 0), size=(20 + i, 13 + 2 * i))


def test_bar_labels_flags_and_resize(tmp_path):
    write_bar(tmp_path / "BAR")
    b = load_bar(tmp_path / "BAR", image_size=16)
    assert b.name == "bar" and b.num_classes == 6
    assert b.info["classes"] == ["climbing", "diving", "fishing", "vaulting", "racing", "throwing"]
    assert b.info["test_all_bias_conflicting"] is True and b.info["bias_labels"] == "unavailable"
    assert b.info["valid_from_train"] == {"fraction": 0.1, "seed": 0}
    assert all(getattr(b, s).biases is None for s in ("train", "valid", "test"))
    assert torch.bincount(torch.cat([b.train.targets, b.valid.targets])).tolist() == [
        2,
        2,
        2,
        4,
        2,
        2,
    ]
    assert torch.bincount(b.valid.targets).tolist() == [1, 1, 1, 1, 1, 1]
    assert sorted(b.test.targets.tolist()) == [0, 3, 4]
    assert {tuple(getattr(b, s).images.shape[1:]) for s in ("train", "valid", "test")} == {
        (3, 16, 16)
    }


@pytest.mark.parametrize("bad", ["sunset.jpg", "swimming_1.jpg", "climbing.jpg", "climbing_x.jpg"])
def test_bar_bad_names(tmp_path, bad):
    write_bar(tmp_path)
    write_image(tmp_path / "train" / bad, (0, 0, 0))
    assert_user_error(
        lambda: load_bar(tmp_path, image_size=8), str(tmp_path / "train" / bad), "<action>_<n>"
    )


# ----------------------------------------------------------------------------- cache


def test_cache_reuses_decoded_splits_and_follows_changes(tmp_path, monkeypatch):
    csv_path = held_out_manifest(tmp_path)
    first = load_manifest(csv_path)
    assert sorted(p.name for p in (tmp_path / ".debiaslab_cache").iterdir()) == [
        "manifest_m_test_native.pt",
        "manifest_m_train_native.pt",
    ]

    def no_decoding(paths, image_size):
        raise AssertionError("decoded again")

    real_decode = folders.decode_resized
    monkeypatch.setattr(folders, "decode_resized", no_decoding)
    assert load_manifest(csv_path).checksums() == first.checksums()

    os.utime(tmp_path / "imgs" / "a_0.png", ns=(1, 1))  # a changed file invalidates its split
    with pytest.raises(AssertionError, match="decoded again"):
        load_manifest(csv_path)
    monkeypatch.setattr(folders, "decode_resized", real_decode)
    load_manifest(csv_path)
    csv_path.write_text(csv_path.read_text().replace("imgs/t.png,a,test", "imgs/t.png,b,test"))
    monkeypatch.setattr(folders, "decode_resized", no_decoding)
    with pytest.raises(AssertionError, match="decoded again"):  # so does a relabelled row
        load_manifest(csv_path)
    with pytest.raises(AssertionError, match="decoded again"):  # and another image size
        load_manifest(csv_path, image_size=4)


def test_manifest_bias_names_that_are_class_names_point_to_those_classes(tmp_path):
    """'fox' as a bias is class fox (2), not the second bias name in sorted order."""
    csv_path = write_manifest(
        tmp_path,
        "path,target,bias,split",
        [
            "imgs/a0.png,cat,fox,train",
            "imgs/a1.png,dog,cat,train",
            "imgs/a2.png,fox,fox,train",
            "imgs/v0.png,cat,dog,valid",
            "imgs/t0.png,dog,fox,test",
        ],
    )
    b = load_manifest(csv_path)
    assert b.info["classes"] == ["cat", "dog", "fox"] and "bias_classes" not in b.info
    assert b.train.biases.tolist() == [2, 0, 2] and b.valid.biases.tolist() == [1]
    assert b.test.biases.tolist() == [2]
