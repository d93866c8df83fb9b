"""README claims, each checked against something the test computes itself (never debiaslab against itself)."""

import dataclasses
import hashlib
import json
import os

import pytest
import torch

from debiaslab.selection import selection_names
from tests.conftest import (
    assert_metrics_match,
    assert_same_tensors,
    metrics_by_loop,
    predict_classes,
    quick_train_args,
    read_log,
    run_cli,
    run_test_cli,
    saved_mlps,
    tiny_bundle,
    tiny_config,
    write_bar_layout,
    write_reference,
)


def train_quick(data, logs, exp, *extra):
    """A 40-step Vanilla CLI run of ``tiny_reference`` into ``<logs>/cmnist/<exp>``."""
    return run_cli(
        "train",
        "--dataset",
        "cmnist",
        "--percent",
        "1pct",
        "--exp",
        exp,
        "--train_vanilla",
        *quick_train_args(data, logs, *extra),
    )


def cmnist_test_metrics(models: dict, method: str, data) -> dict:
    """Test metrics of ``models`` by a plain loop, on pixels / 255 / 255 (the CMNIST reference scaling)."""
    from debiaslab.data.reference import load_reference

    test = load_reference(data, "cmnist", "1pct").test
    preds = predict_classes(method, models, test.images.float() / 255 / 255)
    assert len(set(preds.tolist())) > 1  # a constant prediction would make the comparison weak
    return metrics_by_loop(preds, test.targets, test.biases, 3)


# -- --overwrite ------------------------------------------------------------------------------------
def test_overwrite_replaces_a_different_run_and_retrains_an_identical_one(tiny_reference, tmp_path):
    """--overwrite replaces a finished run of another config and retrains a finished identical one."""
    run = tmp_path / "cmnist" / "o"
    assert train_quick(tiny_reference, tmp_path, "o", "--lr", "0.01").returncode == 0
    (run / "marker").write_text("old run")
    refused = train_quick(
        tiny_reference, tmp_path, "o", "--lr", "0.02"
    )  # contrast: without --overwrite
    assert (
        refused.returncode == 2 and "differs in lr" in refused.stderr and (run / "marker").exists()
    )

    replaced = train_quick(tiny_reference, tmp_path, "o", "--lr", "0.02", "--overwrite")
    assert replaced.returncode == 0, replaced.stderr
    assert not (run / "marker").exists()  # the old folder was removed, not merged into
    assert json.loads((run / "config.json").read_text())["config"]["lr"] == 0.02
    assert (run / "results.json").exists()

    before = (run / "results.json").stat().st_mtime_ns
    same = train_quick(tiny_reference, tmp_path, "o", "--lr", "0.02")  # contrast: not retrained
    assert same.returncode == 0 and "not retraining" in same.stdout
    assert (run / "results.json").stat().st_mtime_ns == before
    (run / "marker").write_text("finished identical run")
    again = train_quick(tiny_reference, tmp_path, "o", "--lr", "0.02", "--overwrite")
    assert again.returncode == 0, again.stderr
    assert "not retraining" not in again.stdout and "resuming" not in again.stdout
    assert not (run / "marker").exists() and (run / "results.json").stat().st_mtime_ns != before
    # trained from scratch: one run's evaluations, not the old ones plus new ones
    assert [r["step"] for r in read_log(run, "eval")] == [20, 40]


# -- --no_best_checkpoints -----------------------------------------------------------------------
def test_no_best_checkpoints_writes_only_the_last_and_test_says_so(tiny_reference, tmp_path):
    """--no_best_checkpoints: only checkpoint_last.pt; every selection still reported; test of a
    missing rule is a one-line error naming the file; the default (last) evaluates correctly."""
    r = train_quick(tiny_reference, tmp_path, "n", "--no_best_checkpoints")
    assert r.returncode == 0, r.stderr
    run = tmp_path / "cmnist" / "n"
    assert sorted(p.name for p in run.glob("checkpoint_*.pt")) == ["checkpoint_last.pt"]
    selections = json.loads((run / "results.json").read_text())["selections"]
    assert list(selections) == selection_names()
    no_biased_branch = {n for n in selection_names() if "pseudo_unbiased" in n}  # Vanilla
    assert all(s is None for n, s in selections.items() if n in no_biased_branch)
    assert all(
        s is not None and s["step"] in (20, 40)
        for n, s in selections.items()
        if n not in no_biased_branch
    )

    missing = run_test_cli(run, tiny_reference, "--select", "best_valid")
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    assert (
        len(missing.stderr.strip().splitlines()) == 1
        and "checkpoint_best_valid.pt" in missing.stderr
    )

    last = run_test_cli(run, tiny_reference, "--select", "last", "--json")
    assert last.returncode == 0, last.stderr
    out = json.loads(last.stdout)
    assert out["step"] == 40
    expected = cmnist_test_metrics(
        saved_mlps(run, "vanilla", 3, (3, 8, 8)), "vanilla", tiny_reference
    )
    assert_metrics_match(out["metrics"]["test"], expected)


