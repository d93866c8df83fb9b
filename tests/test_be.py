"""BiasEnsemble (lff_be, disent_be) against computations written in the tests."""

import copy
import dataclasses
import json
import math

import pytest
import torch
import torch.nn.functional as F

from debiaslab import UserError
from debiaslab.config import TrainConfig
from debiaslab.methods import METHODS
from debiaslab.methods.base import Stage, StageData
from debiaslab.methods.bias_ensemble import LfFBE, agreement_mask, masked_mean
from tests.conftest import (
    N_SAMPLES,
    adam,
    assert_disent_matches_its_loop,
    assert_lff_matches_its_loop,
    assert_same_tensors,
    assert_same_weights,
    assert_test_reproduces_last,
    cli_config,
    make_method,
    method_batches,
    quick_train_args,
    read_log,
    ref_gce,
    ref_step,
    run_cli,
    saved_mlps,
    tiny_bundle,
    tiny_config,
    traced,
)


# -- the committee's vote --------------------------------------------------------------------------
def votes_by_hand(table, tau, agreement):
    """Per sample (column): how many models (rows) give it more than tau; aligned if >= agreement."""
    return [sum(1 for row in table if row[j] > tau) >= agreement for j in range(len(table[0]))]


@pytest.mark.parametrize("tau,agreement", [(0.99, 3), (0.99, 1), (0.5, 2), (0.5, 5), (0.0, 5)])
def test_agreement_mask_by_hand(tau, agreement):
    table = [
        [0.995, 0.99, 0.20, 1.00, 0.999, 0.50],
        [0.999, 0.991, 0.99, 0.98, 0.999, 0.51],
        [0.990, 0.999, 0.999, 0.997, 0.10, 0.50],
        [0.991, 0.2, 0.995, 0.0, 0.999, 0.49],
        [0.3, 0.99, 0.99, 0.993, 0.999, 0.999],
    ]
    got = agreement_mask(torch.tensor(table, dtype=torch.float64), tau, agreement)
    assert got.tolist() == votes_by_hand(table, tau, agreement)


def test_a_probability_equal_to_tau_does_not_count():
    table = torch.tensor([[0.99, 0.99], [0.99, 0.9901], [0.99, 0.9901]], dtype=torch.float64)
    assert agreement_mask(table, 0.99, 2).tolist() == [False, True]
    assert agreement_mask(table.float(), 0.99, 1).tolist() == [
        False,
        True,
    ]  # float32 rounding of the table too


# -- the biased branch's loss ------------------------------------------------------------------------
def ce_by_hand(logits, y) -> list:
    """-log softmax(logits)[y] per row, from Python floats."""
    out = []
    for row, label in zip(logits.tolist(), y.tolist()):
        top = max(row)
        out.append(top + math.log(sum(math.exp(v - top) for v in row)) - row[label])
    return out


def mean_over(values, selected):
    picked = [v for v, s in zip(values, selected) if s]
    return sum(picked) / len(picked) if picked else 0.0


def test_masked_mean_by_hand_and_rows_outside_the_mask_never_leak():
    v = torch.tensor([1.0, 2.0, 4.0, 8.0])
    assert masked_mean(v, torch.tensor([True, False, True, False])) == pytest.approx(2.5)
    assert masked_mean(v, torch.zeros(4, dtype=torch.bool)) == 0.0
    bad = torch.tensor([1.0, float("inf"), 3.0, float("nan")], requires_grad=True)
    out = masked_mean(bad, torch.tensor([True, False, True, False]))
    out.backward()
    assert out.item() == pytest.approx(2.0) and bad.grad.tolist() == [0.5, 0.0, 0.5, 0.0]


