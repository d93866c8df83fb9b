"""``collect --choose`` with every label-free rule (issue 42: hyperparameters chosen without bias
labels): smoothed (``_mean5``) and fallback (``_or_last``) rules choose by their own score at
their pick, replayed from the runs' eval logs; a run whose log lacks what the rule reads is a
one-line error naming the rule and what is missing, never a setting left out in silence."""

import json
import re

import pytest

from debiaslab.collect import choose, collect, read
from debiaslab.errors import UserError
from debiaslab.selection import CHOOSE_RULES, LABEL_FREE, WA_PREFIX
from debiaslab.sweep import run_name
from tests.conftest import run_cli
from tests.test_sweep import fake_run


def _evaluation(pseudo, i, n=5000):
    valid = {"n": n, "accuracy": 0.99, "per_class": [0.99], "unbiased": 0.5}
    if pseudo is not None:
        valid["pseudo_unbiased"] = pseudo
    return {"valid": valid, "test": {"accuracy": 0.5, "per_class": [0.5], "unbiased": i / 100}}


def grid_run(root, scores, wa=None, recorded=None, **cfg):
    """A finished JTT run of ``cfg`` whose main-stage evaluation i (step 100 (i + 1)) has the
    validation pseudo-unbiased score ``scores[i]`` (``wa[i]`` for the averaged model) and the test
    score i / 100, so a pick's test figure names its index; an ERM-stage evaluation first, which
    no rule may pick. ``recorded``: selections results.json records (rule -> step)."""
    c = fake_run(root, method="jtt", values={"last": (len(scores) - 1) / 100}, **cfg)
    log = [{"kind": "eval", "stage": "erm", "step": 50, **_evaluation(1.0, 99)}]
    for i, s in enumerate(scores):
        record = {"kind": "eval", "step": 100 * (i + 1), **_evaluation(s, i)}
        if wa is not None:
            record["wa"] = _evaluation(wa[i], i)
        log.append(record)
    run = root / "cmnist" / run_name(c)
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log))
    if recorded:
        res = json.loads((run / "results.json").read_text())
        for rule, step in recorded.items():
            pick = log[step // 100]
            res["selections"][rule] = {
                "valid": pick["valid"],
                "test_primary": (step // 100 - 1) / 100,
            }
        (run / "results.json").write_text(json.dumps(res))
    return run


def chosen_row(text):
    rows = [line for line in text.splitlines() if "**chosen**" in line]
    assert len(rows) == 1, text
    return rows[0]


def test_every_label_free_rule_that_scores_validation_can_choose():
    scored = [n for n in LABEL_FREE if n != "last"]
    assert set(scored + [WA_PREFIX + n for n in scored]) <= set(CHOOSE_RULES)
    assert "last" not in CHOOSE_RULES and "oracle_best_test" not in CHOOSE_RULES


def test_a_smoothed_rule_chooses_by_its_average_not_a_lone_spike(tmp_path):
    """A spike of .9 in a run of .2 against a plateau of .6: the arg-max chooses the spike, the
    trailing mean over 5 evaluations the plateau; each setting's validation column is the score
    the rule maximised (the spike's window averages .55), replayed from the eval log."""
    spike, plateau = [0.2, 0.9, 0.2, 0.2, 0.2], [0.6] * 5
    grid_run(tmp_path, spike, wa=plateau, jtt_steps=1000)
    grid_run(tmp_path, plateau, wa=spike, jtt_steps=2000)
    raw = collect(str(tmp_path), choose="best_valid_pseudo_unbiased")
    assert "jtt_steps=1000 | 1 (0) | 90.00 | 1.00 | **chosen**" in chosen_row(raw)
    text = collect(str(tmp_path), choose="best_valid_pseudo_unbiased_mean5")
    assert "jtt_steps=2000 | 1 (0) | 60.00 | 0.00 | **chosen**" in chosen_row(text), text
    assert "jtt_steps=1000 | 1 (0) | 55.00 | 1.00 |  |" in text
    assert "the mean of the score over the 5 evaluations that end at the pick" in text
    wa = collect(str(tmp_path), choose="wa_best_valid_pseudo_unbiased_mean5")
    assert "jtt_steps=1000 | 1 (0) | 60.00 | 0.00 | **chosen**" in chosen_row(wa), wa


def test_a_recorded_smoothed_pick_is_scored_by_its_average_not_its_raw_score(tmp_path):
    """A run that recorded its mean5 pick (the spike's window, step 200) in results.json: the
    recorded pick holds the raw score there (.9); the rule maximised the window's mean (.55)."""
    recorded = {"best_valid_pseudo_unbiased_mean5": 200}
    grid_run(tmp_path, [0.2, 0.9, 0.2, 0.2, 0.2], recorded=recorded, jtt_steps=1000)
    grid_run(tmp_path, [0.6] * 5, jtt_steps=2000)
    text = collect(str(tmp_path), choose="best_valid_pseudo_unbiased_mean5")
    assert "jtt_steps=2000" in chosen_row(text) and "| 55.00 | 1.00 |  |" in text, text


def test_a_fallback_rule_chooses_by_the_score_of_the_evaluation_it_keeps(tmp_path):
    """A best of .505 within 2 standard errors of the last .50 falls back to the last: the setting
    scores .50 and loses to a flat .502, which the arg-max ranks under .505."""
    grid_run(tmp_path, [0.30, 0.505, 0.40, 0.50], jtt_steps=1000)
    grid_run(tmp_path, [0.502] * 4, jtt_steps=2000)
    raw = collect(str(tmp_path), choose="best_valid_pseudo_unbiased")
    assert "jtt_steps=1000 | 1 (0) | 50.50 | 1.00 | **chosen**" in chosen_row(raw)
    text = collect(str(tmp_path), choose="best_valid_pseudo_unbiased_or_last")
    assert "jtt_steps=2000 | 1 (0) | 50.20 | 3.00 | **chosen**" in chosen_row(text), text
    assert "jtt_steps=1000 | 1 (0) | 50.00 | 3.00 |  |" in text
    assert "where the rule falls back to the last evaluation, that evaluation's score" in text
    chosen = next(iter(choose(read(tmp_path), "best_valid_pseudo_unbiased_or_last").values()))
    assert chosen.chosen.identity["jtt_steps"] == 2000 and not chosen.provisional


@pytest.mark.parametrize(
    "rule,missing",
    [
        ("best_valid_pseudo_unbiased", "pseudo_unbiased"),
        ("best_valid_pseudo_unbiased_mean5", "pseudo_unbiased"),
        ("wa_best_valid_pseudo_unbiased_mean5", "weight-averaged model"),
    ],
)
def test_a_run_that_did_not_log_what_the_rule_reads_is_a_one_line_error(tmp_path, rule, missing):
    """A run without the pseudo-unbiased score (no biased branch, or a run from before the score)
    or without an averaged model, beside runs that have them: the rule refuses in one line naming
    the rule, the run and what is missing, instead of choosing among the others."""
    grid_run(tmp_path, [0.5, 0.6], wa=[0.5, 0.6], jtt_steps=1000)
    old = grid_run(tmp_path, [None, None], jtt_steps=2000)
    with pytest.raises(UserError, match=f"{rule}.*{missing}") as e:
        collect(str(tmp_path), choose=rule)
    assert "\n" not in str(e.value) and str(old) in str(e.value)
    assert re.search(r"1 finished run\(s\) here cannot be scored", str(e.value))


def test_a_run_without_an_eval_log_or_recorded_score_is_named(tmp_path):
    fake_run(tmp_path, method="jtt", values={"last": 0.3})
    with pytest.raises(UserError, match="recorded a best_valid_pseudo_unbiased_mean5 pick") as e:
        collect(str(tmp_path), choose="best_valid_pseudo_unbiased_mean5")
    assert "no eval log (metrics.jsonl)" in str(e.value) and "\n" not in str(e.value)


def test_the_command_line_takes_a_smoothed_rule(tmp_path):
    grid_run(tmp_path, [0.2, 0.9, 0.2, 0.2, 0.2], wa=[0.6] * 5, jtt_steps=1000)
    grid_run(tmp_path, [0.6] * 5, wa=[0.2] * 5, jtt_steps=2000)
    r = run_cli("collect", tmp_path, "--choose", "wa_best_valid_pseudo_unbiased_mean5")
    assert r.returncode == 0, r.stderr
    assert "jtt_steps=1000" in chosen_row(r.stdout)
