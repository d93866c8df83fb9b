"""Model-selection rules: which evaluation of a run each rule picks, and what labels it reads.

A rule scores one evaluation from ONE split's metrics (``Rule.split``) and picks the evaluation
with the highest score (the first one on ties). Label-free rules read the validation split's
class labels and nothing else: never the test split, never a bias label. Each rule also exists
for the weight-averaged model (``wa_`` prefix, see ``averaging``), scored on that model's
evaluation of the same step.

The same definitions serve the training loop (``SelectionTracker``, online, saving each rule's
checkpoint as its pick changes) and runs already on disk (``picks``, replayed from an eval log).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass

from debiaslab.errors import UserError


def _worst_class(metrics: dict, dataset: str) -> float:
    from debiaslab.metrics import (
        worst_class,
    )  # torch-free import of this module: the CLI lists rules

    return worst_class(metrics)


def _test_primary(metrics: dict, dataset: str) -> float:
    from debiaslab.metrics import primary_metric

    return primary_metric(metrics, dataset)


# The labels a selection (or a run's training) may read beyond the training split's class labels,
# in the order tables list them. A run records, per selection, which of these it read.
READS = {
    "train_bias_labels": "training BIAS labels",
    "valid_labels": "validation class labels",
    "valid_bias_labels": "validation BIAS labels",
    "test_labels": "TEST labels",
    "test_bias_labels": "TEST BIAS labels",
}
SPLITS = ("train", "valid", "test")
TEST_MARK, BIAS_MARK = "◊", "†"  # a figure that read test labels / bias labels


def _split_of(read: str) -> str:
    return read.split("_", 1)[0]


def _with_kind(split: str, read: str) -> str:
    return split + "_" + read.split("_", 1)[1]


def effective_reads(reads, data: dict | None) -> list[str] | None:
    """``reads`` as they fall on a run's data (its record: ``counts`` and ``sha256`` per split).

    A split used in two roles (two splits with one checksum, such as a validation split that is
    the test split) is read in both: reading one reads the other's labels too. A split without
    bias labels has none to read. None when the record lacks the checksums that decide it."""
    data = data or {}
    sha, counts = data.get("sha256") or {}, data.get("counts") or {}
    out = set()
    for read in reads:
        split = _split_of(read)
        if split != "train" and not sha.get(split):
            return None
        twins = [s for s in SPLITS if s == split or (sha.get(s) and sha.get(s) == sha.get(split))]
        for twin in twins:
            has_bias = "conflicting" in counts.get(twin, {"conflicting": 0})
            if "bias" not in read or has_bias:
                out.add(_with_kind(twin, read))
    return [r for r in READS if r in out]


def shared_splits(data: dict | None) -> list[tuple[str, str]]:
    """Pairs of a run's splits that hold the same images and labels (equal checksums)."""
    sha = (data or {}).get("sha256") or {}
    return [
        (a, b)
        for i, a in enumerate(SPLITS)
        for b in SPLITS[i + 1 :]
        if sha.get(a) and sha.get(a) == sha.get(b)
    ]


def marks(reads) -> str:
    """The marks of a figure that read these labels: ◊ test labels, † bias labels, ? unknown."""
    if reads is None:
        return "?"
    test = any(_split_of(r) == "test" for r in reads)
    bias = any("bias" in r for r in reads)
    return TEST_MARK * test + BIAS_MARK * bias


def reads_text(reads) -> str:
    """The labels ``reads`` names, in words ('no labels' when empty)."""
    if reads is None:
        return "unknown (the run recorded no data checksums)"
    return ", ".join(READS[r] for r in reads) or "no labels"


