"""Weight averaging and the label-free selection rules (issue 15).

Rules: known picks on synthetic evaluation logs; a guard that fails the test if a label-free
rule reads a test metric or a bias-label metric; the pseudo-unbiased metric on tiny tensors.
Averaging: the EMA against a hand computation on a tiny model (BatchNorm included); one real run
whose results.json, eval log, checkpoints and ``test --select wa_*`` agree with each other.
Resuming keeps the average bit for bit: tests/test_resume.py checks the full checkpoint's
``average`` after SIGKILLs.
"""

import json

import pytest
import torch
import torch.nn as nn

from debiaslab import UserError
from debiaslab.api import load_run
from debiaslab.averaging import WeightAverage
from debiaslab.collect import replayed
from debiaslab.metrics import compute_metrics
from debiaslab.selection import (
    LABEL_FREE,
    RULES,
    SelectionTracker,
    base_rule,
    default_selection,
    picks,
    selection_names,
    shipped_selection,
)
from debiaslab.train import train
from tests.conftest import (
    assert_same_tensors,
    read_log,
    run_cli,
    run_test_cli,
    tiny_bundle,
    tiny_config,
)


# -- the rules on synthetic logs --------------------------------------------------------------------
def metrics(accuracy, per_class, pseudo=None, unbiased=0.5):
    m = {
        "accuracy": accuracy,
        "per_class": per_class,
        "unbiased": unbiased,
        "aligned": 0.9,
        "conflicting": 0.1,
        "worst_group": 0.0,
    }
    if pseudo is not None:
        m["pseudo_unbiased"] = pseudo
    return m


def record(step, valid, test_unbiased, wa=None):
    r = {
        "kind": "eval",
        "step": step,
        "valid": valid,
        "test": metrics(0.5, [0.5], unbiased=test_unbiased),
    }
    if wa is not None:
        r["wa"] = {"valid": wa, "test": metrics(0.5, [0.5], unbiased=test_unbiased + 0.01)}
    return r


LOG = [
    record(100, metrics(0.99, [1.0, 0.20], pseudo=0.40), 0.30),
    record(
        200,
        metrics(0.97, [0.90, 0.60], pseudo=0.70),
        0.60,
        wa=metrics(0.95, [0.9, 0.5], pseudo=0.75),
    ),
    record(
        300,
        metrics(0.98, [0.95, 0.60], pseudo=0.65),
        0.70,
        wa=metrics(0.96, [0.9, 0.7], pseudo=0.72),
    ),
    record(
        400,
        metrics(0.96, [0.80, 0.50], pseudo=0.70),
        0.50,
        wa=metrics(0.96, [0.9, 0.7], pseudo=0.80),
    ),
]


def test_each_rule_picks_the_known_step():
    best = picks(LOG, "cmnist")
    got = {name: pick["step"] for name, pick in best.items()}
    assert got == {
        "last": 400,
        "best_valid": 100,
        "best_valid_worst_class": 200,  # 0.60 at 200 and 300: the first best
        "best_valid_pseudo_unbiased": 200,  # 0.70 at 200 and 400
        "best_valid_pseudo_unbiased_mean5": 400,  # trailing means .40 .55 .58 .61
        "best_valid_unbiased": 100,
        "oracle_best_test": 300,
        # the fallback rules (*_or_last) pick nothing: these evaluations log no sample count n
        # the averaged model from step 200 on, scored on its own evaluation
        "wa_last": 400,
        "wa_best_valid": 300,
        "wa_best_valid_worst_class": 300,
        "wa_best_valid_pseudo_unbiased": 400,
        "wa_best_valid_pseudo_unbiased_mean5": 400,
        "wa_best_valid_unbiased": 200,
        "wa_oracle_best_test": 300,
    }
    assert (
        best["wa_last"]["test"] == LOG[3]["wa"]["test"]
    )  # the averaged model's metrics, not the raw ones
    assert best["last"]["test"] == LOG[3]["test"]