@pytest.mark.parametrize("pattern", ["every_third", "none", "all"])
def test_lff_be_biased_term_is_ce_over_the_selected_samples(pattern):
    method, targets = make_method("lff_be")
    aligned = {
        "every_third": torch.arange(N_SAMPLES) % 3 == 0,
        "none": torch.zeros(N_SAMPLES, dtype=torch.bool),
        "all": torch.ones(N_SAMPLES, dtype=torch.bool),
    }[pattern]
    method.aligned.copy_(aligned)
    x, y, idx = next(method_batches(targets, 1))
    loss, terms = method.loss(x, y, idx, {})
    with torch.no_grad():
        expected = mean_over(ce_by_hand(method.models["biased"](x), y), aligned[idx].tolist())
    assert terms["loss_b"].item() == pytest.approx(expected, rel=1e-5, abs=1e-7)
    grads = torch.autograd.grad(
        terms["loss_b"], list(method.models["biased"].parameters()), allow_unused=True
    )
    moved = any(g is not None and g.abs().sum() > 0 for g in grads)
    assert moved == bool(
        aligned[idx].any()
    )  # a batch without a selected sample gives the biased model nothing
    assert torch.allclose(loss, terms["loss_b"] + terms["loss_d"])


def test_disent_be_bias_terms_use_the_sample_the_bias_features_come_from():
    method, targets = make_method(
        "disent_be", curr_step=0, lambda_swap=1.0, lambda_dis_align=2.0, lambda_swap_align=3.0
    )
    aligned = torch.arange(N_SAMPLES) % 4 != 1
    method.aligned.copy_(aligned)
    x, y, idx = next(method_batches(targets, 1))
    perm = torch.tensor([3, 0, 7, 7 - 6, 5, 2, 6, 4])  # a permutation of the batch of 8
    loss, terms = method.loss(x, y, idx, {"perm": perm})
    m_i, m_b = method.models["intrinsic"], method.models["bias"]
    with torch.no_grad():
        z_i, z_b = m_i.extract(x), m_b.extract(x)
        dis = ce_by_hand(m_b.fc(torch.cat([z_i, z_b], 1)), y)
        swap = ce_by_hand(
            m_b.fc(torch.cat([z_i, z_b[perm]], 1)), y[perm]
        )  # the label of the features received
    assert terms["loss_dis_align"].item() == pytest.approx(
        mean_over(dis, aligned[idx].tolist()), rel=1e-5
    )
    assert terms["loss_swap_align"].item() == pytest.approx(
        mean_over(swap, aligned[idx[perm]].tolist()), rel=1e-5
    )
    assert (
        aligned[idx].tolist() != aligned[idx[perm]].tolist()
    )  # the two masks differ: the test tells them apart


# -- stages, best-validation keeping, scoring -----------------------------------------------------------
def stage_data(targets, seed=2):
    g = torch.Generator().manual_seed(seed)
    images = (torch.rand(len(targets), 3, 4, 4, generator=g) * 255).round().to(torch.uint8)
    return StageData(images, targets, lambda u: u.float() / 255, 7)


def p_true_by_hand(model, data) -> list:
    """Each training image's softmax probability of its class, one image at a time."""
    out = []
    with torch.no_grad():
        for i in range(len(data.targets)):
            logits = model(data.prepare(data.images[i : i + 1]))[0].tolist()
            top = max(logits)
            exps = [math.exp(v - top) for v in logits]
            out.append(exps[int(data.targets[i])] / sum(exps))
    return out


def weights_of(method):
    return {n: copy.deepcopy(m.state_dict()) for n, m in method.models.items()}


def test_best_valid_model_is_kept_first_best_wins():
    method, targets = make_method("lff_be", be_num_models=2, be_agreement=1)
    aux0, aux1, main = method.stages(method.cfg)
    data = stage_data(targets)
    method.begin_stage(aux1, data)
    model = method.models["aux1"]
    kept = {}
    for step, acc in (
        (10, 0.5),
        (20, 0.7),
        (30, 0.7),
        (40, 0.6),
    ):  # the best, then a tie, then worse
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.05 * step)
        kept[step] = copy.deepcopy(model.state_dict())
        method.stage_evaluated(aux1, {"step": step, "valid": {"accuracy": acc, "unbiased": 1.0}})
    method.eval()
    method.end_stage(aux1, data)
    assert_same_tensors(model.state_dict(), kept[20], "aux1 after its stage")
    assert method.best_steps == [None, 20] and method.best is None
    assert method.scores[1].tolist() == pytest.approx(p_true_by_hand(model, data), abs=1e-6)
    assert method.flagged_conflicting() is None  # aux0 is not scored yet: no selection


