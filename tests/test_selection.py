"""The model-selection rules checked against picks computed independently in the test.

Unit tests feed ``SelectionTracker`` synthetic evaluation records with known answers (ties: the
first best wins; None scores are skipped; ``last`` is the latest) and compare it, and the
``selections`` of ``results_record``, with a plain loop over the records. The end-to-end test trains
once on ``tiny_reference`` with an evaluation and a full checkpoint every 2 steps, then checks
for every rule: results.json against a plain loop over metrics.jsonl, checkpoint_<rule>.pt
against the full checkpoint of the picked step, and ``debiaslab test --select RULE``.
"""

import json
import random

import pytest
import torch

from debiaslab.config import TrainConfig
from debiaslab.results import results_record
from debiaslab.selection import SELECTION_RULES, SelectionTracker
from tests.conftest import assert_same_tensors, quick_train_args, read_log, run_cli, run_test_cli

RULES = ("last", "best_valid", "best_valid_unbiased", "oracle_best_test")


# -- the rules, written again as a plain loop -----------------------------------------------------
def rule_score(rule: str, record: dict, dataset: str):
    """A record's score under a rule; oracle reads BFFHQ's conflicting, else unbiased, else accuracy."""
    if rule == "best_valid":
        return record["valid"]["accuracy"]
    if rule == "best_valid_unbiased":
        return record["valid"]["unbiased"]
    test = record["test"]
    headline = test["conflicting"] if dataset == "bffhq" else test["unbiased"]
    return test["accuracy"] if headline is None else headline


def picks_by_loop(records: list[dict], dataset: str) -> dict:
    """Each rule's picked record (first of the highest non-None scores; None if none), and last."""
    picks = {"last": records[-1] if records else None}
    for rule in RULES[1:]:
        best = None
        for r in records:
            s = rule_score(rule, r, dataset)
            if s is not None and (best is None or s > rule_score(rule, best, dataset)):
                best = r
        picks[rule] = best
    return picks


def improved_by_loop(records: list[dict], dataset: str) -> list[list[str]]:
    """For each record in turn, the rules whose pick becomes that record (a strictly higher score)."""
    out = []
    for i, r in enumerate(records):
        changed = []
        for rule in RULES[1:]:
            s = rule_score(rule, r, dataset)
            before = [rule_score(rule, q, dataset) for q in records[:i]]
            before = [b for b in before if b is not None]
            if s is not None and (not before or s > max(before)):
                changed.append(rule)
        out.append(changed)
    return out


def record(step, valid_acc, valid_unb, test_acc, test_unb, test_conf=None):
    return {
        "kind": "eval",
        "step": step,
        "valid": {"accuracy": valid_acc, "unbiased": valid_unb},
        "test": {"accuracy": test_acc, "unbiased": test_unb, "conflicting": test_conf},
    }


def track(records, dataset="cmnist"):
    tracker = SelectionTracker(dataset, list(RULES))
    improved = [tracker.update(r) for r in records]
    return tracker, improved


def assert_tracker_picks(tracker, records, dataset):
    """The tracker's pick of every rule is the loop's record (same step and content), or absent."""
    for rule, want in picks_by_loop(records, dataset).items():
        if want is None:
            assert rule not in tracker.best, rule
            continue
        got = tracker.best[rule]
        assert {k: v for k, v in got.items() if k != "score"} == {
            k: want[k] for k in ("step", "valid", "test")
        }, rule
        assert got["score"] == (None if rule == "last" else rule_score(rule, want, dataset)), rule


# -- unit tests on synthetic records -------------------------------------------------------------
TIES = [
    record(10, 0.50, 0.30, 0.60, 0.20),
    record(20, 0.70, 0.40, 0.55, 0.45),  # best valid accuracy, first of two
    record(30, 0.70, 0.40, 0.65, 0.45),  # ties step 20 on valid accuracy, valid unbiased and test
    record(40, 0.60, 0.35, 0.90, 0.10),
]  # last; best test accuracy but not best test unbiased


def test_ties_pick_the_first_best():
    tracker, improved = track(TIES)
    assert {r: tracker.best[r]["step"] for r in RULES} == {
        "last": 40,
        "best_valid": 20,
        "best_valid_unbiased": 20,
        "oracle_best_test": 20,
    }
    assert improved == [list(RULES[1:]), list(RULES[1:]), [], []]
    assert improved == improved_by_loop(TIES, "cmnist")
    assert_tracker_picks(tracker, TIES, "cmnist")


