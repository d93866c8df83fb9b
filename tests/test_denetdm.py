"""DeNetDM against computations written in the tests."""

import copy
import json
import math

import pytest
import torch

from debiaslab import UserError
from debiaslab.methods.base import StageData
from debiaslab.methods.denetdm import default_branches, distillation_loss, product_of_experts_loss
from debiaslab.models import DeepMLP, ShallowMLP
from debiaslab.models.cnn import CNN3
from tests.conftest import (
    assert_same_tensors,
    assert_test_reproduces_last,
    cli_config,
    make_method,
    method_batches,
    quick_train_args,
    read_log,
    run_cli,
    saved_mlps,
)


# -- the two losses, by hand ------------------------------------------------------------------------
def poe_by_hand(a, b, y):
    """-log of the renormalised product of the two softmaxes at the label, averaged over rows."""
    total = 0.0
    for i in range(len(y)):
        pa = [math.exp(v) for v in a[i]]
        pb = [math.exp(v) for v in b[i]]
        product = [x / sum(pa) * z / sum(pb) for x, z in zip(pa, pb)]
        total -= math.log(product[y[i]] / sum(product))
    return total / len(y)


def distillation_by_hand(student, teacher, t):
    total = 0.0
    for s_row, t_row in zip(student, teacher):
        q = [math.exp(v / t) for v in t_row]
        log_z = math.log(sum(math.exp(v / t) for v in s_row))
        total -= sum(qc / sum(q) * (sc / t - log_z) for qc, sc in zip(q, s_row))
    return total / len(student) * t * t


def test_product_of_experts_loss_by_hand():
    g = torch.Generator().manual_seed(0)
    a, b = (
        torch.randn(5, 4, generator=g, dtype=torch.float64),
        torch.randn(5, 4, generator=g, dtype=torch.float64),
    )
    y = torch.tensor([0, 3, 1, 1, 2])
    assert product_of_experts_loss(a, b, y).item() == pytest.approx(
        poe_by_hand(a.tolist(), b.tolist(), y.tolist())
    )


@pytest.mark.parametrize("t", [1.0, 2.0, 4.5])
def test_distillation_loss_by_hand(t):
    g = torch.Generator().manual_seed(1)
    s, teacher = torch.randn(6, 3, generator=g) * 3, torch.randn(6, 3, generator=g) * 3
    assert distillation_loss(s, teacher, t).item() == pytest.approx(
        distillation_by_hand(s.tolist(), teacher.tolist(), t), rel=1e-5
    )


def test_branches_follow_the_model_and_the_dataset():
    assert default_branches("mlp", "cmnist") == ("mlp_deep", "mlp_shallow")
    assert default_branches("resnet18", "cifar10c") == ("resnet20", "cnn3")
    assert default_branches("resnet18", "bffhq") == ("resnet18", "cnn4")
    method, _ = make_method("denetdm")
    assert isinstance(method.models["deep"], DeepMLP) and isinstance(
        method.models["shallow"], ShallowMLP
    )
    assert isinstance(method.models["model"], DeepMLP)  # authors: the target has the deep shape
    own_head, _ = make_method("denetdm", denetdm_stage2="own_head")
    linear = [
        sum(isinstance(m, torch.nn.Linear) for m in own_head.models[n].modules())
        for n in ("deep", "shallow", "model")
    ]
    assert linear == [5, 3, 4]  # own_head: the run's --model, between the two branches


# -- the steps ---------------------------------------------------------------------------------------
def begin(method, targets, name):
    stage = next(s for s in method.stages(method.cfg) if s.name == name)
    method.begin_stage(stage, StageData(torch.rand(len(targets), 3, 4, 4), targets, lambda x: x, 8))
    method.train()
    return stage


