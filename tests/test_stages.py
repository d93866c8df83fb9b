"""Methods that train in stages (JTT) and GroupDRO, against computations written in the tests."""

import collections
import copy
import dataclasses
import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch
import torch.nn.functional as F

from debiaslab import UserError
from debiaslab.data.sampler import EpochSampler
from debiaslab.methods.base import Stage, StageData, StagePlan
from debiaslab.methods.groupdro import exponentiated_step, group_means
from tests.conftest import (
    N_CLASSES,
    assert_same_tensors,
    assert_test_reproduces_last,
    cli_env,
    make_method,
    method_batches,
    method_biases,
    quick_train_args,
    read_log,
    run_cli,
    saved_mlps,
    tiny_bundle,
    tiny_config,
    write_image_folder,
)


# -- the loop's bookkeeping ---------------------------------------------------------------------
def test_stage_plan_lays_stages_end_to_end():
    plan = StagePlan([Stage("erm", 3, ("first",)), Stage("main", 5, ("model",))])
    assert (plan.ends, plan.total, plan.main_start) == ([3, 8], 8, 3)
    assert [plan.index(done) for done in range(9)] == [0, 0, 0, 1, 1, 1, 1, 1, 1]
    assert (plan.start(0), plan.start(1)) == (0, 3)


def test_total_steps_counts_every_stage():
    from debiaslab.config import TrainConfig
    from debiaslab.methods import total_steps

    assert total_steps(TrainConfig(method="jtt", jtt_steps=30, num_steps=40)) == 70
    assert total_steps(TrainConfig(method="denetdm", denetdm_stage1_steps=5, num_steps=7)) == 12
    assert (
        total_steps(TrainConfig(method="lff_be", be_num_models=3, be_steps=4, num_steps=10)) == 22
    )
    assert total_steps(TrainConfig(method="disent", num_steps=9)) == 9


def test_sampler_draws_each_sample_its_count_per_epoch_and_resumes():
    counts = torch.tensor([1, 3, 1, 1, 2, 1])  # 9 draws an epoch: three batches of 3
    sampler = EpochSampler(6, 3, torch.Generator().manual_seed(0), "cpu")
    sampler.use_counts(counts)
    for _ in range(2):
        epoch = torch.cat([sampler.next() for _ in range(3)]).tolist()
        assert collections.Counter(epoch) == {i: int(c) for i, c in enumerate(counts)}
    state = copy.deepcopy(sampler.state_dict())
    ahead = [sampler.next().tolist() for _ in range(4)]
    again = EpochSampler(6, 3, torch.Generator(), "cpu")
    again.use_counts(counts)
    again.load_state_dict(state)
    assert [again.next().tolist() for _ in range(4)] == ahead
    sampler.use_counts(None)  # back to one draw each
    assert sorted(torch.cat([sampler.next() for _ in range(2)]).tolist()) == list(range(6))


def test_weighted_sampler_draws_in_proportion_with_replacement_and_resumes():
    weights = torch.tensor([1.0, 1.0, 2.0, 4.0])
    sampler = EpochSampler(4, 4, torch.Generator().manual_seed(0), "cpu")
    sampler.use_weights(weights)
    drawn = torch.cat([sampler.next() for _ in range(4000)])
    share = torch.bincount(drawn, minlength=4).double() / len(drawn)
    assert torch.allclose(share, weights.double() / 8, atol=0.01), share
    assert sampler.epoch == 4000  # an epoch: n draws
    state = copy.deepcopy(sampler.state_dict())
    ahead = [sampler.next().tolist() for _ in range(20)]
    again = EpochSampler(4, 4, torch.Generator(), "cpu")
    again.use_weights(weights)
    again.load_state_dict(state)
    assert [again.next().tolist() for _ in range(20)] == ahead
    assert any(len(set(b)) < 4 for b in ahead)  # drawn with replacement


# -- GroupDRO ----------------------------------------------------------------------------------
def test_groupdro_batches_are_group_balanced():
    """Each (target, bias) group fills the same share of the draws, whatever its size; uniform
    shuffled epochs (the ``epochs`` sampler) would give the conflicting groups a quarter."""
    method, targets = make_method("groupdro")
    groups = targets * N_CLASSES + method_biases(targets)
    p = method.sample_probabilities()
    assert torch.allclose(p.sum(), torch.tensor(1.0, dtype=p.dtype))
    sampler = EpochSampler(len(targets), 6, torch.Generator().manual_seed(0), "cpu")
    sampler.use_weights(p)
    drawn = groups[torch.cat([sampler.next() for _ in range(3000)])]
    present = groups.unique()
    share = (drawn[:, None] == present[None, :]).double().mean(0)
    assert ((share - 1 / len(present)).abs() < 0.01).all(), share
    conflicting = targets != method_biases(targets)
    assert conflicting.double().mean() == 0.25  # uniform draws would give them 0.25, not 0.5
    assert make_method("groupdro", groupdro_sampler="epochs")[0].sample_probabilities() is None