def test_a_later_higher_score_replaces_the_pick():
    records = TIES + [record(50, 0.71, 0.39, 0.50, 0.46)]
    tracker, improved = track(records)
    assert {r: tracker.best[r]["step"] for r in RULES} == {
        "last": 50,
        "best_valid": 50,
        "best_valid_unbiased": 20,
        "oracle_best_test": 50,
    }
    assert improved[-1] == ["best_valid", "oracle_best_test"]


def test_bias_free_data_never_picks_best_valid_unbiased():
    """No bias labels: valid unbiased is None (never picked) and the oracle reads test accuracy."""
    records = [
        record(s, acc, None, tacc, None)
        for s, acc, tacc in ((5, 0.4, 0.3), (10, 0.6, 0.8), (15, 0.6, 0.7))
    ]
    tracker, improved = track(records)
    assert "best_valid_unbiased" not in tracker.best
    assert {r: tracker.best[r]["step"] for r in ("last", "best_valid", "oracle_best_test")} == {
        "last": 15,
        "best_valid": 10,
        "oracle_best_test": 10,
    }
    assert (
        improved
        == [["best_valid", "oracle_best_test"]] * 2 + [[]]
        == improved_by_loop(records, "cmnist")
    )


def test_none_scores_are_skipped_not_compared():
    """A None between real scores neither wins nor resets the pick."""
    records = [
        record(1, 0.5, None, 0.5, None),
        record(2, 0.4, 0.2, 0.4, 0.1),
        record(3, 0.3, None, 0.3, None),
    ]
    tracker, improved = track(records)
    assert tracker.best["best_valid_unbiased"]["step"] == 2
    assert tracker.best["oracle_best_test"]["step"] == 1  # 0.5 (accuracy fallback) > 0.1 (unbiased)
    assert improved == [["best_valid", "oracle_best_test"], ["best_valid_unbiased"], []]
    assert_tracker_picks(tracker, records, "cmnist")


def test_bffhq_oracle_reads_conflicting():
    records = [
        record(1, 0.5, 0.5, 0.5, 0.9, test_conf=0.2),
        record(2, 0.5, 0.5, 0.5, 0.1, test_conf=0.3),
    ]
    tracker, _ = track(records, "bffhq")
    assert tracker.best["oracle_best_test"]["step"] == 2
    assert track(records, "cmnist")[0].best["oracle_best_test"]["step"] == 1


def random_records(rng: random.Random, n: int) -> list[dict]:
    """Scores from a few values (many ties) and some None, as bias-free splits give."""

    def score():
        return rng.choice([None, 0.25, 0.5, 0.5, 0.75])

    return [
        record(
            10 * (i + 1),
            rng.choice([0.25, 0.5, 0.75]),
            score(),
            rng.choice([0.25, 0.5]),
            score(),
            score(),
        )
        for i in range(n)
    ]


@pytest.mark.parametrize("dataset", ["cmnist", "bffhq"])
def test_random_records_match_plain_loop(dataset):
    rng = random.Random(0)
    for _ in range(200):
        records = random_records(rng, rng.randint(1, 8))
        tracker, improved = track(records, dataset)
        assert improved == improved_by_loop(records, dataset)
        assert_tracker_picks(tracker, records, dataset)


def expected_selection(r: dict) -> dict:
    """What results.json should hold for a picked record (CMNIST: test_primary is test unbiased)."""
    return {
        "step": r["step"],
        "valid": r["valid"],
        "test": r["test"],
        "test_primary": rule_score("oracle_best_test", r, "cmnist"),
    }


def test_results_selections_follow_the_picks():
    records = [
        record(10, 0.5, None, 0.4, None),
        record(20, 0.8, None, 0.6, 0.3),
        record(30, 0.8, None, 0.7, None),
        record(40, 0.6, None, 0.5, 0.2),
    ]
    tracker, _ = track(records)
    cfg = TrainConfig(dataset="cmnist", num_steps=40).resolved()
    data = {"counts": {"test": {"n": 4, "aligned": 2, "conflicting": 2}}}
    sel = results_record(cfg, tracker, data, 1.0, 2.0, [])["selections"]
    assert list(sel) == list(RULES)
    assert sel["best_valid_unbiased"] is None
    # best_valid: first 0.8 (step 20); oracle: 0.7 (step 30, accuracy fallback) beats 0.3 and 0.2
    expected = {"last": records[3], "best_valid": records[1], "oracle_best_test": records[2]}
    for rule, r in expected.items():
        assert sel[rule]["description"] == SELECTION_RULES[rule]
        assert {
            k: sel[rule][k] for k in ("step", "valid", "test", "test_primary")
        } == expected_selection(r)