def test_stage_one_trains_the_branches_as_a_product_of_experts():
    method, targets = make_method(
        "denetdm",
        denetdm_stage1_steps=3,
        denetdm_stage1_lr=0.05,
        denetdm_stage1_weight_decay=0.01,
        lr=0.2,
    )
    begin(method, targets, "poe")
    assert [
        (g["lr"].item(), g["weight_decay"])
        for n in ("deep", "shallow")
        for g in method.optimizers[n].param_groups
    ] == [(0.05, 0.01)] * 2
    target = copy.deepcopy(method.models["model"].state_dict())
    for step, (x, y, idx) in enumerate(method_batches(targets, 3)):
        deep, shallow = (
            copy.deepcopy(method.models["deep"]),
            copy.deepcopy(method.models["shallow"]),
        )
        loss, terms = method.loss(x, y, idx, {})
        with (
            torch.no_grad()
        ):  # one classifier (the shallow model's fc) on the sum of the two feature vectors
            z = (deep.extract(x) + shallow.extract(x)).double()
            logits = z @ shallow.fc.weight.double().T + shallow.fc.bias.double()
            expected = poe_by_hand(
                logits.tolist(), torch.zeros_like(logits).tolist(), y.tolist()
            )  # plain CE
        assert loss.item() == pytest.approx(expected, rel=1e-5) and set(terms) == {"loss"}
        before = copy.deepcopy(method.models["deep"].state_dict())
        method.update(x, y, idx, step)
        assert not torch.equal(before["feature.0.weight"], method.models["deep"].feature[0].weight)
        assert torch.equal(
            before["fc.weight"], method.models["deep"].fc.weight
        )  # the deep model's own head: unused
    assert_same_tensors(method.models["model"].state_dict(), target, "the target during stage 1")
    assert torch.equal(
        method.eval_predict(x), method.models["shallow"](x)
    )  # stage 1 scores the shallow branch


@pytest.mark.parametrize("t,w", [(2.0, 1.0), (3.0, 0.25), (2.0, 0.0)])
def test_own_head_stage_two_loss_term_by_term_and_the_branches_stay_frozen(t, w):
    method, targets = make_method(
        "denetdm",
        denetdm_temperature=t,
        denetdm_distill_weight=w,
        denetdm_deep="resnet20",
        denetdm_shallow="cnn3",
        denetdm_stage2="own_head",
    )
    assert isinstance(method.models["shallow"], CNN3)
    begin(method, targets, "main")
    assert not method.models["shallow"].training and method.models["model"].training
    frozen = {n: copy.deepcopy(method.models[n].state_dict()) for n in ("deep", "shallow")}
    for step, (x, y, idx) in enumerate(method_batches(targets, 4)):
        loss, terms = method.loss(x, y, idx, {})
        with (
            torch.no_grad()
        ):  # the frozen experts through the shared classifier (the shallow model's fc)
            head = method.models["shallow"].fc
            t_logits, b_logits = method.models["model"](x), head(method.models["deep"].extract(x))
            s_logits = head(method.models["shallow"].extract(x))
        poe = poe_by_hand(t_logits.double().tolist(), b_logits.double().tolist(), y.tolist())
        distill = distillation_by_hand(t_logits.tolist(), s_logits.tolist(), t)
        assert terms["poe"].item() == pytest.approx(poe, rel=1e-5)
        assert terms["distill"].item() == pytest.approx(distill, rel=1e-4)
        assert loss.item() == pytest.approx(poe + w * distill, rel=1e-4)
        method.update(x, y, idx, step)
    for name, state in frozen.items():  # weights and BatchNorm statistics
        assert_same_tensors(method.models[name].state_dict(), state, f"{name} during stage 2")
    assert torch.equal(method.eval_predict(x), method.models["model"](x))