@dataclass(frozen=True)
class Rule:
    name: str
    split: str  # the only split whose metrics the score reads: "valid" or "test"
    reads: tuple[str, ...]  # the labels the rule reads (names of READS)
    description: str
    score: (
        Callable[[dict, str], float | None] | None
    )  # (split metrics, dataset) -> score; None: last
    # smoothing: an evaluation's score is the mean of the scores of it and the (window - 1)
    # evaluations before it that have one (fewer at the start of a run)
    window: int = 1
    # fall back to the latest evaluation unless the pick's score beats the latest one's by more
    # than this many binomial standard errors, sqrt(s (1 - s) / n), s the latest score and n the
    # split's logged sample count (``n``); None: a plain arg-max
    beats_last: float | None = None

    @property
    def online(self) -> bool:
        """Whether a training loop can keep this rule's model as its pick moves (a fallback rule
        can move back to an earlier pick, whose model was not kept: its figures are replayed)."""
        return self.beats_last is None

    def needs(self) -> str:
        """What the rule reads in each evaluation, in words (for the error of a run without it)."""
        if self.score is None:
            return "evaluation"
        what = f"{self.split} score for {self.name}"
        if "pseudo_unbiased" in self.name:
            what = (
                "validation pseudo_unbiased score (logged only for a method with a biased branch)"
            )
        return what + (" and validation sample count n" if self.beats_last else "")


RULES: dict[str, Rule] = {
    r.name: r
    for r in (
        Rule("last", "valid", (), "the model after the last training step", None),
        Rule(
            "best_valid",
            "valid",
            ("valid_labels",),
            "the evaluation with the highest validation accuracy",
            lambda m, ds: m["accuracy"],
        ),
        Rule(
            "best_valid_worst_class",
            "valid",
            ("valid_labels",),
            "the evaluation with the highest worst-class validation accuracy (the lowest accuracy of "
            "any class)",
            _worst_class,
        ),
        Rule(
            "best_valid_pseudo_unbiased",
            "valid",
            ("valid_labels",),
            "the evaluation with the highest pseudo-unbiased validation accuracy: the mean accuracy "
            "over (class, class the method's own biased branch predicts) cells; methods without a "
            "biased branch have none",
            lambda m, ds: m.get("pseudo_unbiased"),
        ),
        Rule(
            "best_valid_pseudo_unbiased_or_last",
            "valid",
            ("valid_labels",),
            "the evaluation with the highest pseudo-unbiased validation accuracy if that score beats "
            "the last evaluation's by more than 2 binomial standard errors (sqrt(s (1 - s) / n), s "
            "the last score, n the validation samples), else the last evaluation; replayed from the "
            "eval log (the training loop keeps no model of its pick)",
            lambda m, ds: m.get("pseudo_unbiased"),
            beats_last=2.0,
        ),
        Rule(
            "best_valid_pseudo_unbiased_mean5",
            "valid",
            ("valid_labels",),
            "the evaluation with the highest pseudo-unbiased validation accuracy averaged over it "
            "and the 4 evaluations before it (a trailing moving average over 5 evaluations)",
            lambda m, ds: m.get("pseudo_unbiased"),
            window=5,
        ),
        Rule(
            "best_valid_pseudo_unbiased_mean5_or_last",
            "valid",
            ("valid_labels",),
            "best_valid_pseudo_unbiased_mean5's pick if its averaged score beats the last "
            "evaluation's averaged score by more than 2 binomial standard errors, else the last "
            "evaluation; replayed from the eval log (the training loop keeps no model of its pick)",
            lambda m, ds: m.get("pseudo_unbiased"),
            window=5,
            beats_last=2.0,
        ),
        Rule(
            "best_valid_unbiased",
            "valid",
            ("valid_labels", "valid_bias_labels"),
            "the evaluation with the highest unbiased (group-balanced) validation accuracy",
            lambda m, ds: m["unbiased"],
        ),
        Rule(
            "oracle_best_test",
            "test",
            ("test_labels", "test_bias_labels"),
            "ORACLE: the evaluation with the highest test score (how the paper's numbers were "
            "selected); not a valid model-selection rule",
            _test_primary,
        ),
    )
}
LABEL_FREE = (
    "last",
    "best_valid",
    "best_valid_worst_class",
    "best_valid_pseudo_unbiased",
    "best_valid_pseudo_unbiased_or_last",
    "best_valid_pseudo_unbiased_mean5",
    "best_valid_pseudo_unbiased_mean5_or_last",
)
# the rules of collect's results tables unless asked for others (one table each)
TABLE_RULES = ("last", "best_valid", "best_valid_unbiased", "oracle_best_test")
WA_PREFIX = "wa_"