# -- end to end: one short training run ----------------------------------------------------------
def test_run_selections_checkpoints_and_test_command(tiny_reference, tmp_path):
    logs = tmp_path / "log"
    # an evaluation and a kept full checkpoint every 2 steps. Seed 1: on this CPU build the best valid
    # accuracy is tied at steps 30, 32, 34, 40 and the best valid unbiased / test score at 24, 30, 32, 34,
    # 40, so the rules pick two steps before the last and a last-best tie-break would pick 40 (with
    # seed 0 every rule picks step 40, which would not tell first-best from last-best)
    every_2 = ["--valid_freq", "2", "--save_freq", "2", "--keep_checkpoints", "100", "--seed", "1"]
    r = run_cli(
        "train",
        "--dataset",
        "cmnist",
        "--percent",
        "1pct",
        "--exp",
        "sel",
        "--train_lff",
        *quick_train_args(tiny_reference, logs, *every_2),
    )
    assert r.returncode == 0, r.stderr
    run = logs / "cmnist" / "sel"
    evals = read_log(run, "eval")
    assert [e["step"] for e in evals] == list(range(2, 41, 2))
    selections = json.loads((run / "results.json").read_text())["selections"]
    picks = picks_by_loop(evals, "cmnist")
    assert_first_best_on_ties(evals, picks)
    for rule in RULES:
        check_rule(run, tiny_reference, rule, picks[rule], selections[rule])
    assert_picks_share_files(run, picks)


def assert_picks_share_files(run, picks):
    """Rules that picked the same step share one file; every distinct pick has its own."""
    picked = [r for r in RULES if r != "last" and (run / f"checkpoint_{r}.pt").exists()]
    inodes = {r: (run / f"checkpoint_{r}.pt").stat().st_ino for r in picked}
    for a in picked:
        for b in picked:
            same_pick = picks[a]["step"] == picks[b]["step"] and a.startswith(
                "wa_"
            ) == b.startswith("wa_")
            assert (inodes[a] == inodes[b]) == same_pick, (a, b)
    assert len(set(inodes.values())) < len(picked)  # this run has rules that tie on a step


def assert_first_best_on_ties(evals, picks):
    """Where several evaluations share a rule's best score, the earliest of them is picked."""
    for rule in RULES[1:]:
        scores = [rule_score(rule, e, "cmnist") for e in evals]
        tied = [e["step"] for e, s in zip(evals, scores) if s == max(scores)]
        print(
            f"{rule}: best {max(scores):.4f} at steps {tied}"
        )  # with -s: whether this run has ties
        assert picks[rule]["step"] == tied[0], rule


def check_rule(run, data, rule, pick, selection):
    expected = expected_selection(pick)
    assert {k: selection[k] for k in expected} == expected, rule
    ckpt = torch.load(run / f"checkpoint_{rule}.pt", map_location="cpu", weights_only=True)
    assert ckpt["step"] == pick["step"], rule
    full = full_checkpoint(run, pick["step"])
    assert full["step"] == pick["step"], rule
    if rule != "last":  # checkpoint_last.pt is itself the full checkpoint of the last step
        assert ckpt["kind"] == "models" and "rule" not in ckpt
        assert ckpt["metrics"] == {"valid": pick["valid"], "test": pick["test"]}
        assert_same_tensors(ckpt["models"], full["method_state"]["models"], rule)
    t = run_test_cli(run, data, "--select", rule, "--json")
    assert t.returncode == 0, t.stderr
    out = json.loads(t.stdout)
    assert out["step"] == pick["step"] and out["selection"] == rule, rule
    # pseudo_unbiased groups by the biased branch as it was during training: a selection-time score
    valid = {k: v for k, v in pick["valid"].items() if k != "pseudo_unbiased"}
    assert out["metrics"] == {"valid": valid, "test": pick["test"]}, rule


def full_checkpoint(run, step: int) -> dict:
    """The full checkpoint saved at ``step``: a kept checkpoint_step<N>.pt, else checkpoint_last.pt."""
    path = run / f"checkpoint_step{step}.pt"
    path = path if path.exists() else run / "checkpoint_last.pt"
    return torch.load(path, map_location="cpu", weights_only=True)


