"""End to end through subprocesses: train, test, the paper's commands, errors."""

import json

import pytest
import torch

from debiaslab.data.reference import load_reference
from debiaslab.models import build_model
from debiaslab.selection import selection_names
from tests.conftest import (
    assert_metrics_match,
    metrics_by_loop,
    predict_classes,
    quick_train_args,
    read_log,
    run_cli,
    saved_mlps,
    write_reference,
)

PAPER_OURS = [
    "--dataset",
    "cmnist",
    "--exp=cmnist_1_ours",
    "--lr=0.01",
    "--percent=1pct",
    "--curr_step=10",
    "--lambda_swap=1",
    "--lambda_dis_align=10",
    "--lambda_swap_align=10",
    "--use_lr_decay",
    "--lr_decay_step=10000",
    "--lr_gamma=0.5",
    "--train_ours",
    "--tensorboard",
]


def test_paper_train_then_test_commands(tiny_reference, tmp_path):
    logs = tmp_path / "log"
    r = run_cli("train.py", *PAPER_OURS, *quick_train_args(tiny_reference, logs), module=False)
    assert r.returncode == 0, r.stderr
    run = logs / "cmnist" / "cmnist_1_ours"
    for f in (
        "config.json",
        "metrics.jsonl",
        "results.json",
        "checkpoint_last.pt",
        "checkpoint_best_valid.pt",
        "checkpoint_best_valid_unbiased.pt",
        "checkpoint_oracle_best_test.pt",
    ):
        assert (run / f).exists(), f
    assert any((run / "tensorboard").iterdir())
    results = json.loads((run / "results.json").read_text())
    assert (
        results["method"] == "disent"
        and results["steps"] == 40
        and results["default_selection"]
        == "wa_best_valid_pseudo_unbiased_mean5"  # averaged from 10
    )
    assert list(results["selections"]) == selection_names()
    assert "ORACLE" in results["selections"]["oracle_best_test"]["description"]
    assert results["data"]["sha256"]["train"] and results["config"]["batch_size"] == 16
    hardware = json.loads((run / "config.json").read_text())["hardware"]
    assert hardware["cpu"] and hardware["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    last = results["selections"]["last"]
    ckpt = torch.load(run / "checkpoint_last.pt", weights_only=False)
    assert last["step"] == 40
    # the reported test metrics are those of the saved last models, computed here by a plain loop
    test = load_reference(tiny_reference, "cmnist", "1pct").test
    preds = predict_classes(
        "disent", saved_mlps(run, "disent", 3, (3, 8, 8)), test.images.float() / 255 / 255
    )
    assert_metrics_match(last["test"], metrics_by_loop(preds, test.targets, test.biases, 3))
    assert [e["step"] for e in read_log(run, "eval")] == [20, 40]
    assert any("loss_swap_align" in e for e in read_log(run, "train"))
    for key in ("config", "step", "method_state", "rng", "sampler", "tracker"):
        assert key in ckpt
    assert (
        set(ckpt["method_state"]) >= {"models", "optimizers", "extra"}
        and "ema" in ckpt["method_state"]["extra"]
    )
    assert "last (step 40)" in r.stdout and "oracle_best_test" in r.stdout

    t = run_cli(
        "test.py",
        f"--pretrained_path={run}",
        "--dataset=cmnist",
        "--percent=1pct",
        "--data_dir",
        tiny_reference,
        "--json",
        module=False,
    )
    assert t.returncode == 0, t.stderr
    out = json.loads(t.stdout)  # the model the run ships: the averaged one its own score picked
    shipped = results["selections"]["wa_best_valid_pseudo_unbiased"]
    assert out["metrics"]["test"] == shipped["test"] and out["step"] == shipped["step"]
    t2 = run_cli(
        "test",
        "--pretrained_path",
        run,
        "--select",
        "oracle_best_test",
        "--dataset",
        "cmnist",
        "--percent",
        "1pct",
        "--data_dir",
        tiny_reference,
    )
    assert t2.returncode == 0 and "unbiased accuracy" in t2.stdout


@pytest.mark.parametrize(
    "flags", [["--train_vanilla"], ["--train_lff"], ["--method", "lff", "--input_scale", "unit"]]
)
def test_other_methods_train_and_test(tiny_reference, tmp_path, flags):
    r = run_cli(
        "train",
        "--dataset",
        "cmnist",
        "--percent",
        "1pct",
        "--exp",
        "x",
        *flags,
        *quick_train_args(tiny_reference, tmp_path),
    )
    assert r.returncode == 0, r.stderr
    results = json.loads((tmp_path / "cmnist" / "x" / "results.json").read_text())
    assert results["steps"] == 40
    t = run_cli(
        "test",
        "--pretrained_path",
        tmp_path / "cmnist" / "x" / "checkpoint_last.pt",
        "--dataset",
        "cmnist",
        "--percent",
        "1pct",
        "--data_dir",
        tiny_reference,
        "--json",
    )
    assert t.returncode == 0, t.stderr
    out = json.loads(t.stdout)
    assert (
        out["metrics"]["test"] == results["selections"]["last"]["test"]
    )  # same model, same pixel scaling
    # cmnist defaults to the reference's pixel scaling (x / 255 / 255)
    assert out["input_scale"] == ("unit" if "unit" in flags else "reference")


def test_same_seed_same_metrics_different_seed_differs(tiny_reference, tmp_path):
    res = []
    for exp, seed in (("a", 3), ("b", 3), ("c", 4)):
        r = run_cli(
            "train",
            "--train_ours",
            "--curr_step",
            "5",
            "--exp",
            exp,
            "--seed",
            seed,
            *quick_train_args(tiny_reference, tmp_path),
        )
        assert r.returncode == 0, r.stderr
        run = tmp_path / "cmnist" / exp
        train_logs = [
            line for line in (run / "metrics.jsonl").read_text().splitlines() if '"train"' in line
        ]
        weights = torch.load(run / "checkpoint_last.pt", weights_only=True)["method_state"][
            "models"
        ]["intrinsic"]
        res.append(
            (json.loads((run / "results.json").read_text())["selections"], train_logs, weights)
        )
    assert res[0][0] == res[1][0] and res[0][1] == res[1][1]
    assert all(torch.equal(a, b) for a, b in zip(res[0][2].values(), res[1][2].values()))
    assert res[0][1] != res[2][1]
    assert not torch.equal(res[0][2]["fc.weight"], res[2][2]["fc.weight"])


def test_finished_run_is_not_retrained_and_other_config_refused(tiny_reference, tmp_path):
    args = [
        "train",
        "--train_vanilla",
        "--exp",
        "same",
        *quick_train_args(tiny_reference, tmp_path),
    ]
    assert run_cli(*args).returncode == 0
    again = run_cli(*args)
    assert again.returncode == 0 and "not retraining" in again.stdout
    other = run_cli(*args, "--lr", "0.5")
    assert (
        other.returncode == 2
        and "different run" in other.stderr
        and "Traceback" not in other.stderr
    )


def test_reference_checkpoint_is_evaluated_with_its_scaling(tiny_reference, tmp_path):
    """A directory as the reference code writes it: best_model_l.th / best_model_b.th."""
    torch.manual_seed(0)
    ref = tmp_path / "pretrained"
    ref.mkdir()
    models = {}
    for name, f in (("intrinsic", "best_model_l.th"), ("bias", "best_model_b.th")):
        m = build_model("mlp", 3, 2, (3, 8, 8))
        keys = list(m.state_dict())
        assert keys == [
            "feature.0.weight",
            "feature.0.bias",
            "feature.2.weight",
            "feature.2.bias",
            "feature.4.weight",
            "feature.4.bias",
            "fc.weight",
            "fc.bias",
        ]
        with torch.no_grad():
            m.feature[0].weight.mul_(
                3000.0
            )  # so the [0, 1/255] inputs give a non-trivial prediction
        torch.save({"steps": 1234, "state_dict": m.state_dict(), "optimizer": {}}, ref / f)
        models[name] = m.eval()
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
    assert (
        out["source"] == "reference" and out["step"] == 1234 and out["input_scale"] == "reference"
    )
    test = load_reference(tiny_reference, "cmnist", "1pct").test
    preds = predict_classes("disent", models, test.images.float() / 255 / 255)
    assert_metrics_match(
        out["metrics"]["test"], metrics_by_loop(preds, test.targets, test.biases, 3)
    )


def test_wandb_missing_gives_one_line_error(tiny_reference, tmp_path):
    code = (
        "import sys; sys.modules['wandb'] = None; from debiaslab.cli import main; "
        "sys.exit(main(sys.argv[1:]))"
    )
    args = ["train", "--train_vanilla", "--wandb", *quick_train_args(tiny_reference, tmp_path)]
    r = run_cli("-c", code, *args, module=False)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "pip install 'debiaslab[wandb]'" in r.stderr
    assert not (tmp_path / "cmnist").exists()  # nothing half-written


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--train_ours", "--train_vanilla"], "not allowed with"),
        (["--num_steps", "0", "--train_vanilla"], "--num_steps"),
        (["--lr", "-1", "--train_vanilla"], "--lr"),
        (["--batch_size", "0", "--train_vanilla"], "--batch_size"),
        (["--percent", "3pct", "--train_vanilla"], "available"),
        ([], "choose a method"),
        pytest.param(
            ["--train_vanilla", "--device", "cuda:0"],
            "no usable CUDA GPU",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU"),
        ),
        (
            ["--train_vanilla", "--device", "cuda:64"],
            "cuda",
        ),  # no GPU, or no 65th GPU: refused either way
        (["--train_vanilla", "--device", "gpu"], "not a device"),
    ],
)
def test_bad_train_input_one_line_exit_2(tiny_reference, tmp_path, args, needle):
    base = [
        "--data_dir",
        tiny_reference,
        "--log_dir",
        tmp_path,
        "--num_steps",
        "5",
        "--no_progress",
    ]
    if "--num_steps" in args:
        base = base[:4] + base[6:]
    r = run_cli("train", *base, *args)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert needle in r.stderr and "Traceback" not in r.stderr and r.stderr.strip().count("\n") == 0
    assert not (tmp_path / "cmnist").exists()