# The selection a run ships when none is asked for (results.json ``default_selection``, and what
# ``test``, ``report`` and the Python API use by default), per dataset: the first of these the run
# recorded, else ``last``. Moved from ``last`` only where docs/results/selection.md measured the
# averaged model, picked by its own pseudo-unbiased validation score averaged over 5 evaluations,
# better than the last step (and than the plain arg-max, which ships noise: scripts/selection_rules.py).
SHIPPED_SELECTIONS = {"cmnist": ("wa_best_valid_pseudo_unbiased_mean5", "wa_last")}


def default_selection(dataset: str, selections: dict) -> str:
    """The selection a run of ``dataset`` with these recorded ``selections`` (name -> pick or
    None) ships by default. Reads no test label and no bias label, like every rule it can name."""
    preferred = SHIPPED_SELECTIONS.get(dataset, ())
    return next((name for name in preferred if selections.get(name) is not None), "last")


# why a rule can pick nothing in a finished run
NO_PICK = {
    **{
        name: "the method has no biased branch to score with"
        for name in RULES
        if name.startswith("best_valid_pseudo_unbiased")
    },
    "best_valid_unbiased": "the validation split has no bias labels",
}


def picked_nothing(run: str, method: str, rule: str, picked: list[str]) -> str:
    """The message for asking a run for the pick of a rule that picked nothing in it."""
    why = NO_PICK.get(base_rule(rule).name, "no such metric on this data")
    return (
        f"rule {rule!r} picked nothing in {run}: {method} on this data has no score for it "
        f"({why}); choose one of {', '.join(picked)}"
    )


def shipped_selection(results: dict | None) -> str:
    """The selection a finished run recorded as its default (``last`` for runs from before)."""
    return (results or {}).get("default_selection") or "last"


def base_rule(name: str) -> Rule:
    """The rule a selection name uses, with or without the ``wa_`` prefix."""
    return RULES[name.removeprefix(WA_PREFIX)]


def selection_names(averaged: bool = True) -> list[str]:
    """Every selection a run records: each rule on the raw model, then on the averaged one."""
    return list(RULES) + ([WA_PREFIX + r for r in RULES] if averaged else [])


def describe(name: str) -> str:
    rule = base_rule(name)
    model = "the weight-averaged model: " if name.startswith(WA_PREFIX) else ""
    return f"{model}{rule.description}; reads {reads_text(rule.reads)}"


SELECTION_RULES = {name: describe(name) for name in selection_names()}
# the selections that maximise a validation score, so can also choose between settings
# (``collect --choose``): every rule that scores the validation split, smoothed and fallback
# forms included (their score at the pick is replayed from the eval log: the averaged score for a
# smoothed rule, the last evaluation's own score where a fallback rule fell back)
CHOOSE_RULES = [
    n for n in selection_names() if base_rule(n).split == "valid" and base_rule(n).score
]


def evaluation_of(record: dict, name: str) -> dict | None:
    """The evaluation (``{"valid", "test"}``) a selection scores in an eval record: the raw
    model's, or the averaged model's (``record["wa"]``, absent before averaging starts)."""
    return record.get("wa") if name.startswith(WA_PREFIX) else record


class SelectionTracker:
    """Keeps, for every selection, the evaluation it picks so far (first best wins ties).

    Smoothed rules keep their last ``window`` scores, fallback rules their best candidate, in
    ``best`` under ``_window`` and ``_candidate`` (so a resumed run keeps them); ``missing`` names,
    per rule, what an evaluation that had the rule's score lacked for it."""

    def __init__(self, dataset: str, names: list[str] | None = None):
        self.dataset = dataset
        self.names = names or selection_names()
        self.best: dict[str, dict] = {}
        self.missing: dict[str, str] = {}

    def update(self, record: dict) -> list[str]:
        """Returns the scored selections whose pick changed to this record (``last`` always
        moves to it, and is not listed: the loop keeps the last models by other means; nor are
        the rules that are not ``online``, whose models the loop does not keep)."""
        improved = []
        for name in self.names:
            evaluation, rule = evaluation_of(record, name), base_rule(name)
            if evaluation is None:
                continue
            if rule.score is None:
                self.best[name] = {"score": None, "step": record["step"], **_metrics(evaluation)}
                continue
            value = rule.score(evaluation[rule.split], self.dataset)
            if value is None:
                continue
            if rule.window > 1:
                window = self.best.setdefault("_window", {}).setdefault(name, [])
                window.append(value)
                del window[: -rule.window]
                value = statistics.fmean(window)
            entry = {"score": value, "step": record["step"], **_metrics(evaluation)}
            if rule.beats_last is not None:
                self._fall_back(name, rule, entry, evaluation[rule.split].get("n"))
            elif name not in self.best or value > self.best[name]["score"]:
                self.best[name] = entry
                improved.append(name)
        return improved

    def _fall_back(self, name: str, rule: Rule, latest: dict, n: int | None) -> None:
        """A fallback rule's pick: its best candidate if that beats ``latest`` by the margin."""
        if not n:
            self.missing[name] = "the validation sample count n"
            return
        candidates = self.best.setdefault("_candidate", {})
        if name not in candidates or latest["score"] > candidates[name]["score"]:
            candidates[name] = latest
        s = latest["score"]
        margin = rule.beats_last * math.sqrt(max(s * (1 - s), 0.0) / n)
        best = candidates[name]
        self.best[name] = best if best["score"] - s > margin else latest

    def picks(self) -> dict[str, dict]:
        """Each selection's pick (selections that picked nothing absent)."""
        return {n: self.best[n] for n in self.names if n in self.best}