def run_stage(method, stage, data, steps, seed, evals=()):
    """What the loop does in a stage: updates with stage-relative steps, evaluations, the end hook."""
    method.train()
    method.begin_stage(stage, data)
    for step, (x, y, idx) in enumerate(method_batches(data.targets, steps, seed)):
        method.update(x, y, idx, step)
        if step + 1 in evals:
            method.stage_evaluated(
                stage, {"step": step + 1, "valid": {"accuracy": evals[step + 1]}}
            )
    if stage.name != "main":
        method.eval()
        method.end_stage(stage, data)


def test_each_model_moves_only_in_its_own_stage_and_the_vote_is_that_of_the_kept_models():
    method, targets = make_method(
        "lff_be",
        be_num_models=3,
        be_steps=4,
        be_agreement=2,
        use_lr_decay=True,
        lr_decay_step=2,
        lr_gamma=0.5,
    )
    stages = method.stages(method.cfg)
    assert [(s.name, s.steps, s.models) for s in stages] == [
        ("aux0", 4, ("aux0",)),
        ("aux1", 4, ("aux1",)),
        ("aux2", 4, ("aux2",)),
        ("main", 50_000, ("biased", "debiased")),
    ]
    data = stage_data(targets)
    # accuracies fed to stage_evaluated: aux0 keeps step 2, aux1 step 4, aux2 step 2 (first of a tie)
    evals = [{2: 0.9, 4: 0.5}, {2: 0.1, 4: 0.2}, {2: 0.4, 4: 0.4}]
    for k, stage in enumerate(stages[:-1]):
        before = weights_of(method)
        run_stage(method, stage, data, 4, seed=10 + k, evals=evals[k])
        after = weights_of(method)
        for name in method.models:
            moved = not all(
                torch.equal(a, b) for a, b in zip(before[name].values(), after[name].values())
            )
            assert moved == (name == stage.name), (stage.name, name)
        assert method.lr() == 0.01 and all(
            float(o.param_groups[0]["lr"]) == 0.01 for o in method.optimizers.values()
        )
    assert method.best_steps == [2, 4, 2]
    probs = [p_true_by_hand(method.models[f"aux{i}"], data) for i in range(3)]
    assert method.scores.tolist() == [pytest.approx(p, abs=1e-6) for p in probs]
    # a tau that splits these barely trained models' votes, set before the vote is recomputed
    tau = sorted(sum(probs, []))[len(targets) * 3 // 2]
    method.cfg = dataclasses.replace(method.cfg, be_tau=tau)
    method.end_stage(stages[2], data)
    selected = votes_by_hand(probs, tau, 2)
    assert method.aligned.tolist() == selected and 0 < sum(selected) < len(selected)
    assert method.flagged_conflicting().tolist() == [not s for s in selected]
    before = weights_of(method)
    run_stage(method, stages[-1], data, 5, seed=20)
    for name, state in before.items():
        if name.startswith("aux"):
            assert_same_tensors(method.models[name].state_dict(), state, f"{name} during main")
        else:
            assert not torch.equal(method.models[name].fc.weight, state["fc.weight"]), name
    # the main models' schedule counts the main stage's steps only: 5 steps, decay every 2
    assert method.lr() == pytest.approx(0.01 * 0.5**2)
    assert float(method.optimizers["aux0"].param_groups[0]["lr"]) == 0.01


def test_aux_stage_step_is_one_graph():
    torch._dynamo.reset()
    try:
        method, targets = make_method("disent_be", curr_step=0)
        method.begin_stage(method.stages(method.cfg)[1], stage_data(targets))
        compute = traced(method.compute)
        for step, (x, y, idx) in enumerate(method_batches(targets, 2)):
            draws = method.draw(len(y), step)
            assert draws == {}  # no permutation drawn outside the main stage
            loss, names, *_ = compute(x, y, idx, draws)
            assert names == ("loss",)
    finally:
        torch._dynamo.reset()


# -- whole steps against loop re-implementations ----------------------------------------------------------
def masked_ce(logits, y, selected):
    ce = F.cross_entropy(logits, y, reduction="none")
    return ce[selected].mean() if selected.any() else ce.sum() * 0


def test_aux_stage_matches_a_loop_reimplementation():
    method, targets = make_method("lff_be")
    method.begin_stage(method.stages(method.cfg)[2], None)
    ref = copy.deepcopy(method.models["aux2"])
    (opt,) = adam([ref])
    for step, (x, y, idx) in enumerate(method_batches(targets, 5)):
        method.update(x, y, idx, step)
        ref_step([opt], ref_gce(ref(x), y).mean())
    assert_same_weights(method, {"aux2": ref})


@pytest.mark.parametrize("pattern", ["every_third", "none"])
def test_lff_be_main_stage_matches_a_loop_reimplementation(pattern):
    method, targets = make_method("lff_be")
    aligned = (
        torch.arange(N_SAMPLES) % 3 == 0
        if pattern == "every_third"
        else torch.zeros(N_SAMPLES, dtype=torch.bool)
    )
    method.aligned.copy_(aligned)
    # W from every sample of the batch, the biased model's CE included
    assert_lff_matches_its_loop(
        method, targets, lambda logits_b, y, idx: masked_ce(logits_b, y, aligned[idx])
    )


def test_disent_be_main_stage_matches_a_loop_reimplementation():
    kw = dict(curr_step=2, lambda_swap=0.5, lambda_dis_align=10.0, lambda_swap_align=5.0)
    method, targets = make_method("disent_be", **kw)
    aligned = torch.arange(N_SAMPLES) % 4 != 1
    method.aligned.copy_(aligned)
    assert_disent_matches_its_loop(
        method, targets, lambda logits_b, y, idx: masked_ce(logits_b, y, aligned[idx])
    )


# -- configuration and flags ------------------------------------------------------------------------------
def test_registry_flags_and_defaults():
    from debiaslab.cli import METHOD_CHOICES

    assert METHOD_CHOICES == tuple(METHODS)
    ours = cli_config(
        "--train_disent_be",
        "--num_bias_models",
        "4",
        "--biased_model_train_iter",
        "30",
        "--biased_model_softmax_threshold",
        "0.9",
        "--agreement",
        "2",
    )
    same = cli_config(
        "--method",
        "disent_be",
        "--be_num_models",
        "4",
        "--be_steps",
        "30",
        "--be_tau",
        "0.9",
        "--be_agreement",
        "2",
    )
    assert ours == same and (ours.be_num_models, ours.be_steps, ours.be_tau, ours.be_agreement) == (
        4,
        30,
        0.9,
        2,
    )
    default = cli_config("--train_lff_be")
    assert (
        default.method,
        default.be_num_models,
        default.be_steps,
        default.be_tau,
        default.be_agreement,
    ) == ("lff_be", 5, 1000, 0.99, 3)
    assert (
        cli_config("--train_lff").be_num_models is None
    )  # not part of other methods' configs (or hashes)
    method, _ = make_method("disent_be", be_num_models=2, be_agreement=1)
    assert {n: m.fc.in_features for n, m in method.models.items()} == {
        "intrinsic": 32,
        "bias": 32,
        "aux0": 16,
        "aux1": 16,
    }


@pytest.mark.parametrize(
    "kw,message",
    [
        (dict(method="lff_be", be_agreement=6), "be_agreement 6 is more than --be_num_models 5"),
        (dict(method="lff_be", be_num_models=2, be_agreement=3), "more than --be_num_models 2"),
        (dict(method="disent_be", be_tau=1.0), "--be_tau must be in"),
        (dict(method="lff_be", be_steps=0), "--be_steps must be a positive integer"),
        (
            dict(method="lff", be_num_models=3),
            "--be_num_models is a setting of lff_be and disent_be, not of lff",
        ),
        (dict(method="lff_be", jtt_steps=3), "--jtt_steps is a setting of jtt, not of lff_be"),
    ],
)
def test_bad_settings_are_refused(kw, message):
    from debiaslab.config import TrainConfig

    with pytest.raises(UserError, match=message):
        TrainConfig(**kw).resolved().validate()


# -- through the loop ------------------------------------------------------------------------------------
class Interrupt(Exception):
    pass


def test_interrupted_inside_an_aux_stage_resumes_bit_for_bit(tmp_path, monkeypatch):
    from debiaslab import checkpoints
    from debiaslab.train import train

    kw = dict(
        method="lff_be",
        be_num_models=2,
        be_steps=6,
        be_agreement=1,
        be_tau=0.6,
        num_steps=6,
        valid_freq=2,
        save_freq=2,
        log_freq=2,
    )
    train(tiny_config(tmp_path / "a", **kw), tiny_bundle())
    save_full = checkpoints.save_full

    def save_then_stop(run_dir, state, *args):
        save_full(run_dir, state, *args)
        if state["step"] == 8:  # inside stage aux1, after its evaluation after 1 update (step 7)
            assert state["method_state"]["extra"]["bias_ensemble"]["best"]["step"] == 7
            raise Interrupt

    monkeypatch.setattr(checkpoints, "save_full", save_then_stop)
    with pytest.raises(Interrupt):
        train(tiny_config(tmp_path / "b", **kw), tiny_bundle())
    monkeypatch.setattr(checkpoints, "save_full", save_full)
    train(tiny_config(tmp_path / "b", **kw), tiny_bundle())
    runs = [tmp_path / r / "tiny" / "e" for r in "ab"]
    states = [torch.load(r / "checkpoint_last.pt", weights_only=True) for r in runs]
    assert_same_tensors(states[0]["method_state"], states[1]["method_state"], "method_state")
    logs = [[{k: v for k, v in rec.items() if k != "time"} for rec in read_log(r)] for r in runs]
    assert logs[0] == logs[1]
    be = states[0]["method_state"]["extra"]["bias_ensemble"]
    assert be["aligned_ready"] and be["scored"] == [True, True]


def test_aux_models_are_candidates_after_1_and_501_updates_only(tmp_path):
    """As the authors run it: an aux stage of 600 steps is evaluated after its 1st and 501st
    updates only, and the kept model is one of those two, never the stage's last state."""
    from debiaslab.train import train

    kw = dict(method="lff_be", be_num_models=1, be_steps=600, be_agreement=1, num_steps=2)
    train(tiny_config(tmp_path, valid_freq=100, **kw), tiny_bundle())
    run = tmp_path / "tiny" / "e"
    evals = read_log(run, "eval")
    assert [e["step"] for e in evals if e.get("stage") == "aux0"] == [1, 501]
    last = torch.load(run / "checkpoint_last.pt", weights_only=True)["method_state"]
    best_step = last["extra"]["bias_ensemble"]["best_steps"][0]
    first, second = (e["valid"]["accuracy"] for e in evals[:2])
    assert best_step == (501 if second > first else 1)
    cadence = TrainConfig(method="lff_be", be_candidates="cadence").resolved()
    assert LfFBE.stage_evaluation_steps(cadence, Stage("aux0", 600, ("aux0",))) is None
    short = TrainConfig(method="lff_be", be_steps=300).resolved()
    assert LfFBE.stage_evaluation_steps(short, Stage("aux0", 300, ("aux0",))) == (1,)


def test_lff_be_through_train_and_test(tiny_reference, tmp_path):
    logs = tmp_path / "log"
    r = run_cli(
        "train",
        "--dataset",
        "cmnist",
        "--percent",
        "1pct",
        "--exp",
        "be",
        "--train_lff_be",
        "--num_bias_models",
        "3",
        "--biased_model_train_iter",
        "20",
        "--biased_model_softmax_threshold",
        "0.985",
        "--agreement",
        "2",
        "--be_candidates",
        "cadence",
        "--input_scale",
        "unit",
        *quick_train_args(tiny_reference, logs, "--valid_freq", "10"),
    )
    assert r.returncode == 0, r.stderr
    run = logs / "cmnist" / "be"
    results = json.loads((run / "results.json").read_text())
    assert results["stages"] == [
        {"name": "aux0", "steps": 20},
        {"name": "aux1", "steps": 20},
        {"name": "aux2", "steps": 20},
        {"name": "main", "steps": 40},
    ]
    assert results["steps"] == 40 and results["selections"]["last"]["step"] == 100
    assert all(s["step"] > 60 for s in results["selections"].values())
    evals = read_log(run, "eval")
    assert [(e["step"], e.get("stage")) for e in evals] == [
        (10, "aux0"),
        (20, "aux0"),
        (30, "aux1"),
        (40, "aux1"),
        (50, "aux2"),
        (60, "aux2"),
        (70, None),
        (80, None),
        (90, None),
        (100, None),
    ]
    assert all("train_w" not in e for e in evals[:6]) and all("train_w" in e for e in evals[6:])
    last = torch.load(run / "checkpoint_last.pt", weights_only=True)["method_state"]
    be = last["extra"]["bias_ensemble"]
    # each aux model kept: its stage's first best valid accuracy
    for i in range(3):
        stage_evals = [e for e in evals if e.get("stage") == f"aux{i}"]
        best = max(e["valid"]["accuracy"] for e in stage_evals)
        assert be["best_steps"][i] == next(
            e["step"] for e in stage_evals if e["valid"]["accuracy"] == best
        )
    # the selection again, from the saved aux models (each the kept one, never trained after its stage)
    from debiaslab.data.reference import load_reference
    from debiaslab.models import build_model

    train_split = load_reference(tiny_reference, "cmnist", "1pct").train
    probs = []
    for i in range(3):
        model = build_model("mlp", 3, 1, (3, 8, 8))
        model.load_state_dict(last["models"][f"aux{i}"])
        with torch.no_grad():
            p = F.softmax(model.eval()(train_split.images.float() / 255), 1)
        probs.append(p.gather(1, train_split.targets[:, None]).squeeze(1).tolist())
    selected = votes_by_hand(probs, 0.985, 2)
    flagged = [not s for s in selected]
    assert 0 < sum(flagged) < len(flagged)
    conflicting = (train_split.targets != train_split.biases).tolist()
    (end,) = read_log(run, "stage_end")
    assert (end["step"], end["stage"], end["flagged"]) == (60, "aux2", sum(flagged))
    assert end["flagged_counts"] == {
        "flagged_conflicting": sum(f and c for f, c in zip(flagged, conflicting)),
        "flagged_aligned": sum(f and not c for f, c in zip(flagged, conflicting)),
        "unflagged_conflicting": sum(s and c for s, c in zip(selected, conflicting)),
        "unflagged_aligned": sum(s and not c for s, c in zip(selected, conflicting)),
    }
    assert be["aligned"].tolist() == selected
    # the main models saved, and evaluated again by the test command
    models = saved_mlps(run, "lff_be", 3, (3, 8, 8))
    assert set(models) == {"biased", "debiased"}
    best = torch.load(run / "checkpoint_best_valid.pt", weights_only=True)
    assert set(best["models"]) == {
        "biased",
        "debiased",
    }  # the best checkpoints hold what predict reads
    assert_test_reproduces_last(run, tiny_reference, results)