def test_wrong_data_dir(tmp_path):
    r = run_cli(
        "train", "--train_vanilla", "--data_dir", tmp_path / "nowhere", "--log_dir", tmp_path
    )
    assert r.returncode == 2 and "nowhere" in r.stderr and "debiaslab data build cmnist" in r.stderr


def test_help_is_useful():
    r = run_cli("train", "--help")
    assert r.returncode == 0
    for flag in (
        "--train_ours",
        "--curr_step",
        "--lambda_swap_align",
        "--q",
        "--ema_alpha",
        "--seed",
        "--valid_freq",
    ):
        assert flag in r.stdout
    top = run_cli("--help")
    for cmd in ("train", "test", "data", "demo"):
        assert cmd in top.stdout


def test_resnet18_on_cifar10c_and_bffhq_layouts(tmp_path):
    """ResNet18 datasets: C-CIFAR10 layout (valid under pct) and BFFHQ layout (valid/test one level up)."""
    data = tmp_path / "data"
    write_reference(data, "cifar10c", ["1pct"])
    write_reference(data, "bffhq", ["0.5pct"], flat_eval_one_level_up=True)
    for dataset, pct, method in (
        ("cifar10c", "1pct", "--train_ours"),
        ("bffhq", "0.5pct", "--train_vanilla"),
    ):
        r = run_cli(
            "train",
            "--dataset",
            dataset,
            "--percent",
            pct,
            method,
            "--exp",
            "r",
            "--data_dir",
            data,
            "--log_dir",
            tmp_path / "log",
            "--num_steps",
            "2",
            "--valid_freq",
            "1",
            "--batch_size",
            "4",
            "--no_progress",
            "--device",
            "cpu",
        )
        assert r.returncode == 0, r.stderr
        results = json.loads((tmp_path / "log" / dataset / "r" / "results.json").read_text())
        assert results["config"]["model"] == "resnet18"
        if dataset == "bffhq":
            assert (
                results["primary_metric"] == "conflicting accuracy"
                and results["config"]["image_size"] == 224
            )
            sel = results["selections"]["last"]
            assert sel["test_primary"] == sel["test"]["conflicting"]
        ckpt = torch.load(
            tmp_path / "log" / dataset / "r" / "checkpoint_last.pt", weights_only=True
        )
        models = ckpt["method_state"]["models"]
        name = "intrinsic" if dataset == "cifar10c" else "model"
        assert models[name]["fc.weight"].shape == (2, 1024 if dataset == "cifar10c" else 512)
        assert (
            "layer4.1.conv2.weight" in models[name]
        )  # torchvision's keys, as the reference checkpoints