def test_flags_reach_the_method():
    cfg = cli_config(
        "--method",
        "denetdm",
        "--denetdm_stage1_steps",
        "7",
        "--denetdm_stage1_lr",
        "0.02",
        "--denetdm_stage1_weight_decay",
        "0.5",
        "--denetdm_temperature",
        "3",
        "--denetdm_distill_weight",
        "0.3",
        "--denetdm_deep",
        "resnet18",
        "--denetdm_shallow",
        "cnn4",
    )
    assert (
        cfg.denetdm_stage1_steps,
        cfg.denetdm_stage1_lr,
        cfg.denetdm_stage1_weight_decay,
        cfg.denetdm_temperature,
        cfg.denetdm_distill_weight,
        cfg.denetdm_deep,
        cfg.denetdm_shallow,
    ) == (7, 0.02, 0.5, 3.0, 0.3, "resnet18", "cnn4")
    default = cli_config("--method", "denetdm", "--dataset", "cifar10c")
    assert (default.denetdm_deep, default.denetdm_shallow, default.denetdm_temperature) == (
        "resnet20",
        "cnn3",
        2.0,
    )
    assert (
        cli_config("--method", "lff").denetdm_deep is None
    )  # other methods' identities do not change


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--method", "denetdm", "--denetdm_deep", "vgg"], "--denetdm_deep 'vgg' is not a model"),
        (
            ["--method", "denetdm", "--denetdm_temperature", "0"],
            "--denetdm_temperature must be a positive number",
        ),
        (
            ["--method", "denetdm", "--denetdm_stage1_steps", "0"],
            "--denetdm_stage1_steps must be a positive integer",
        ),
        (["--method", "lff", "--denetdm_distill_weight", "1"], "a setting of denetdm, not of lff"),
        (
            ["--method", "denetdm", "--denetdm_deep", "resnet20", "--denetdm_shallow", "resnet18"],
            "has 64, .* has 512",
        ),
    ],
)
def test_bad_flags_are_refused(flags, message):
    with pytest.raises(UserError, match=message):
        cli_config(*flags).validate()


@pytest.mark.parametrize("t,w", [(2.0, 1.0), (3.0, 0.25)])
def test_authors_stage_two_trains_the_target_into_the_shared_classifier(t, w):
    """The classifier's stage-1 state goes on in the target's head; CE of it on z_target + z_deep
    plus the distillation from the stage-1 classifier on the shallow features to it on z_target;
    the target and that head move, both branches (the stage-1 classifier included) stay."""
    method, targets = make_method("denetdm", denetdm_temperature=t, denetdm_distill_weight=w)
    poe_stage = begin(method, targets, "poe")
    for step, (x, y, idx) in enumerate(method_batches(targets, 2)):
        method.update(x, y, idx, step)
    method.end_stage(poe_stage, None)
    shared = method.models["shallow"].fc
    assert_same_tensors(method.models["model"].fc.state_dict(), shared.state_dict(), "handover")
    begin(method, targets, "main")
    frozen = {n: copy.deepcopy(method.models[n].state_dict()) for n in ("deep", "shallow")}
    for step, (x, y, idx) in enumerate(method_batches(targets, 4, seed=3)):
        loss, terms = method.loss(x, y, idx, {})
        with torch.no_grad():
            target, deep, shallow = (method.models[n] for n in ("model", "deep", "shallow"))
            z_t, z_deep = target.extract(x), deep.extract(x)
            joint = target.fc(z_t + z_deep).double()
            teacher = shallow.fc(shallow.extract(x))  # the stage-1 classifier, frozen
            student = target.fc(z_t)
        ce = poe_by_hand(joint.tolist(), torch.zeros_like(joint).tolist(), y.tolist())
        distill = distillation_by_hand(student.tolist(), teacher.tolist(), t)
        assert terms["poe"].item() == pytest.approx(ce, rel=1e-5)
        assert terms["distill"].item() == pytest.approx(distill, rel=1e-4)
        assert loss.item() == pytest.approx(ce + w * distill, rel=1e-4)
        before = copy.deepcopy(method.models["model"].state_dict())
        method.update(x, y, idx, step)
        moved = [
            k
            for k, v in method.models["model"].state_dict().items()
            if not torch.equal(v, before[k])
        ]
        assert set(moved) == set(before)  # every parameter of the target and its head
    for name, state in frozen.items():
        assert_same_tensors(method.models[name].state_dict(), state, f"{name} during stage 2")
    assert torch.equal(method.eval_predict(x), method.models["model"](x))


def test_the_oracle_stage_one_pick_keeps_the_best_conflicting_test_state():
    method, targets = make_method("denetdm", denetdm_stage1_pick="oracle_test")
    assert type(method).reads_test_labels(method.cfg)
    stage = begin(method, targets, "poe")
    kept = None
    for step, (x, y, idx) in enumerate(method_batches(targets, 3)):
        method.update(x, y, idx, step)
        score = [0.2, 0.6, 0.6][step]  # the second is the best; the third ties it, not kept
        record = {
            "step": step + 1,
            "valid": {"accuracy": 0.9},
            "test": {"conflicting": score, "accuracy": 0.5},
        }
        method.stage_evaluated(stage, record)
        if step == 1:
            kept = {n: copy.deepcopy(method.models[n].state_dict()) for n in ("deep", "shallow")}
    method.end_stage(stage, None)
    for name, state in kept.items():
        assert_same_tensors(method.models[name].state_dict(), state, name)
    assert method.stage1_best == {"step": 2, "score": 0.6}
    last, _ = make_method("denetdm")
    assert not type(last).reads_test_labels(last.cfg)