# -- label-free rules that smooth or fall back (replayed from hand-made logs) -------------------
def _pu_log(scores, n=5000):
    """An eval log whose validation pseudo-unbiased scores are ``scores``; the test score of the
    evaluation at step 100 * (i + 1) is i / 100, so a pick's test figure names its index."""
    return [
        {
            "kind": "eval",
            "step": 100 * (i + 1),
            "valid": {"accuracy": 0.9, "per_class": [0.9], "pseudo_unbiased": s, "n": n},
            "test": {"accuracy": i / 100, "per_class": [0.5], "unbiased": i / 100},
        }
        for i, s in enumerate(scores)
    ]


def _steps(log, *names):
    from debiaslab.selection import picks

    return {n: p["step"] for n, p in picks(log, "cmnist", list(names)).items()}


def test_or_last_falls_back_when_the_best_is_within_the_noise():
    # best .505 against last .50: 2 SE at n=5000 is 2 * sqrt(.25/5000) = .0141 -> last
    log = _pu_log([0.30, 0.505, 0.40, 0.50])
    assert _steps(log, "best_valid_pseudo_unbiased", "best_valid_pseudo_unbiased_or_last") == {
        "best_valid_pseudo_unbiased": 200,
        "best_valid_pseudo_unbiased_or_last": 400,
    }
    # the same gap on a split of 100 000 samples (2 SE = .0032) is no longer noise
    assert _steps(
        _pu_log([0.30, 0.505, 0.40, 0.50], n=100_000), "best_valid_pseudo_unbiased_or_last"
    ) == {"best_valid_pseudo_unbiased_or_last": 200}


def test_or_last_picks_the_best_when_it_beats_last_by_more_than_the_noise():
    log = _pu_log([0.30, 0.60, 0.40, 0.50])  # .10 over last, 2 SE = .014
    assert _steps(log, "best_valid_pseudo_unbiased_or_last") == {
        "best_valid_pseudo_unbiased_or_last": 200
    }


def test_mean5_picks_the_best_trailing_average_not_a_lone_spike():
    # a lone spike at step 200; a plateau of .6 from step 400 on: trailing means over 5
    scores = [0.2, 0.9, 0.2, 0.6, 0.6, 0.6, 0.6, 0.6, 0.5]
    log = _pu_log(scores)
    assert _steps(log, "best_valid_pseudo_unbiased", "best_valid_pseudo_unbiased_mean5") == {
        "best_valid_pseudo_unbiased": 200,
        "best_valid_pseudo_unbiased_mean5": 800,  # the first window of five .6 ends there
    }


def test_mean5_or_last_falls_back_and_picks():
    flat = _pu_log([0.5, 0.5, 0.51, 0.5, 0.5, 0.5, 0.5])  # best window .502 vs last's .50
    assert _steps(flat, "best_valid_pseudo_unbiased_mean5_or_last") == {
        "best_valid_pseudo_unbiased_mean5_or_last": 700
    }
    peak = _pu_log([0.5, 0.7, 0.7, 0.7, 0.7, 0.7, 0.5, 0.5, 0.5, 0.5, 0.5])
    assert _steps(peak, "best_valid_pseudo_unbiased_mean5_or_last") == {
        "best_valid_pseudo_unbiased_mean5_or_last": 600
    }


def test_a_smoothed_pick_is_saved_online_and_a_fallback_pick_is_not():
    tracker = SelectionTracker(
        "cmnist", ["best_valid_pseudo_unbiased_mean5", "best_valid_pseudo_unbiased_or_last"]
    )
    moved = [tracker.update(r) for r in _pu_log([0.3, 0.6, 0.1])]  # means .3 .45 .33
    assert moved == [["best_valid_pseudo_unbiased_mean5"]] * 2 + [[]]


@pytest.mark.parametrize(
    "rule,log,missing",
    [
        ("best_valid_pseudo_unbiased_mean5", _pu_log([None, None]), "pseudo_unbiased"),
        ("best_valid_pseudo_unbiased_or_last", _pu_log([0.5, 0.6], n=0), "sample count n"),
        ("wa_best_valid_pseudo_unbiased_mean5", _pu_log([0.5]), "weight-averaged model"),
    ],
)
def test_a_rule_asked_of_a_log_without_what_it_reads_is_a_one_line_error(rule, log, missing):
    from debiaslab.errors import UserError
    from debiaslab.selection import picks

    with pytest.raises(UserError, match=f"rule '{rule}'.*{missing}") as e:
        picks(log, "cmnist", [rule], strict=True)
    assert "\n" not in str(e.value)
    assert picks(log, "cmnist", [rule]) == {}  # replayed in bulk, the rule is absent, never a guess