def test_wandb_logs_offline_without_credentials(tiny_reference, tmp_path):
    pytest.importorskip("wandb", reason="wandb is in the dev extra: pip install -e '.[dev]'")
    env = {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "HOME": str(tmp_path)}
    r = run_cli(
        "train",
        "--train_vanilla",
        "--wandb",
        "--exp",
        "wb",
        *quick_train_args(tiny_reference, tmp_path),
        env=env,
    )
    assert r.returncode == 0, r.stderr
    runs = list((tmp_path / "cmnist" / "wb" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and any(runs[0].glob("*.wandb"))


def test_a_gpu_index_the_machine_lacks_is_refused(monkeypatch):
    """On a machine with one GPU (faked here), cuda:3 is refused naming what exists; cuda:0 is kept."""
    from debiaslab import UserError
    from debiaslab.prepare import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(
        UserError, match=r"--device cuda:3: this machine has 1 CUDA GPU\(s\), cuda:0 to cuda:0"
    ):
        resolve_device("cuda:3")
    assert resolve_device("cuda:0") == torch.device("cuda:0") and resolve_device(
        "cuda"
    ) == torch.device("cuda")


def test_presets_lists_its_sections_in_one_order_whatever_the_hash_seed():
    """The paper's numbers first, then each source in the order the presets name it (not the
    order of a set of strings, which Python's hash seed changes from run to run)."""
    from tests.conftest import run_cli

    listings = [run_cli("presets", env={"PYTHONHASHSEED": seed}).stdout for seed in ("1", "2", "3")]
    sections = [
        [ln for ln in out.splitlines() if ln.startswith("paper numbers from")] for out in listings
    ]
    assert len(sections[0]) > 2 and sections[0] == sections[1] == sections[2]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--jobs", "2"], "--jobs sets the processes of --seeds; give --seeds A B ... with it"),
        (["--seeds", "0", "1", "--jobs", "0"], "--jobs 0: give a positive number of processes"),
    ],
)
def test_jobs_belongs_to_seeds_and_counts_processes(tmp_path, args, message):
    from tests.conftest import run_cli

    done = run_cli("train", "--method", "vanilla", "--log_dir", tmp_path, *args)
    assert done.returncode == 2 and done.stderr.strip() == f"debiaslab: error: {message}"
    assert not any(tmp_path.iterdir())  # refused before anything is written