def test_group_means_and_the_weight_update_by_hand():
    values, groups = torch.tensor([1.0, 3.0, 2.0, 6.0]), torch.tensor([0, 0, 2, 2])
    assert group_means(values, groups, 4).tolist() == [2.0, 0.0, 4.0, 0.0]  # groups 1 and 3 absent
    q = torch.tensor([0.25, 0.25, 0.25, 0.25])
    new = exponentiated_step(q, torch.tensor([2.0, 0.0, 4.0, 0.0]), 0.5)
    e = torch.exp(torch.tensor([1.0, 0.0, 2.0, 0.0]))  # exp(eta * loss)
    assert torch.allclose(new, e / e.sum())


def sagawa_step(model, opt, q, x, y, groups, eta, num_groups):
    """GroupDRO's step as its paper writes it, with a plain loop over the groups."""
    ce = F.cross_entropy(model(x), y, reduction="none")
    group_loss = []
    for g in range(num_groups):
        members = [i for i in range(len(y)) if groups[i] == g]
        group_loss.append(ce[members].mean() if members else ce.sum() * 0)
    group_loss = torch.stack(group_loss)
    q = q * torch.exp(eta * group_loss.detach())
    q = q / q.sum()
    opt.zero_grad()
    (q * group_loss).sum().backward()
    opt.step()
    return q


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_groupdro_matches_a_loop_reimplementation(optimizer):
    """The step as the paper writes it, with Adam (the presets') or SGD with momentum 0.9 and
    weight decay (GroupDRO's image recipe)."""
    method, targets = make_method(
        "groupdro", groupdro_eta=0.3, groupdro_optimizer=optimizer, weight_decay=0.1
    )
    biases = method_biases(targets)
    ref = copy.deepcopy(method.models["model"])
    opt = (
        torch.optim.Adam(ref.parameters(), lr=0.01, weight_decay=0.1)
        if optimizer == "adam"
        else torch.optim.SGD(ref.parameters(), lr=0.01, momentum=0.9, weight_decay=0.1)
    )
    num_groups = N_CLASSES * N_CLASSES
    q = torch.full((num_groups,), 1.0 / num_groups)
    for step, (x, y, idx) in enumerate(method_batches(targets, 6)):
        method.update(x, y, idx, step)
        q = sagawa_step(
            ref, opt, q, x, y, (targets[idx] * N_CLASSES + biases[idx]).tolist(), 0.3, num_groups
        )
        assert torch.allclose(method.q, q, atol=1e-6)
    for a, b in zip(method.models["model"].state_dict().values(), ref.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-5)


def test_groupdro_sgd_is_an_option_that_keeps_earlier_hashes():
    """SGD is GroupDRO's own choice, off by default; at its default the option stays out of the
    config hash, so the runs recorded before it existed keep their folders."""
    from debiaslab.config import TrainConfig

    method, _ = make_method("groupdro", groupdro_optimizer="sgd", weight_decay=1.0)
    opt = method.optimizers["model"]
    assert isinstance(opt, torch.optim.SGD) and not method.on_device  # stepped from the host
    assert (opt.defaults["momentum"], opt.defaults["weight_decay"]) == (0.9, 1.0)
    assert isinstance(make_method("groupdro")[0].optimizers["model"], torch.optim.Adam)
    base = TrainConfig(method="groupdro")
    assert "groupdro_optimizer" not in base.identity()
    adam = dataclasses.replace(base, groupdro_optimizer="adam")
    sgd = dataclasses.replace(base, groupdro_optimizer="sgd")
    assert adam.config_hash() == base.config_hash() != sgd.config_hash()