# -- read-only data folder: the decode cache goes to $XDG_CACHE_HOME ---------------------------------------
def folder_listing(root):
    """Every path under ``root`` with its size and modification time."""
    return {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


def split_tensors(bundle):
    """Images, targets and biases of each split, for an exact comparison."""
    return {
        n: [getattr(bundle, n).images, getattr(bundle, n).targets, getattr(bundle, n).biases]
        for n in ("train", "valid", "test")
    }


def test_read_only_data_folder_caches_under_xdg_cache_home(tiny_reference, tmp_path, monkeypatch):
    """A read-only data folder: the cache goes to $XDG_CACHE_HOME/debiaslab/<digest>/, nothing is
    written into the data folder, and a second read is served from that cache."""
    import debiaslab.data.reference as reference

    base = tiny_reference / "cmnist"
    xdg = tmp_path / "xdg"
    monkeypatch.setenv("XDG_CACHE_HOME", str(xdg))
    real_access = os.access

    def access(path, mode, *args, **kw):
        if mode & os.W_OK and str(path).startswith(str(tiny_reference)):
            return False
        return real_access(path, mode, *args, **kw)

    # We run as root, for whom os.access(W_OK) is true even on a 0o555 folder; so the folder is made
    # read-only (as a user would) AND os.access is told to say so for anything under the data root.
    monkeypatch.setattr(reference.os, "access", access)
    dirs = [tiny_reference, *(p for p in tiny_reference.rglob("*") if p.is_dir())]
    before = folder_listing(tiny_reference)
    for d in dirs:
        d.chmod(0o555)
    try:
        first = reference.load_reference(tiny_reference, "cmnist", "1pct")
        assert folder_listing(tiny_reference) == before  # nothing written into the data folder
        digest = hashlib.sha256(str(base.resolve()).encode()).hexdigest()[:16]
        assert sorted(p.name for p in (xdg / "debiaslab" / digest).iterdir()) == [
            "1pct_train.pt",
            "1pct_valid.pt",
            "test.pt",
        ]

        def no_decoding(*a, **k):
            raise AssertionError("decoded the images again instead of reading the cache")

        monkeypatch.setattr(reference, "decode_images", no_decoding)
        second = reference.load_reference(tiny_reference, "cmnist", "1pct")
    finally:
        for d in dirs:
            d.chmod(0o755)
    assert first.checksums() == second.checksums()
    assert_same_tensors(split_tensors(first), split_tensors(second))
    assert len(first.train) == 120 and not (base / ".debiaslab_cache").exists()


# -- training never reads bias labels ---------------------------------------------------------------
def permuted_biases(bundle):
    """The bundle with its TRAIN split's bias labels shuffled (images and targets untouched)."""
    from debiaslab.data.splits import Split

    train = bundle.train
    perm = torch.randperm(len(train), generator=torch.Generator().manual_seed(7))
    shuffled = Split(train.images, train.targets, train.biases[perm])
    conflicting = lambda s: s.targets != s.biases  # noqa: E731
    assert not torch.equal(conflicting(shuffled), conflicting(train))  # really other bias labels
    return dataclasses.replace(bundle, train=shuffled)


@pytest.mark.parametrize("method", ["vanilla", "lff", "disent"])
def test_training_never_reads_bias_labels(tmp_path, method):
    """Shuffling the training split's bias labels changes nothing training computes (weights,
    optimizers, EMAs, logged losses), only the bias-label diagnostics."""
    from debiaslab.train import train

    runs = {}
    for name, bundle in (("as_is", tiny_bundle()), ("shuffled", permuted_biases(tiny_bundle()))):
        # curr_step 5: DisEnt's swap runs from step 6 of 20
        cfg = tiny_config(tmp_path / name, method=method, curr_step=5, log_freq=5)
        train(cfg, bundle)
        run = tmp_path / name / "tiny" / "e"
        runs[name] = (
            torch.load(run / "checkpoint_last.pt", weights_only=True),
            read_log(run, "train"),
            read_log(run, "eval"),
        )
    (ckpt_a, train_a, eval_a), (ckpt_b, train_b, eval_b) = runs["as_is"], runs["shuffled"]
    assert ckpt_a["step"] == 20 and len(train_a) == 4
    assert_same_tensors(ckpt_a["method_state"], ckpt_b["method_state"], "method_state")
    assert train_a == train_b  # every loss term and LR, at every log
    assert [{k: r[k] for k in ("step", "valid", "test")} for r in eval_a] == [
        {k: r[k] for k in ("step", "valid", "test")} for r in eval_b
    ]
    if (
        method != "vanilla"
    ):  # the diagnostics do read them: proof the shuffled labels reached the run
        assert all("train_w" in r for r in eval_a + eval_b)
        assert [r["train_w"] for r in eval_a] != [r["train_w"] for r in eval_b]


# -- the reference's Vanilla checkpoint ---------------------------------------------------------------
def test_reference_vanilla_checkpoint_is_evaluated_with_its_scaling(tiny_reference, tmp_path):
    """``best_model.th`` as the reference writes it: loaded, scaled x/255/255 and scored correctly."""
    from debiaslab.models import build_model

    torch.manual_seed(
        3
    )  # a seed whose scaled-up MLP predicts all 3 classes, differently under x/255
    model = build_model("mlp", 3, 1, (3, 8, 8))
    with torch.no_grad():
        model.feature[0].weight.mul_(
            10000.0
        )  # so the [0, 1/255] inputs give a non-trivial prediction
    ref = tmp_path / "pretrained"
    ref.mkdir()
    torch.save(
        {"steps": 77, "state_dict": model.state_dict(), "optimizer": {}}, ref / "best_model.th"
    )
    r = run_cli(
        "test.py",
        f"--pretrained_path={ref}",
        "--dataset=cmnist",
        "--percent=1pct",
        "--data_dir",
        tiny_reference,
        "--json",
        module=False,
    )
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert (out["source"], out["step"], out["input_scale"]) == ("reference", 77, "reference")
    expected = cmnist_test_metrics({"model": model.eval()}, "vanilla", tiny_reference)
    assert_metrics_match(out["metrics"]["test"], expected)


# -- BFFHQ and BAR are 224x224 when the models see them -----------------------------------------------
@pytest.fixture
def resnet18_inputs(monkeypatch):
    """The shape of every batch a ResNet18 sees (training and evaluation)."""
    from debiaslab.models.resnet import ResNet18

    shapes = []
    real = ResNet18.extract

    def spy(self, x):
        shapes.append(tuple(x.shape[1:]))
        return real(self, x)

    monkeypatch.setattr(ResNet18, "extract", spy)
    return shapes


@pytest.mark.parametrize("dataset", ["bffhq", "bar"])
def test_bffhq_and_bar_models_see_224x224_images(tmp_path, resnet18_inputs, dataset):
    """Training, evaluation (and, for BFFHQ, ``debiaslab test``) feed 3x224x224 batches to the model."""
    from debiaslab.cli import main
    from debiaslab.config import TrainConfig
    from debiaslab.train import train

    data = tmp_path / "data"
    if dataset == "bffhq":  # 32x32 images: only a resize can make them 224x224
        write_reference(data, "bffhq", ["0.5pct"], size=32, flat_eval_one_level_up=True)
    else:
        write_bar_layout(data)
    cfg = TrainConfig(
        dataset=dataset,
        percent="0.5pct",
        method="vanilla",
        data_dir=str(data),
        log_dir=str(tmp_path / "log"),
        exp="r",
        num_steps=2,
        batch_size=4,
        valid_freq=1,
        device="cpu",
        progress=False,
    )
    assert cfg.image_size is None  # the dataset's default applies
    train(cfg)
    # 2 steps, 2 evaluations of valid and test (each split in one batch) by the raw and the averaged model
    assert len(resnet18_inputs) == 10 and set(resnet18_inputs) == {(3, 224, 224)}, resnet18_inputs
    if dataset == "bffhq":
        resnet18_inputs.clear()
        assert (
            main(
                [
                    "test",
                    "--pretrained_path",
                    str(tmp_path / "log" / "bffhq" / "r"),
                    "--dataset",
                    "bffhq",
                    "--percent",
                    "0.5pct",
                    "--data_dir",
                    str(data),
                    "--device",
                    "cpu",
                ]
            )
            == 0
        )
        assert resnet18_inputs and set(resnet18_inputs) == {(3, 224, 224)}, resnet18_inputs