def test_a_rule_without_its_metric_picks_nothing():
    """No biased branch (no pseudo_unbiased) and no averaging: those selections stay empty."""
    log = [record(10, metrics(0.5, [0.5, 0.4]), 0.2), record(20, metrics(0.6, [0.3, 0.9]), 0.3)]
    best = picks(log, "cmnist")
    assert "best_valid_pseudo_unbiased" not in best and not any(n.startswith("wa_") for n in best)
    assert best["best_valid_worst_class"]["step"] == 10 and best["best_valid"]["step"] == 20


def test_worst_class_skips_classes_without_samples():
    best = picks(
        [record(1, metrics(0.5, [0.5, None]), 0.1), record(2, metrics(0.5, [0.4, None]), 0.1)],
        "cmnist",
    )
    assert best["best_valid_worst_class"]["score"] == 0.5


class Guarded(dict):
    """Metrics whose forbidden keys fail the test when read."""

    def __init__(self, data, forbidden):
        super().__init__(data)
        self.forbidden = forbidden

    def __getitem__(self, key):
        if key in self.forbidden or self.forbidden == "all":
            raise AssertionError(f"a label-free rule read {key!r}")
        return super().__getitem__(key)

    def get(self, key, default=None):
        return self[key] if key in self else default


BIAS_KEYS = {"aligned", "conflicting", "unbiased", "worst_group"}


def guarded(log):
    out = []
    for r in log:
        g = dict(r, valid=Guarded(r["valid"], BIAS_KEYS), test=Guarded(r["test"], "all"))
        if "wa" in r:
            g["wa"] = {
                "valid": Guarded(r["wa"]["valid"], BIAS_KEYS),
                "test": Guarded(r["wa"]["test"], "all"),
            }
        out.append(g)
    return out


def test_label_free_rules_read_no_test_metric_and_no_bias_label():
    names = [n for n in selection_names() if RULES[n.removeprefix("wa_")].name in LABEL_FREE]
    assert len(names) == 14
    tracker = SelectionTracker("cmnist", names)
    for r in guarded(LOG):
        tracker.update(r)  # raises if a rule reads a guarded key
    assert {n: p["step"] for n, p in tracker.picks().items()} == {
        n: p["step"] for n, p in picks(LOG, "cmnist", names).items()
    }
    for rule in (
        "best_valid_unbiased",
        "oracle_best_test",
    ):  # the guard does catch the rules that read them
        with pytest.raises(AssertionError, match="a label-free rule read"):
            SelectionTracker("cmnist", [rule]).update(guarded(LOG)[0])


def test_pseudo_unbiased_on_tiny_tensors():
    """Cells (class, pseudo bias): (0,0) 2/2, (0,1) 0/1, (1,1) 1/2 -> mean 0.5; no bias label read."""
    targets = torch.tensor([0, 0, 0, 1, 1])
    preds = torch.tensor([0, 0, 1, 1, 0])
    pseudo = torch.tensor([0, 0, 1, 1, 1])
    m = compute_metrics(preds, targets, None, 2, pseudo_biases=pseudo)
    assert m["pseudo_unbiased"] == pytest.approx((1.0 + 0.0 + 0.5) / 3)
    assert m["unbiased"] is None
    assert "pseudo_unbiased" not in compute_metrics(preds, targets, None, 2)


# -- weight averaging ---------------------------------------------------------------------------------
def tiny_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2))


def test_average_equals_a_hand_computed_ema():
    model = tiny_model()
    decay, start = 0.9, 1
    average = WeightAverage({"m": model}, decay, start)
    snapshots = []
    for step in range(4):
        with torch.no_grad():  # a "training step": new weights and BatchNorm statistics
            for p in model.parameters():
                p.add_(torch.randn_like(p))
            model(torch.randn(8, 3))  # train mode: moves running_mean / var and the batch counter
        average.update(step)
        snapshots.append({k: v.clone() for k, v in model.state_dict().items()})
    assert average.count == 3  # steps 1, 2, 3
    state = average.models["m"].state_dict()
    for key, value in state.items():
        if value.is_floating_point():
            hand = snapshots[1][key]  # the first averaged step copies
            for s in snapshots[2:]:
                hand = decay * hand + (1 - decay) * s[key]
            torch.testing.assert_close(value, hand, rtol=1e-6, atol=1e-6)
        else:
            assert torch.equal(value, snapshots[-1][key])  # num_batches_tracked: copied
    assert all(not p.requires_grad for p in average.models["m"].parameters())