def test_groupdro_on_data_without_bias_labels_is_refused(tmp_path):
    from debiaslab.data.splits import Split
    from debiaslab.train import train

    bundle = tiny_bundle()
    bundle = dataclasses.replace(
        bundle, train=Split(bundle.train.images, bundle.train.targets, None)
    )
    with pytest.raises(UserError, match="groupdro trains on bias labels.*has none"):
        train(tiny_config(tmp_path, method="groupdro"), bundle)
    assert not (tmp_path / "tiny").exists()  # refused before anything was written
    write_image_folder(
        tmp_path / "insects", {"train": 8, "test": 2}
    )  # class folders: no bias labels
    r = run_cli(
        "train",
        "--image_folder",
        tmp_path / "insects",
        "--method",
        "groupdro",
        "--log_dir",
        tmp_path / "log",
        "--num_steps",
        "2",
        "--batch_size",
        "4",
        "--device",
        "cpu",
        "--no_progress",
    )
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "trains on bias labels" in r.stderr
    assert not (tmp_path / "log").exists()


def test_groupdro_is_marked_as_using_bias_labels(tmp_path):
    from debiaslab.train import train

    results = train(
        tiny_config(tmp_path, method="groupdro", num_steps=4, valid_freq=2), tiny_bundle()
    )
    config = json.loads((tmp_path / "tiny" / "e" / "config.json").read_text())
    assert results["uses_bias_labels_in_training"] and config["uses_bias_labels_in_training"]
    assert results["config"]["groupdro_eta"] == 0.01
    assert not train(tiny_config(tmp_path, exp="v", num_steps=4), tiny_bundle())[
        "uses_bias_labels_in_training"
    ]


# -- JTT -------------------------------------------------------------------------------------------
def stage_data(targets, x_all):
    return StageData((x_all * 255).round().to(torch.uint8), targets, lambda u: u.float() / 255, 7)


def test_jtt_error_set_is_what_the_first_model_gets_wrong_and_is_upsampled():
    method, targets = make_method("jtt", jtt_steps=4, jtt_upweight=5)
    erm, main = method.stages(method.cfg)
    assert (erm.name, erm.steps, erm.models, main.name, main.models) == (
        "erm",
        4,
        ("first",),
        "main",
        ("model",),
    )
    g = torch.Generator().manual_seed(2)
    data = stage_data(targets, torch.rand(len(targets), 3, 4, 4, generator=g))
    untouched = copy.deepcopy(method.models["model"].state_dict())
    method.begin_stage(erm, data)
    for step, (x, y, idx) in enumerate(method_batches(targets, 4)):
        method.update(x, y, idx, step)
    assert_same_tensors(method.models["model"].state_dict(), untouched, "model during erm")
    method.eval()
    method.end_stage(erm, data)
    with torch.no_grad():  # by hand: the first model's predictions on every training image
        wrong = [
            int(method.models["first"](data.prepare(data.images[i : i + 1])).argmax())
            != int(targets[i])
            for i in range(len(targets))
        ]
    assert method.error_set.tolist() == wrong and any(wrong) and not all(wrong)
    method.train()
    method.begin_stage(main, data)
    assert method.sample_counts().tolist() == [6 if w else 1 for w in wrong]  # 1 + lambda_up
    earlier, _ = make_method("jtt", jtt_steps=4, jtt_upweight=5, jtt_error_draws="upweight")
    earlier.error_set = method.error_set
    earlier.begin_stage(main, data)
    assert earlier.sample_counts().tolist() == [5 if w else 1 for w in wrong]
    first = copy.deepcopy(method.models["first"].state_dict())
    for step, (x, y, idx) in enumerate(method_batches(targets, 3)):
        method.update(x, y, idx, step)
    assert_same_tensors(method.models["first"].state_dict(), first, "first model during main")


def test_jtt_through_train_and_test(tiny_reference, tmp_path):
    logs = tmp_path / "log"
    r = run_cli(
        "train",
        "--dataset",
        "cmnist",
        "--percent",
        "1pct",
        "--exp",
        "j",
        "--method",
        "jtt",
        "--jtt_steps",
        "30",
        "--jtt_upweight",
        "7",
        *quick_train_args(tiny_reference, logs, "--valid_freq", "10"),
    )
    assert r.returncode == 0, r.stderr
    run = logs / "cmnist" / "j"
    results = json.loads((run / "results.json").read_text())
    assert results["stages"] == [{"name": "erm", "steps": 30}, {"name": "main", "steps": 40}]
    assert results["steps"] == 40 and results["selections"]["last"]["step"] == 70
    assert all(
        s["step"] > 30 for s in results["selections"].values()
    )  # rules pick from the main stage only
    evals = read_log(run, "eval")
    assert [(e["step"], e.get("stage")) for e in evals] == [
        (10, "erm"),
        (20, "erm"),
        (30, "erm"),
        (40, None),
        (50, None),
        (60, None),
        (70, None),
    ]
    # the error set logged at the end of stage erm, again from the saved first model (never trained after)
    from debiaslab.data.reference import load_reference

    train_split = load_reference(tiny_reference, "cmnist", "1pct").train
    first = saved_mlps(run, "jtt", 3, (3, 8, 8))["first"]
    with torch.no_grad():
        wrong = first(train_split.images.float() / 255 / 255).argmax(1) != train_split.targets
    (end,) = read_log(run, "stage_end")
    assert (end["step"], end["stage"], end["flagged"]) == (30, "erm", int(wrong.sum()))
    assert_test_reproduces_last(run, tiny_reference, results)
    rep = run_cli(
        "report", run, "--output", tmp_path / "report"
    )  # stage-tagged records in the curves
    assert rep.returncode == 0, rep.stderr
    assert (tmp_path / "report" / "curves.png").exists() and "stage erm ends" not in rep.stderr


