"""The library cannot be misused quietly: a run's identity includes its data, inputs are checked
at the edge (one UserError naming the argument, what was found and the fix, nothing written),
and a setting the run's steps never reach is said at start and kept in config.json."""

import json
import warnings

import numpy as np
import pytest
import torch
import torch.nn as nn

import debiaslab as dl
from debiaslab import UserError
from debiaslab.data.splits import DatasetBundle, Split
from tests.conftest import quick_train_args, run_cli, tiny_bundle

FIT = dict(num_steps=10, valid_freq=5, batch_size=16, lr=1e-2, device="cpu")


def parts(split: Split) -> tuple:
    return split.images, split.targets, split.biases


def with_split(bundle: DatasetBundle, name: str, **changes) -> dict:
    """``tensor_data``'s arguments for ``bundle``, one split's parts replaced."""
    out = {n: parts(getattr(bundle, n)) for n in ("train", "valid", "test")}
    images, targets, biases = out[name]
    new = {"images": images, "targets": targets, "biases": biases, **changes}
    out[name] = (new["images"], new["targets"], new["biases"])
    return out


def tiny_cnn(num_classes, head_inputs, in_shape):
    features = nn.Sequential(nn.Conv2d(in_shape[0], 4, 3), nn.AdaptiveAvgPool2d(1))
    return dl.Backbone(features, 4, num_classes, head_inputs)


def plain_module(num_classes, head_inputs, in_shape):
    return nn.Sequential(nn.Flatten(), nn.Linear(int(np.prod(in_shape)), num_classes))


def wrong_feature_dim(num_classes, head_inputs, in_shape):
    features = nn.Sequential(nn.Conv2d(in_shape[0], 4, 3), nn.AdaptiveAvgPool2d(1))
    return dl.Backbone(features, 5, num_classes, head_inputs)


def two_channel_cnn(num_classes, head_inputs, in_shape):
    features = nn.Sequential(nn.Conv2d(2, 4, 3), nn.AdaptiveAvgPool2d(1))
    return dl.Backbone(features, 4, num_classes, head_inputs)


# --------------------------------------------------------------------------------- tensor_data
B = tiny_bundle()
T = B.train
LABEL_CASES = [
    ("target = num_classes", dict(targets=T.targets.clone().index_fill_(0, torch.tensor([3]), 2)),
     r"tensor_data\(train=\.\.\.\) targets: found 2 \(index 3\), outside \[0, 2\).*num_classes=3"),
    ("negative target", dict(targets=T.targets.clone().index_fill_(0, torch.tensor([0]), -1)),
     r"targets: found -1 \(index 0\).*negative"),
    ("fractional targets", dict(targets=T.targets.float() + 0.5),
     r"targets: found torch.float32 \(values that are not whole numbers\)"),
    ("whole float targets", dict(targets=T.targets.float()),
     r"targets: found torch.float32 \(whole numbers\).*labels.long\(\)"),
    ("one-hot targets", dict(targets=nn.functional.one_hot(T.targets)), r"one-hot.*argmax\(1\)"),
    ("targets of another length", dict(targets=T.targets[:-1]), r"79 labels for 80 images"),
    ("negative bias", dict(biases=T.biases.clone().index_fill_(0, torch.tensor([5]), -1)),
     r"biases: found -1 \(index 5\)"),
    ("bias 99", dict(biases=T.biases.clone().index_fill_(0, torch.tensor([7]), 99)),
     r"biases: found 99 \(index 7\), outside \[0, 2\).*class the bias attribute is aligned with"),
    ("channels last", dict(images=T.images.permute(0, 2, 3, 1)),
     r"train=\.\.\.\) images: shape \(80, 8, 8, 3\), channels last.*permute\(0, 3, 1, 2\)"),
    ("float images in [0, 1]", dict(images=T.images.float() / 255),
     r"float32.*\[0, 1\].*\(images \* 255\).round\(\).to\(torch.uint8\)"),
    ("int64 pixels", dict(images=T.images.long()), r"int64.*images.to\(torch.uint8\)"),
    ("normalised images", dict(images=(T.images.float() - 128) / 64), r"normalised"),
    ("images without channels", dict(images=T.images[:, 0]), r"unsqueeze\(1\)"),
    ("a list of images", dict(images=T.images.tolist()), r"is a list; give a torch tensor"),
]  # fmt: skip