def test_average_state_round_trips():
    model = tiny_model()
    a = WeightAverage({"m": model}, 0.5, 0)
    a.update(0)
    with torch.no_grad():
        model[0].weight.add_(1.0)
    a.update(1)
    b = WeightAverage({"m": tiny_model()}, 0.5, 0)
    b.load_state_dict(a.state_dict())
    assert b.count == 2
    assert_same_tensors(b.models["m"].state_dict(), a.models["m"].state_dict())


@pytest.mark.parametrize(
    "flags, message",
    [({"wa_decay": 1.0}, "--wa_decay must be in"), ({"wa_start": -1}, "--wa_start must be")],
)
def test_bad_averaging_flags_are_refused(tmp_path, flags, message):
    with pytest.raises(UserError, match=message):
        tiny_config(tmp_path, **flags).validate()


def test_averaging_fields_left_at_their_default_keep_the_run_hash(tmp_path):
    """Runs from before weight averaging keep their directories (and sweeps skip them)."""
    cfg = tiny_config(tmp_path)
    assert "wa_decay" not in cfg.identity() and "wa_start" not in cfg.identity()
    assert tiny_config(tmp_path, wa_decay=0.99).config_hash() != cfg.config_hash()


def test_a_run_records_averaged_selections_that_replay_from_its_log(tmp_path):
    """LfF on the tiny bundle: an EMA from step 5, evaluated every 5 steps next to the raw model;
    results.json's selections are what its eval log replays to; checkpoint_wa_last.pt holds the
    final average."""
    cfg = tiny_config(tmp_path, method="lff", num_steps=30, valid_freq=5, wa_start=5, wa_decay=0.8)
    results = train(cfg, tiny_bundle())
    run = tmp_path / "tiny" / "e"
    evals = read_log(run, "eval")
    assert ["wa" in e for e in evals] == [False] + [True] * 5  # averaging starts after step 5
    assert all(
        "pseudo_unbiased" in e["valid"] and "pseudo_unbiased" not in e["test"] for e in evals
    )
    assert results["weight_averaging"] == {
        "decay": 0.8,
        "start": 5,
        "models": ["biased", "debiased"],
        "steps_averaged": 25,
    }
    selections = results["selections"]
    assert list(selections) == selection_names()
    for name, pick in picks(evals, "tiny").items():
        assert {k: selections[name][k] for k in ("step", "valid", "test")} == {
            k: pick[k] for k in ("step", "valid", "test")
        }, name
    assert replayed(run, "tiny") == {n: s["test_primary"] for n, s in selections.items()}
    last = torch.load(run / "checkpoint_last.pt", weights_only=True)
    wa_last = torch.load(run / "checkpoint_wa_last.pt", weights_only=True)
    assert_same_tensors(wa_last["models"], last["average"]["models"], "wa_last")
    assert wa_last["metrics"]["test"] == evals[-1]["wa"]["test"]


def test_collect_gaps_scores_each_selection_against_the_oracle(tmp_path):
    """Two seeds of one cell: each selection's gap is its test score minus the same run's oracle."""
    from debiaslab.collect import collect

    runs = []
    for seed in (0, 1):
        train(
            tiny_config(
                tmp_path, method="lff", num_steps=20, valid_freq=5, seed=seed, exp=f"s{seed}"
            ),
            tiny_bundle(),
        )
        runs.append(
            json.loads((tmp_path / "tiny" / f"s{seed}" / "results.json").read_text())["selections"]
        )
    table = collect(str(tmp_path), gaps=True)

    def gap(name, against="oracle_best_test"):
        return [100 * (s[name]["test_primary"] - s[against]["test_primary"]) for s in runs]

    row = next(line for line in table.splitlines() if line.startswith("| wa_last |"))
    cells = [c.strip() for c in row.split("|")[1:-1]]
    assert cells[2] == "2" and cells[3] == f"{sum(gap('wa_last')) / 2:+.2f}"
    assert (
        cells[4] == f"{min(gap('wa_last')):+.2f}"
        and cells[6] == f"{min(gap('wa_last', 'last')):+.2f}"
    )
    assert cells[7] == "1"  # one cell, both of its runs recorded it