# -- SIGKILL inside a stage --------------------------------------------------------------------------
STAGE_FLAGS = {
    "jtt": ["--jtt_steps", "1000", "--jtt_upweight", "9"],  # 1,000 steps in the first stage
    "denetdm": ["--denetdm_stage1_steps", "1000", "--denetdm_stage1_lr", "0.002"],
}


def stage_command(method, data, logs):
    return [
        sys.executable,
        "-m",
        "debiaslab",
        "train",
        "--method",
        method,
        "--dataset",
        "cmnist",
        "--percent",
        "1pct",
        "--data_dir",
        str(data),
        "--log_dir",
        str(logs),
        "--exp",
        "r",
        *STAGE_FLAGS[method],
        "--num_steps",
        "1000",
        "--valid_freq",
        "50",
        "--log_freq",
        "7",
        "--save_freq",
        "5",
        "--batch_size",
        "16",
        "--no_progress",
        "--device",
        "cpu",
    ]


def kill_after_step(proc, run_dir, step: int, rng: random.Random) -> int | None:
    """SIGKILL ``proc`` a random moment after its log passes ``step``; the last step logged then."""
    deadline = time.time() + 600  # a loaded machine may take minutes to get there
    while time.time() < deadline and proc.poll() is None:
        log = run_dir / "metrics.jsonl"
        # complete lines only: the run may be halfway through writing the last one
        lines = log.read_text().split("\n")[:-1] if log.exists() else []
        if lines and json.loads(lines[-1])["step"] >= step:
            time.sleep(rng.uniform(0, 0.2))
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return json.loads(lines[-1])["step"]
        time.sleep(0.01)
    proc.wait()
    return None


def finished_state(run_dir):
    last = torch.load(run_dir / "checkpoint_last.pt", weights_only=True)
    return (
        json.loads((run_dir / "results.json").read_text())["selections"],
        last["method_state"],
        last["sampler"],
        read_log(run_dir),
    )


@pytest.mark.parametrize("method", list(STAGE_FLAGS))
def test_sigkill_inside_each_stage_resumes_bit_for_bit(method, tiny_reference, tmp_path):
    ref = subprocess.run(
        stage_command(method, tiny_reference, tmp_path / "ref"),
        env=cli_env(),
        capture_output=True,
        timeout=600,
    )
    assert ref.returncode == 0, ref.stderr
    logs, rng = tmp_path / "killed", random.Random(7)
    run_dir = logs / "cmnist" / "r"
    killed_at = []
    for step in (
        400,
        1400,
    ):  # inside the first stage (steps 1-1000), then inside stage main (1001-2000)
        proc = subprocess.Popen(
            stage_command(method, tiny_reference, logs),
            env=cli_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        killed_at.append(kill_after_step(proc, run_dir, step, rng))
        assert proc.returncode == -signal.SIGKILL and not (run_dir / "results.json").exists()
    assert killed_at[0] < 1000 < killed_at[1] < 2000, killed_at
    final = subprocess.run(
        stage_command(method, tiny_reference, logs),
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert final.returncode == 0 and "resuming" in final.stdout, final.stderr
    (sel_a, state_a, sampler_a, log_a), (sel_b, state_b, sampler_b, log_b) = (
        finished_state(tmp_path / "ref" / "cmnist" / "r"),
        finished_state(run_dir),
    )
    assert sel_a == sel_b and log_a == log_b
    assert_same_tensors(state_a, state_b, "method_state")
    assert_same_tensors(sampler_a, sampler_b, "sampler")
    assert os.path.exists(run_dir / "checkpoint_last.pt")
