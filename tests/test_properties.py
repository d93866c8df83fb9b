"""Property-based tests (hypothesis): the file-name parser and the reference-layout reader on generated trees."""

import tempfile
import warnings
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from debiaslab import UserError
from debiaslab.data.reference import parse_labels, read_split

label = st.integers(min_value=0, max_value=10**6)
ident = st.text(alphabet="abcxyz0123456789_-.", min_size=1, max_size=12).filter(
    lambda s: not s.startswith(".")
)
ext = st.sampled_from([".png", ".jpg", ".PNG", ".jpeg", ".bmp"])


@given(ident, label, label, ext)
def test_parser_reads_the_last_two_fields(i, t, b, e):
    assert parse_labels(f"{i}_{t}_{b}{e}") == (t, b)
    assert parse_labels(f"some/dir/{i}_{t}_{b}{e}") == (t, b)


@given(st.text(max_size=20), ext)
def test_parser_accepts_exactly_the_two_label_names(text, e):
    stem = Path(text + e).stem
    parts = stem.split("_")
    digits = set("0123456789")
    valid = (
        len(parts) >= 3
        and all(p and set(p) <= digits for p in parts[-2:])
        and "_".join(parts[:-2]) != ""
    )
    try:
        t, b = parse_labels(text + e)
    except UserError as err:
        assert not valid, stem
        assert "<id>_<target>_<bias>" in str(err) and "rename it or remove it" in str(err)
    else:
        assert valid and (t, b) == (int(parts[-2]), int(parts[-1])), stem


JUNK = [".DS_Store", "Thumbs.db", "desktop.ini", "._0_1_2.png"]
tree = st.lists(
    st.tuples(
        st.sampled_from(["align", "conflict", "align/0", "conflict/7", "align/a/b"]),
        st.integers(0, 9),
        st.integers(0, 9),
        st.booleans(),
    ),
    min_size=1,
    max_size=12,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    tree,
    st.lists(
        st.tuples(st.sampled_from(["align", "conflict/7", "align/0", ""]), st.sampled_from(JUNK)),
        max_size=4,
    ),
    st.booleans(),
)
def test_reader_returns_every_image_with_its_labels_and_skips_junk(files, junk, hidden_dir):
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        for sub in ("align", "conflict"):
            (root / sub).mkdir()
        expected = {}
        for k, (sub, t, b, grey) in enumerate(files):
            folder = root / sub
            folder.mkdir(parents=True, exist_ok=True)
            colour = (k * 20 % 256, t * 25, b * 25)
            im = Image.new("RGB", (3, 2), colour)
            (im.convert("L") if grey else im).save(folder / f"{k}_{t}_{b}.png")
            expected[k] = (t, b, colour if not grey else None)
        for sub, name in junk:
            (root / sub).mkdir(parents=True, exist_ok=True)
            (root / sub / name).write_bytes(b"\0junk")
        if hidden_dir:  # hidden folders (e.g. .ipynb_checkpoints) are not part of the dataset
            (root / "align" / ".ipynb_checkpoints").mkdir()
            Image.new("RGB", (5, 5)).save(root / "align" / ".ipynb_checkpoints" / "99_0_0.png")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            split, checksum = read_split(
                [root / "align", root / "conflict"], root, "k", use_cache=False
            )
        assert len(caught) == len(
            {(sub, name) for sub, name in junk if sub}
        )  # junk beside align/ is not read at all
        assert (
            len(split) == len(files)
            and split.images.shape[1:] == (3, 2, 3)
            and split.images.dtype == torch.uint8
        )
        got = sorted(zip(split.targets.tolist(), split.biases.tolist()))
        assert got == sorted((t, b) for t, b, _ in expected.values())
        assert checksum == split.checksum()


@settings(max_examples=20, deadline=None)
@given(
    st.sampled_from(["notes.txt", "x.npy", "README", "1_2_3.png.part"]),
    st.sampled_from(["align", "conflict/3"]),
)
def test_reader_refuses_non_images_naming_the_file(name, sub):
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        (root / sub).mkdir(parents=True)
        Image.new("RGB", (2, 2)).save(root / sub / "0_1_1.png")
        (root / sub / name).write_text("x")
        with pytest.raises(UserError, match=name.replace(".", r"\.")):
            read_split([root / sub], root, "k", use_cache=False)
