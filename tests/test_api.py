"""The Python API (debiaslab.fit / load_run / Run) and the examples/ scripts, on tiny data."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import debiaslab as dl
from debiaslab import UserError
from debiaslab.methods import METHODS
from debiaslab.selection import selection_names
from tests.conftest import cli_env, tiny_bundle

ROOT = Path(__file__).resolve().parents[1]


def tiny_cnn(num_classes, head_inputs, in_shape):
    features = nn.Sequential(
        nn.Conv2d(in_shape[0], 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1)
    )
    return dl.Backbone(features, feature_dim=8, num_classes=num_classes, head_inputs=head_inputs)


def tensors(split):
    return split.images, split.targets, split.biases


@pytest.fixture(scope="module")
def disent_run(tmp_path_factory):
    """DisEnt with a user's CNN on tensors, trained once for the tests below."""
    bundle = tiny_bundle()
    data = dl.tensor_data(
        train=tensors(bundle.train), valid=tensors(bundle.valid), test=tensors(bundle.test)
    )
    return dl.fit(
        "disent",
        data,
        model=tiny_cnn,
        num_steps=30,
        curr_step=10,
        valid_freq=10,
        batch_size=16,
        lr=1e-2,
        log_dir=tmp_path_factory.mktemp("api"),
        device="cpu",
    ), bundle


def test_a_custom_backbone_trains_through_disent_with_every_rule(disent_run):
    run, _ = disent_run
    assert run.config.method == "disent" and run.config.model == "user_tiny_cnn"
    assert set(run.rules) == set(selection_names(True))
    models = run.models("best_valid_pseudo_unbiased")
    assert set(models) == {"intrinsic", "bias"}
    assert isinstance(models["intrinsic"], dl.Backbone) and models["intrinsic"].fc.in_features == 16
    for rule in run.rules:
        assert 0.0 <= run.metrics(rule)["accuracy"] <= 1.0 and run.step(rule) in (10, 20, 30)


def test_predict_and_evaluate_reproduce_the_recorded_metrics(disent_run):
    """The reloaded run's predictions score exactly what training recorded, under each rule."""
    run, bundle = disent_run
    reloaded = dl.load_run(run.dir)
    for rule in ("last", "best_valid", "wa_last"):
        logits = reloaded.predict(bundle.test.images, rule)
        assert logits.shape == (len(bundle.test), 2)
        assert reloaded.evaluate(tensors(bundle.test), rule) == run.metrics(rule, "test")
        assert reloaded.evaluate(bundle.test, rule) == run.metrics(rule, "test")  # a Split
        assert torch.equal(logits, run.predict(bundle.test.images, rule))


def test_dataset_data_reads_a_torch_dataset_of_pil_images(tmp_path):
    from PIL import Image

    bundle = tiny_bundle()

    class PilDataset(torch.utils.data.Dataset):
        def __init__(self, split):
            self.split = split

        def __len__(self):
            return len(self.split)

        def __getitem__(self, i):
            image = Image.fromarray(self.split.images[i].permute(1, 2, 0).numpy())
            return image, int(self.split.targets[i]), int(self.split.biases[i])

    data = dl.dataset_data(
        PilDataset(bundle.train), PilDataset(bundle.valid), PilDataset(bundle.test)
    )
    assert torch.equal(data.train.images, bundle.train.images) and torch.equal(
        data.test.biases, bundle.test.biases
    )
    run = dl.fit(
        "vanilla",
        data,
        model="mlp",
        num_steps=10,
        valid_freq=5,
        batch_size=16,
        log_dir=tmp_path,
        device="cpu",
    )
    assert run.metrics("last")["unbiased"] is not None


def test_bad_input_is_refused_with_the_fix(tmp_path):
    bundle = tiny_bundle()
    float_images = (bundle.train.images.float() / 255, bundle.train.targets)
    with pytest.raises(UserError, match=r"uint8 \[N, C, H, W\].*to\(torch.uint8\)"):
        dl.tensor_data(train=float_images, valid=tensors(bundle.valid), test=tensors(bundle.test))
    with pytest.raises(UserError, match="unknown option.*nums_steps"):
        dl.fit("vanilla", bundle, nums_steps=10)
    with pytest.raises(UserError, match="unknown method"):
        dl.fit("erm", bundle)
    with pytest.raises(UserError, match="holds no finished run"):
        dl.load_run(tmp_path)


def test_a_run_of_an_unregistered_model_says_how_to_register_it(disent_run, monkeypatch):
    from debiaslab.models import MODELS

    run, _ = disent_run
    monkeypatch.delitem(MODELS, "user_tiny_cnn")
    with pytest.raises(UserError, match=r"load_run\(run_dir, model=factory\).*'user_tiny_cnn'"):
        dl.load_run(run.dir).models()
    again = dl.load_run(run.dir, model=tiny_cnn)  # a new process: the factory given back
    assert again.evaluate(disent_run[1].test) == run.metrics()
    with pytest.raises(UserError, match=r"trained with the built-in mlp; drop model="):
        vanilla = dl.fit("vanilla", disent_run[1], model="mlp", num_steps=2, log_dir=run.dir.parent)
        dl.load_run(vanilla.dir, model=tiny_cnn)