def _metrics(evaluation: dict) -> dict:
    return {"valid": evaluation["valid"], "test": evaluation["test"]}


def picks(
    records: list[dict], dataset: str, names: list[str] | None = None, strict: bool = False
) -> dict[str, dict]:
    """What each selection picks among a run's main-stage eval records (an eval log replayed).

    ``strict``: a selection asked of a log that lacks what its rule reads (no score in any
    evaluation, or no sample count for a fallback rule) is a UserError naming the rule and what
    is missing, not an absent pick."""
    tracker = SelectionTracker(dataset, names)
    for record in records:
        if record.get("kind", "eval") == "eval" and "stage" not in record:
            tracker.update(record)
    chosen = tracker.picks()
    if strict:
        for name in tracker.names:
            if name not in chosen or name in tracker.missing:
                what = tracker.missing.get(name) or base_rule(name).needs()
                if name.startswith(WA_PREFIX) and not any("wa" in r for r in records):
                    what = "evaluation of a weight-averaged model (wa)"
                raise UserError(
                    f"rule {name!r} cannot be replayed on this run: its eval log (metrics.jsonl) "
                    f"has no {what}"
                )
    return chosen


# ----------------------------------------------------------------------- what a figure read
def selection_reads(name: str, data: dict | None) -> list[str] | None:
    """The labels selection ``name`` reads on a run's data (``effective_reads`` of its rule)."""
    return effective_reads(base_rule(name).reads, data)


def training_reads(results: dict) -> list[str] | None:
    """The labels a finished run's training read beyond its training class labels: as recorded
    (``training_reads``), else, for runs from before, what its method and config read today."""
    if "training_reads" in results:
        return results["training_reads"]
    from debiaslab.config import TrainConfig  # torch-free callers of this module stay so
    from debiaslab.methods import METHODS

    config = results.get("config") or {}
    method = METHODS.get(config.get("method"))
    if method is None:
        return None
    return effective_reads(method.training_reads(TrainConfig.from_saved(config)), results["data"])


def figure_reads(results: dict, name: str) -> list[str] | None:
    """Everything the figure of selection ``name`` of a finished run read: the selection's own
    reads (as recorded, else from its rule and the recorded checksums) and its training's.
    None when that cannot be told (a record without checksums)."""
    picked = (results.get("selections") or {}).get(name) or {}
    own = picked.get("reads")
    if own is None:
        own = selection_reads(name, results.get("data"))
    trained = training_reads(results)
    if own is None or trained is None:
        return None
    return [r for r in READS if r in {*own, *trained}]


def read_reasons(results: dict) -> list[str]:
    """Why every figure of a finished run reads more than its rule does, in words: splits that
    are one split in two roles, and what its training read."""
    out = [
        f"the {a} split is the {b} split (same sha256), so what reads {a} labels reads {b} labels"
        for a, b in shared_splits(results.get("data"))
    ]
    trained = training_reads(results)
    if trained is None:
        out.append("what its training read is unknown")
    elif trained:
        out.append(f"its training read {reads_text(trained)}")
    return out