@pytest.mark.parametrize("case,change,message", LABEL_CASES, ids=[c[0] for c in LABEL_CASES])
def test_tensor_data_refuses_bad_splits_with_the_fix(case, change, message):
    with pytest.raises(UserError, match=message):
        dl.tensor_data(**with_split(B, "train", **change), num_classes=2)


def test_num_classes_smaller_than_the_labels_is_refused():
    with pytest.raises(UserError, match=r"found 1 .*outside \[0, 1\)|at least 2 classes"):
        dl.tensor_data(**with_split(B, "train"), num_classes=1)
    three = B.train.targets.clone().index_fill_(0, torch.tensor([1]), 2)
    with pytest.raises(UserError, match=r"outside \[0, 2\) for num_classes=2; pass num_classes=3"):
        dl.tensor_data(**with_split(B, "train", targets=three), num_classes=2)


@pytest.mark.parametrize(
    "images",
    [B.valid.images[:, :, :6, :6], B.valid.images[:, :1]],
    ids=["other size", "grey valid beside RGB train"],
)
def test_splits_of_other_shapes_are_refused(images):
    with pytest.raises(
        UserError,
        match=r"tensor_data\(valid=\.\.\.\) images: \[C, H, W\] = \[\d, \d, \d\].*train split's",
    ):
        dl.tensor_data(**with_split(B, "valid", images=images))


def test_numpy_inputs_are_converted():
    as_numpy = {n: tuple(t.numpy() for t in p) for n, p in with_split(B, "train").items()}
    data = dl.tensor_data(**as_numpy)
    assert torch.equal(data.train.images, B.train.images) and data.num_classes == 2
    assert data.checksums() == dl.tensor_data(**with_split(B, "train")).checksums()


# -------------------------------------------------------------------------------- dataset_data
class Items(torch.utils.data.Dataset):
    def __init__(self, items):
        self.items = items

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def test_dataset_data_refuses_mixed_sizes_and_fractional_labels():
    good = Items([(B.test.images[i], int(B.test.targets[i])) for i in range(len(B.test))])
    sizes = Items(
        [(torch.zeros(3, 8, 8, dtype=torch.uint8), 0), (torch.zeros(3, 6, 6, dtype=torch.uint8), 1)]
    )
    with pytest.raises(
        UserError, match=r"dataset_data\(train=\.\.\.\): the images have different shapes"
    ):
        dl.dataset_data(sizes, good, good)
    halves = Items([(B.test.images[i], 0.5 + i % 2) for i in range(4)])
    with pytest.raises(
        UserError, match=r"targets: found torch.float32 \(values that are not whole"
    ):
        dl.dataset_data(halves, good, good)
    with pytest.raises(UserError, match=r"items must be \(image, target\).*item 0 is a Tensor"):
        dl.dataset_data(Items([B.test.images[0]]), good, good)


# ------------------------------------------------------------------------- fit and the models
@pytest.mark.parametrize(
    "model,message",
    [
        (plain_module, r"returned a Sequential without extract\(x\).*Backbone.from_classifier"),
        (
            wrong_feature_dim,
            r"extract\(x\) gives features \[2, 4\] but fc takes 10 inputs, 2 x the feature size",
        ),
        (two_channel_cnn, r"cannot read the data's images \[2, 3, 8, 8\]"),
        (lambda num_classes, head_inputs, in_shape: None, r"define the factory with def"),
        (nn.Linear(3, 2), r"Linear instance; give a factory"),
        (42, r"fit\(model=\.\.\.\) is a int"),
    ],
    ids=["plain module", "wrong feature_dim", "other channels", "lambda", "instance", "number"],
)
def test_a_model_without_the_interface_is_refused_before_anything_is_written(
    tmp_path, model, message
):
    with pytest.raises(UserError, match=message):
        dl.fit("disent", B, model=model, log_dir=tmp_path / "log", **FIT)
    assert not (tmp_path / "log").exists()