# -- end to end -------------------------------------------------------------------------------------
def test_denetdm_through_train_and_test(tiny_reference, tmp_path):
    logs = tmp_path / "log"
    r = run_cli(
        "train",
        "--dataset",
        "cmnist",
        "--percent",
        "1pct",
        "--exp",
        "d",
        "--method",
        "denetdm",
        "--denetdm_stage1_steps",
        "20",
        *quick_train_args(tiny_reference, logs, "--valid_freq", "10"),
    )
    assert r.returncode == 0, r.stderr
    run = logs / "cmnist" / "d"
    results = json.loads((run / "results.json").read_text())
    assert results["stages"] == [{"name": "poe", "steps": 20}, {"name": "main", "steps": 40}]
    assert results["uses_bias_labels_in_training"] is False
    assert results["reads_test_labels_in_training"] is False
    assert [(e["step"], e.get("stage")) for e in read_log(run, "eval")] == [
        (10, "poe"),
        (20, "poe"),
        (30, None),
        (40, None),
        (50, None),
        (60, None),
    ]
    assert {"poe", "distill"} <= set(read_log(run, "train")[-1])
    assert_test_reproduces_last(run, tiny_reference, results)
    assert set(saved_mlps(run, "denetdm", 3, (3, 8, 8))) == {
        "model"
    }  # only the target is what predicts


def test_presets_are_the_authors_epochs_on_our_training_splits():
    from debiaslab.data import cifar10c, cmnist
    from debiaslab.methods.denetdm import TRAIN_SIZES
    from debiaslab.presets import get_preset

    assert (TRAIN_SIZES["cmnist"], TRAIN_SIZES["cifar10c"]) == (
        60_000 - cmnist.VALID_SIZE,
        50_000 - cifar10c.VALID_SIZE,
    )
    expected = {  # batch, stage-1 epochs, stage-2 epochs, stage-1 lr / wd, stage-2 lr, distillation weight
        "cmnist-0.5pct-denetdm": (64, 100, 100, 0.001, 0.001, 0.001, 1.0),
        "cifar10c-5pct-denetdm": (256, 100, 200, 0.001, 0.001, 0.0001, 1.0),
        "bffhq-0.5pct-denetdm": (64, 10, 100, 0.001, 0.0, 0.0001, 0.0),
    }
    for name, (batch, epochs1, epochs2, lr1, wd1, lr2, distill) in expected.items():
        c = get_preset(name).config
        epoch = math.ceil(TRAIN_SIZES[get_preset(name).dataset] / batch)
        if name.startswith("cmnist"):  # LfF's protocol as DeNetDM ran it: 60,000, drop_last
            epoch = 60_000 // batch
            assert (c["data_dir"], c["palette"]) == ("dataset_denetdm", "lff")
        assert (
            c["batch_size"],
            c["denetdm_stage1_steps"],
            c["num_steps"],
            c["denetdm_stage1_lr"],
            c["denetdm_stage1_weight_decay"],
            c["lr"],
            c["weight_decay"],
            c["denetdm_distill_weight"],
            c["denetdm_temperature"],
        ) == (batch, epochs1 * epoch, epochs2 * epoch, lr1, wd1, lr2, 0.0, distill, 2.0)
    assert (
        get_preset("cmnist-1pct-denetdm").config["input_scale"] == "unit"
    )  # the authors' ToTensor pixels


@pytest.mark.parametrize("model", ["resnet18", "resnet20"])
def test_convolutional_branches_train_on_small_images(model):
    method, targets = make_method("denetdm", model=model, denetdm_stage1_steps=2, num_steps=2)
    assert type(method.models["shallow"]).__name__ == ("CNN4" if model == "resnet18" else "CNN3")
    for name in ("poe", "main"):
        begin(method, targets, name)
        for step, (x, y, idx) in enumerate(method_batches(targets, 2)):
            assert bool(method.update(x, y, idx, step).applied)