def test_test_command_evaluates_an_averaged_pick(tiny_reference, tmp_path):
    from tests.conftest import quick_train_args

    logs = tmp_path / "log"
    r = run_cli(
        "train",
        "--dataset",
        "cmnist",
        "--percent",
        "1pct",
        "--exp",
        "wa",
        "--train_ours",
        "--curr_step",
        "10",
        *quick_train_args(tiny_reference, logs),
    )
    assert r.returncode == 0, r.stderr
    run = logs / "cmnist" / "wa"
    results = json.loads((run / "results.json").read_text())
    assert results["weight_averaging"]["start"] == 10  # DisEnt: from --curr_step
    shipped = "wa_best_valid_pseudo_unbiased_mean5"  # its model kept as its smoothed pick moved
    pick = results["selections"][shipped]
    t = run_test_cli(run, tiny_reference, "--select", shipped, "--json")
    assert t.returncode == 0, t.stderr
    out = json.loads(t.stdout)
    assert out["step"] == pick["step"]
    assert out["metrics"]["test"] == pick["test"]
    # a Colored MNIST run ships that pick: test, the API and report use it unless told otherwise
    assert results["default_selection"] == shipped
    plain = run_test_cli(run, tiny_reference, "--json")
    assert plain.returncode == 0, plain.stderr
    assert json.loads(plain.stdout) == out
    assert load_run(run).metrics() == pick["test"] and load_run(run).step() == pick["step"]
    last = run_test_cli(run, tiny_reference, "--select", "last", "--json")
    assert json.loads(last.stdout)["step"] == results["selections"]["last"]["step"]


@pytest.mark.parametrize(
    "dataset,recorded,shipped",
    [
        (
            "cmnist",
            (
                "last",
                "wa_last",
                "wa_best_valid_pseudo_unbiased",
                "wa_best_valid_pseudo_unbiased_mean5",
            ),
            "wa_best_valid_pseudo_unbiased_mean5",
        ),
        ("cmnist", ("last", "wa_last"), "wa_last"),  # no biased branch (Vanilla)
        ("cmnist", ("last",), "last"),  # averaging off, or a run from before it
        ("cifar10c", ("last", "wa_last", "wa_best_valid_pseudo_unbiased"), "last"),  # not measured
    ],
)
def test_the_shipped_selection_is_the_measured_label_free_one(dataset, recorded, shipped):
    selections = {name: None for name in selection_names()} | {n: {"step": 1} for n in recorded}
    assert default_selection(dataset, selections) == shipped
    assert base_rule(shipped).name in LABEL_FREE
    assert shipped_selection({"default_selection": shipped}) == shipped
    assert shipped_selection({}) == "last"  # results.json from before it was recorded
    # a run trained under an earlier default reads back the default it recorded
    old = "wa_best_valid_pseudo_unbiased"
    assert shipped_selection({"default_selection": old}) == old


def test_averaging_off(tmp_path):
    """--wa_decay 0: no averaged evaluation, selection or checkpoint."""
    results = train(tiny_config(tmp_path, wa_decay=0.0), tiny_bundle())
    run = tmp_path / "tiny" / "e"
    assert list(results["selections"]) == selection_names(averaged=False)
    assert "weight_averaging" not in results
    assert not any("wa" in e for e in read_log(run, "eval"))
    assert not list(run.glob("checkpoint_wa_*.pt"))