@pytest.mark.parametrize(
    "options,message",
    [
        (dict(num_steps="100"), r"fit\(num_steps='100'\): num_steps takes int, got str"),
        (dict(lr=True), r"fit\(lr=True\): lr takes float, got bool"),
        (dict(curr_step=2.5), r"curr_step takes int, got float"),
    ],
)
def test_fit_refuses_options_of_the_wrong_type(tmp_path, options, message):
    with pytest.raises(UserError, match=message):
        dl.fit("disent", B, log_dir=tmp_path, **{**FIT, **options})


def test_fit_refuses_data_it_cannot_read_and_a_hand_made_bundle_with_bad_labels(tmp_path):
    with pytest.raises(UserError, match=r"fit\(data=\.\.\.\) is a tuple; give dl.tensor_data"):
        dl.fit("vanilla", parts(B.train), log_dir=tmp_path, **FIT)
    test = Split(B.test.images, B.test.targets + 1, B.test.biases)  # labels 1, 2 of 2 classes
    bad = DatasetBundle("mine", B.train, B.valid, test, 2)
    with pytest.raises(UserError, match=r"data 'mine', test split targets: found 2 .*\[0, 2\)"):
        dl.fit("vanilla", bad, log_dir=tmp_path / "log", **FIT)
    assert not (tmp_path / "log").exists()


def test_registering_a_name_again_replaces_it_with_a_warning():
    def my_net(num_classes, head_inputs, in_shape):
        return tiny_cnn(num_classes, head_inputs, in_shape)

    first = my_net
    assert dl.register_model("misuse_net", first) == "misuse_net"

    def my_net(num_classes, head_inputs, in_shape):  # noqa: F811 (a notebook cell run again)
        return tiny_cnn(num_classes, head_inputs, in_shape)

    with pytest.warns(UserWarning, match="'misuse_net' was registered to another factory"):
        dl.register_model("misuse_net", my_net)
    from debiaslab.models import MODELS

    assert MODELS["misuse_net"] is my_net
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dl.register_model("misuse_net", my_net)  # the same factory again: nothing to say
    with pytest.raises(UserError, match="'resnet18' is built in"):
        dl.register_model("resnet18", my_net)


# ------------------------------------------------------------------------ predict and evaluate
@pytest.fixture(scope="module")
def vanilla_run(tmp_path_factory):
    return dl.fit("vanilla", B, model="mlp", log_dir=tmp_path_factory.mktemp("misuse"), **FIT)


def test_predict_refuses_float_pixels_and_other_shapes_and_reads_numpy(vanilla_run):
    x = B.test.images
    with pytest.raises(
        UserError, match=r"predict\(images\): found torch.float32; .*\[0, 1\].*\* 255"
    ):
        vanilla_run.predict(x.float() / 255)
    with pytest.raises(UserError, match=r"images are \[3, 6, 6\] .* trained on \[3, 8, 8\]"):
        vanilla_run.predict(x[:, :, :6, :6])
    with pytest.raises(UserError, match=r"channels last"):
        vanilla_run.predict(x.permute(0, 2, 3, 1))
    assert torch.equal(vanilla_run.predict(x.numpy()), vanilla_run.predict(x))


def test_evaluate_refuses_labels_the_run_has_no_class_for(vanilla_run):
    with pytest.raises(
        UserError, match=r"evaluate\(data\) targets: found 4 .*\[0, 2\).*trained on 2 classes"
    ):
        vanilla_run.evaluate((B.test.images, B.test.targets + 4))
    with pytest.raises(UserError, match=r"evaluate\(data\) targets: found torch.float32"):
        vanilla_run.evaluate((B.test.images, B.test.targets.float()))