@pytest.mark.parametrize("name", ["config.json", "results.json"])
def test_a_damaged_run_record_is_one_line_naming_the_file(disent_run, tmp_path, name):
    import shutil

    run, _ = disent_run
    copy = tmp_path / "copy"
    shutil.copytree(run.dir, copy)
    text = (copy / name).read_text()
    (copy / name).write_text(text[: len(text) // 2])
    with pytest.raises(UserError, match=f"{name}: not valid JSON .*restore the file"):
        dl.load_run(copy)


def test_a_rule_the_run_did_not_record_is_refused(disent_run):
    run, _ = disent_run
    with pytest.raises(UserError, match="'best' .*not a rule"):
        run.metrics("best")


def test_a_rule_that_picked_nothing_is_not_listed_and_asking_for_it_says_why(tmp_path):
    """Vanilla has no biased branch: no pseudo-unbiased pick. Not in run.rules, and metrics,
    step, predict and `debiaslab test --select` all say why in one line."""
    bundle = tiny_bundle()
    data = dl.tensor_data(
        train=tensors(bundle.train), valid=tensors(bundle.valid), test=tensors(bundle.test)
    )
    run = dl.fit(
        "vanilla",
        data,
        model=tiny_cnn,
        num_steps=20,
        valid_freq=10,
        batch_size=16,
        log_dir=tmp_path,
        device="cpu",
    )
    rule = "best_valid_pseudo_unbiased"
    assert rule not in run.rules and "wa_" + rule not in run.rules and "last" in run.rules
    for ask in (run.metrics, run.step, lambda r: run.predict(bundle.test.images, rule=r)):
        with pytest.raises(UserError, match=f"'{rule}' picked nothing in .*no biased branch"):
            ask(rule)
    r = subprocess.run(
        [sys.executable, "-m", "debiaslab", "test", "--pretrained_path", str(run.dir),
         "--select", rule, "--device", "cpu"],
        capture_output=True, text=True, env=cli_env(), cwd=ROOT,
    )  # fmt: skip
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "picked nothing" in r.stderr and "no biased branch" in r.stderr


@pytest.mark.parametrize(
    "script,args,expect",
    [
        (
            "disent_custom_cnn.py",
            ["--steps", "40", "--device", "cpu"],
            "best_valid_pseudo_unbiased",
        ),
        ("manifest_csv.py", ["--steps", "30"], "worst group"),
        (
            "compare_methods.py",
            ["--steps", "30", "--methods", "vanilla", "lff", "--plot", "methods.png"],
            "plot:",
        ),
    ],
)
def test_examples_run(tmp_path, script, args, expect):
    extra = ["--out", str(tmp_path / "data")] if script == "manifest_csv.py" else []
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "examples" / script),
            *args,
            *extra,
            "--log_dir",
            str(tmp_path / "log"),
        ],
        cwd=tmp_path,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert expect in proc.stdout
    if script == "compare_methods.py":
        assert (tmp_path / "methods.png").stat().st_size > 0


def test_a_torchvision_classifier_is_split_into_features_and_a_head():
    from torchvision.models import resnet18

    model = dl.Backbone.from_classifier(resnet18(num_classes=7), num_classes=3, head_inputs=2)
    x = torch.randn(2, 3, 32, 32)
    assert model.extract(x).shape == (2, 512) and model.fc.in_features == 1024
    with pytest.raises(UserError, match="not a linear layer"):
        dl.Backbone.from_classifier(nn.Sequential(nn.Linear(4, 2)), num_classes=2)


def test_fit_reads_a_dataset_debiaslab_knows_by_name(tiny_reference, tmp_path):
    run = dl.fit(
        "lff",
        "cmnist",
        data_dir=str(tiny_reference),
        percent="1pct",
        num_steps=10,
        valid_freq=5,
        batch_size=16,
        log_dir=tmp_path,
        device="cpu",
    )
    assert run.dir == tmp_path / "cmnist" / f"lff-{run.config.config_hash(8)}"
    assert run.config.model == "mlp"
    assert (
        run.evaluate((lambda s: (s.images, s.targets, s.biases))(_tiny_test(tiny_reference)))
        == run.metrics()
    )


def _tiny_test(root):
    from debiaslab.data.reference import load_reference

    return load_reference(str(root), "cmnist", "1pct").test


# Each stage as short as the method allows, so that every stage runs in a few steps.
SHORT_STAGES = {
    "disent": dict(curr_step=2),
    "jtt": dict(jtt_steps=3),
    "denetdm": dict(denetdm_stage1_steps=3),
    "lff_be": dict(be_num_models=3, be_steps=2),
    "disent_be": dict(be_num_models=3, be_steps=2, curr_step=2),
}


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_trains_a_resnet18_on_rgb_tensors(tmp_path, method):
    """Every registered method, ResNet-18 on RGB images, through fit; what it saved predicts the
    metrics it recorded."""
    bundle = tiny_bundle(size=16)
    data = dl.tensor_data(
        train=tensors(bundle.train), valid=tensors(bundle.valid), test=tensors(bundle.test)
    )
    run = dl.fit(
        method,
        data,
        model="resnet18",
        num_steps=4,
        valid_freq=2,
        batch_size=8,
        log_dir=tmp_path,
        device="cpu",
        **SHORT_STAGES.get(method, {}),
    )
    assert run.config.model == "resnet18" and run.step("last") == run.results["steps"] + sum(
        stage["steps"] for stage in run.results.get("stages") or [] if stage["name"] != "main"
    )
    assert run.evaluate(bundle.test) == run.metrics("last", "test")