# ------------------------------------------------------------------------------ run identity
def test_other_data_under_the_same_name_trains_a_new_run(tmp_path, capsys):
    a = dl.tensor_data(**with_split(B, "train"))
    flipped = dl.tensor_data(**with_split(B, "train", targets=1 - B.train.targets))
    run_a = dl.fit("vanilla", a, model="mlp", log_dir=tmp_path, **FIT)
    run_b = dl.fit("vanilla", flipped, model="mlp", log_dir=tmp_path, **FIT)
    assert run_a.dir != run_b.dir and run_a.dir.parent == run_b.dir.parent
    assert run_a.record["data"]["sha256"]["train"] != run_b.record["data"]["sha256"]["train"]
    assert run_a.results["selections"] != run_b.results["selections"]
    capsys.readouterr()
    again = dl.fit("vanilla", a, model="mlp", log_dir=tmp_path, **FIT)
    said = capsys.readouterr().out
    assert (
        again.dir == run_a.dir and "reusing it, not retraining" in said and "same data" not in said
    )
    assert "of these settings on this data" in said
    # a run directory named by the user holds one data: other data there is refused
    dl.fit("vanilla", a, model="mlp", log_dir=tmp_path, exp="mine", **FIT)
    before = (tmp_path / "tensors" / "mine" / "results.json").read_text()
    with pytest.raises(
        UserError, match=r"mine holds a run of these settings on other data .*train"
    ):
        dl.fit("vanilla", flipped, model="mlp", log_dir=tmp_path, exp="mine", **FIT)
    assert (tmp_path / "tensors" / "mine" / "results.json").read_text() == before
    retrained = dl.fit(
        "vanilla", flipped, model="mlp", log_dir=tmp_path, exp="mine", overwrite=True, **FIT
    )
    assert retrained.record["data"]["sha256"] == run_b.record["data"]["sha256"]


def rerun_on_other_data(args: list, data_root):
    """``args`` run twice (the second reuses the first), then once after the valid split of
    ``data_root``'s cmnist 1pct got other images and labels; returns (second, third)."""
    from debiaslab.data.reference import write_split
    from tests.conftest import tiny_split

    first = run_cli(*args)
    assert first.returncode == 0, first.stderr
    again = run_cli(*args)
    valid = data_root / "cmnist" / "1pct" / "valid"
    write_split(tiny_split(6, 3, 2, 9), valid, "flat", start_id=1000)
    return again, run_cli(*args)


def test_a_finished_cli_run_is_not_reused_when_its_folder_data_changed(tiny_reference, tmp_path):
    args = ["train", "--train_vanilla", *quick_train_args(tiny_reference, tmp_path / "log")]
    again, changed = rerun_on_other_data([*args, "--exp", "e"], tiny_reference)
    assert again.returncode == 0 and "reusing it, not retraining" in again.stdout
    assert changed.returncode == 2 and "on other data (sha256 of valid" in changed.stderr
    assert changed.stderr.count("\n") == 1 and "train " not in changed.stderr.split("sha256")[1]


# ----------------------------------------------------------------------------------- warnings
def test_settings_the_steps_never_reach_are_said_and_recorded(tmp_path, capsys):
    run = dl.fit(
        "disent", B, model="mlp", log_dir=tmp_path, curr_step=50, use_lr_decay=True,
        lr_decay_step=8, **{**FIT, "valid_freq": 10},
    )  # fmt: skip
    said = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning: ")]
    recorded = run.record["warnings"]
    assert [f"warning: {line}" for line in recorded] == said and len(said) == 4
    assert (
        "curr_step 50: the feature swap would come at step 50, at or beyond num_steps 10" in said[0]
    )
    assert "lr_decay_step 8: the learning rate's first decay would come at step 58" in said[1]
    assert "weight averaging starts at step 50" in said[2] and "ships its last model" in said[2]
    assert "valid_freq 10 is at or beyond the run's 10 steps" in said[3]
    assert all(v is None for k, v in run.results["selections"].items() if k.startswith("wa_"))
    plain = dl.fit("vanilla", B, model="mlp", log_dir=tmp_path, **FIT)
    (lag,) = plain.record["warnings"]  # 10 steps under a 0.999 average: it is still step 0's
    assert (
        "wa_* models still hold 99% of step 0's weights" in lag
        and "turn it off (wa_decay 0)" in lag
    )
    short_average = dl.fit("vanilla", B, model="mlp", log_dir=tmp_path, wa_decay=0.5, **FIT)
    assert short_average.record["warnings"] == []


def test_a_preset_cut_short_warns_on_the_cli(tiny_reference, tmp_path):
    r = run_cli(
        "train", "--preset", "cmnist-1pct-disent",
        *quick_train_args(tiny_reference, tmp_path / "log"), "--exp", "short",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "warning: curr_step 10000: the feature swap would come at step 10000" in r.stderr
    config = json.loads((tmp_path / "log" / "cmnist" / "short" / "config.json").read_text())
    assert any(w.startswith("curr_step 10000") for w in config["warnings"])


def train_on_manifest(tmp_path, target, bias):
    """A 5-step Vanilla CLI run on a manifest of tiny_bundle's 16 test images, the first 10 in
    train and the rest in test, image i labelled ``target(i)``, ``bias(i)``."""
    from debiaslab.data.reference import write_split

    folder = tmp_path / "imgs"
    paths = write_split(tiny_bundle().test, folder, "flat")
    rows = ["path,target,bias,split"]
    rows += [
        f"{p.name},{target(i)},{bias(i)},{'train' if i < 10 else 'test'}"
        for i, p in enumerate(paths)
    ]
    (folder / "m.csv").write_text("\n".join(rows) + "\n")
    return run_cli(
        "train", "--manifest", folder / "m.csv", "--log_dir", tmp_path / "log", "--train_vanilla",
        "--num_steps", "5", "--device", "cpu", "--no_progress",
    )  # fmt: skip


def test_a_manifest_bias_label_out_of_range_is_one_cli_line(tmp_path):
    r = train_on_manifest(tmp_path, lambda i: i % 2, lambda i: 7 if i == 3 else i % 2)
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "biases: found 7" in r.stderr and "outside [0, 2)" in r.stderr
    assert not (tmp_path / "log").exists()


def test_a_sweep_never_skips_a_run_finished_on_other_data(tiny_reference, tmp_path):
    out = tmp_path / "sweep"
    sweep = ["sweep", "--methods", "vanilla", "--ratios", "1", "--out", out, "--fuse", "off",
             "--set", f"data_dir={tiny_reference}", "num_steps=20", "valid_freq=10",
             "batch_size=16", "--devices", "cpu", "--no_progress"]  # fmt: skip
    again, changed = rerun_on_other_data(sweep, tiny_reference)
    assert again.returncode == 0 and "1 finished (skipped)" in again.stdout
    assert changed.returncode == 2 and changed.stderr.count("\n") == 1, changed.stderr
    assert "1 finished run(s) in" in changed.stderr and "trained on other data" in changed.stderr


def test_fit_hashes_in_memory_data_once(tmp_path, monkeypatch):
    """The folder name and the run's identity share one sha256 per split."""
    hashed = []
    real = Split.checksum
    monkeypatch.setattr(Split, "checksum", lambda self: hashed.append(len(self)) or real(self))
    dl.fit("vanilla", B, model="mlp", log_dir=tmp_path, **FIT)
    assert sorted(hashed) == sorted(len(getattr(B, n)) for n in ("train", "valid", "test"))


def test_a_data_source_is_read_once_and_a_refusal_is_kept(monkeypatch):
    import dataclasses

    from debiaslab import prepare
    from debiaslab.config import TrainConfig

    read = []

    def load_data(cfg):
        read.append(cfg.percent)
        if cfg.percent == "2pct":
            raise UserError("no such data")
        return B

    monkeypatch.setattr(prepare, "load_data", load_data)
    load = prepare.cached_loader()
    cfg = TrainConfig(dataset="tiny")
    assert load(cfg) is load(dataclasses.replace(cfg, seed=3, lr=0.5))
    for _ in range(2):
        with pytest.raises(UserError, match="no such data"):
            load(dataclasses.replace(cfg, percent="2pct"))
    assert read == ["1pct", "2pct"]


def test_a_class_with_no_training_image_is_refused_from_python_and_the_cli(tmp_path):
    """A test split holding a class the training split never shows: refused before training
    (it could only score 0%), from tensor_data and from a --manifest, writing nothing."""
    bundle = tiny_bundle()
    test = parts(bundle.test)
    extra = test[1].clone()
    extra[0] = 2  # a third class, in the test split only
    with pytest.raises(UserError, match=r"test=...\): classes \[2\] appear here but have no"):
        dl.tensor_data(
            train=parts(bundle.train),
            valid=parts(bundle.valid),
            test=(test[0], extra, test[2]),
            num_classes=3,
        )
    r = train_on_manifest(tmp_path, lambda i: 2 if i == 12 else i % 2, lambda i: i % 2)
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "classes [2] appear" in r.stderr and "no training image" in r.stderr
    assert not (tmp_path / "log").exists()


def test_images_that_are_not_rgb_are_refused_before_a_builtin_rgb_model_or_the_normalisation(
    tmp_path,
):
    """RGBA tensors with resnet18: one UserError naming the fix, nothing written; a built-in
    model that reads any channel count (resnet20) trains on them."""
    g = torch.Generator().manual_seed(0)

    def rgba(n):
        images = torch.randint(0, 255, (n, 4, 32, 32), dtype=torch.uint8, generator=g)
        return images, torch.arange(n) % 2, torch.arange(n) % 2

    data = dl.tensor_data(train=rgba(32), valid=rgba(8), test=rgba(8))
    fit = dict(num_steps=4, batch_size=8, valid_freq=2, device="cpu", model="resnet18")
    with pytest.raises(UserError, match=r"normalize subtracts an RGB mean .* 4 channels; convert"):
        dl.fit("vanilla", data, log_dir=tmp_path / "a", **fit)
    with pytest.raises(UserError, match=r"'resnet18' cannot read .* 3 channels, but got 4 .*RGB"):
        dl.fit("vanilla", data, log_dir=tmp_path / "a", **{**fit, "normalize": False})
    assert not (tmp_path / "a").exists()
    run = dl.fit(
        "vanilla", data, log_dir=tmp_path / "b", **{**fit, "normalize": False, "model": "resnet20"}
    )
    assert "last" in run.rules


# ------------------------------------------------------------------------ DeNetDM, user models
def wide_cnn(num_classes, head_inputs, in_shape):
    features = nn.Sequential(nn.Conv2d(in_shape[0], 6, 3, padding=1), nn.AdaptiveAvgPool2d(1))
    return dl.Backbone(features, 6, num_classes, head_inputs)


def test_denetdm_trains_with_a_users_model_its_shallow_branch_taking_its_feature_size(tmp_path):
    """The user's model is the deep branch and the target; the default shallow branch (cnn4)
    gets the deep branch's 6 features, as the authors' pairs have equal sizes."""
    stages = dict(denetdm_stage1_steps=4, valid_freq=4)
    run = dl.fit("denetdm", B, model=wide_cnn, log_dir=tmp_path, **{**FIT, **stages})
    assert run.config.denetdm_deep == "user_wide_cnn" and run.config.denetdm_shallow == "cnn4"
    target = run.models("last")["model"]
    assert target.fc.in_features == 6 and isinstance(target, dl.Backbone)
    assert run.evaluate(B.test) == run.metrics("last")
    own = dl.fit(
        "denetdm", B, model=tiny_cnn, log_dir=tmp_path, denetdm_stage2="own_head",
        denetdm_deep="user_wide_cnn", **{**FIT, **stages},
    )  # fmt: skip
    assert own.models("last")["model"].fc.in_features == 4


def test_denetdm_branches_of_two_fixed_feature_sizes_are_refused_before_writing(tmp_path):
    dl.register_model("wide_cnn", wide_cnn)
    for options in (
        dict(denetdm_deep="resnet20", denetdm_shallow="resnet18"),  # 64 and 512, both fixed
        dict(model=tiny_cnn, denetdm_shallow="wide_cnn"),  # 4 and 6, a user's on each side
    ):
        with pytest.raises(UserError, match=r"branches share one classifier.* has 4|64"):
            dl.fit("denetdm", B, log_dir=tmp_path, **{"model": "mlp", **FIT, **options})
    assert not tmp_path.joinpath("tensors").exists()


# ---------------------------------------------------------------------- the API's default name
def test_the_apis_default_name_keeps_each_setting_apart_and_reuses_equal_settings(tmp_path, capsys):
    """A notebook changing one setting trains another run; the same settings reuse the run;
    fit_many's runs of other learning rates fuse into folders of their own, those fit gives."""
    short = dl.fit("vanilla", B, model="mlp", log_dir=tmp_path, **FIT)
    longer = dl.fit("vanilla", B, model="mlp", log_dir=tmp_path, **{**FIT, "num_steps": 20})
    other_lr = dl.fit("vanilla", B, model="mlp", log_dir=tmp_path, **{**FIT, "lr": 1e-3})
    assert len({short.dir, longer.dir, other_lr.dir}) == 3
    assert longer.results["steps"] == 20 and short.results["steps"] == 10
    capsys.readouterr()
    assert dl.fit("vanilla", B, model="mlp", log_dir=tmp_path, **FIT).dir == short.dir
    assert "reusing it, not retraining" in capsys.readouterr().out
    settings = {k: v for k, v in FIT.items() if k != "lr"}
    runs = dl.fit_many(
        "vanilla", B, [{"lr": 1e-2}, {"lr": 1e-3}], model="mlp", log_dir=tmp_path, **settings
    )
    assert [r.dir for r in runs] == [short.dir, other_lr.dir]
    with pytest.raises(UserError, match=r"share the run directory .*drop the repeated run"):
        dl.fit_many("vanilla", B, [{"lr": 1e-2}, {"lr": 1e-2}], model="mlp", log_dir=tmp_path)


# ---------------------------------------------------------------- every entry point, one line
ENTRY_POINT_CASES = [
    ("predict batch 0", lambda run: run.predict(B.test.images, batch_size=0),
     r"predict\(batch_size=0\): give a positive integer"),
    ("models on no device", lambda run: run.models(device="gpu"),
     r"device 'gpu' is not a device; give 'cpu'"),
    ("a nameless model", lambda run: dl.register_model(" ", tiny_cnn), r"give the model a name"),
    ("no runs", lambda run: dl.fit_many("vanilla", B, [], log_dir=run.dir), r"non-empty list"),
    ("a method per run", lambda run: dl.fit_many("vanilla", B, [{"method": "lff"}]),
     r"method given as a run's option; .*call it once per method"),
    ("a dataset option", lambda run: dl.fit("vanilla", B, dataset="x"),
     r"dataset given as a run's option"),
    ("a log_dir number", lambda run: dl.fit("vanilla", B, log_dir=5), r"log_dir=5: give a folder"),
    ("a feature size in words", lambda run: dl.Backbone(nn.Identity(), "a", 2),
     r"Backbone\(feature_dim='a'\): give a positive integer"),
    ("features not a module", lambda run: dl.Backbone(None, 4, 2), r"give the feature extractor"),
    ("config not a config", lambda run: dl.fit("vanilla", B, config={"lr": 1}),
     r"fit\(config=...\) is a dict; give a dl.TrainConfig"),
    ("two methods", lambda run: dl.fit("lff", B, config=dl.TrainConfig(method="disent")),
     r"two methods; give the method once"),
    ("a mistyped option", lambda run: dl.fit("vanilla", B, lamda_swap=1.0),
     r"lamda_swap \(did you mean lambda_swap\?\)"),
    ("options as keywords, not flags", lambda run: dl.fit("vanilla", B, num_steps=-1),
     r"^num_steps must be a positive integer, got -1$"),
    ("a folder of another run", lambda run: dl.fit("vanilla", B, exp=run.dir.name,
     log_dir=run.dir.parents[1], model="mlp", num_steps=3),
     r"already holds a different run .*pass another exp= \(or log_dir=\) .* overwrite=True"),
    ("a percent of tensors", lambda run: dl.fit("vanilla", B, percent="5pct"),
     r"in-memory data is used as given: drop percent"),
    ("no processes", lambda run: dl.fit_many("vanilla", B, [{"seed": 0}], processes=0),
     r"fit_many\(processes=0\): give a positive int"),
    ("processes as a flag", lambda run: dl.fit_many("vanilla", B, [{"seed": 0}], processes=True),
     r"fit_many\(processes=True\): give a positive int"),
]  # fmt: skip


@pytest.mark.parametrize(
    "call, message", [c[1:] for c in ENTRY_POINT_CASES], ids=[c[0] for c in ENTRY_POINT_CASES]
)
def test_each_public_entry_point_refuses_bad_input_in_one_line(vanilla_run, call, message):
    with pytest.raises(UserError, match=message) as refused:
        call(vanilla_run)
    assert "\n" not in str(refused.value)


def test_fit_takes_a_train_config_and_records_no_percent_for_tensors(tmp_path):
    cfg = dl.TrainConfig(model="mlp", log_dir=str(tmp_path), **{**FIT, "lr": 3e-3})
    run = dl.fit("vanilla", B, config=cfg, seed=1)  # a keyword over the config's settings
    assert (run.config.lr, run.config.seed, run.config.model) == (3e-3, 1, "mlp")
    assert run.dir.parent == tmp_path / "tiny" and run.config.percent is None
    assert run.record["config"]["percent"] is None


def test_a_run_refused_at_its_start_leaves_no_folder_and_a_failed_one_says_what_rerun_does(
    tmp_path,
):
    """A batch larger than the training split is refused before the folder exists; a run that
    fails before any checkpoint says a rerun starts it again, not that it resumes."""
    from debiaslab.rundir import RunDir

    with pytest.raises(UserError, match=r"batch_size 1000 is larger than the training split"):
        dl.fit("vanilla", B, model="mlp", log_dir=tmp_path, **{**FIT, "batch_size": 1000})
    assert not (tmp_path / "tiny").exists()
    fresh, started = tmp_path / "fresh", tmp_path / "started"
    fresh.mkdir(), started.mkdir(), (started / "checkpoint_last.pt").write_bytes(b"")
    for run_dir in (fresh, started):
        RunDir(run_dir).mark_failed(UserError("refused"))
    assert "start it again (no checkpoint yet)" in (fresh / "FAILED").read_text()
    assert "resume from the last checkpoint" in (started / "FAILED").read_text()


@pytest.mark.parametrize(
    "args, closest",
    [
        (["train", "--method", "disnet"], "did you mean disent?"),
        (["train", "--num_stepz", "3"], "did you mean --num_steps?"),
        (["train", "--preset", "cmnist-1pct-disnet"], "did you mean cmnist-1pct-disent"),
    ],
)
def test_a_mistyped_name_on_the_command_line_gets_the_closest_one(args, closest):
    r = run_cli(*args)
    assert r.returncode == 2 and closest in r.stderr and r.stderr.count("\n") == 1, r.stderr
