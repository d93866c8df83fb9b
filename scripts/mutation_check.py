"""Do the tests see a broken behaviour? Each mutation below breaks one checked behaviour of the
source (the cell average, a selection rule's tie-break, a flag not passed to the method, the bias
labels used in training, ...); the tests that check it must then fail. The file is put back
after each run, also on an interrupt.

    python scripts/mutation_check.py            # every mutation (about 14 minutes on 2 cores)
    python scripts/mutation_check.py lambda     # those whose name contains "lambda"

Prints CAUGHT or MISSED per mutation; exits 1 if any was missed.
"""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MUTATIONS = [  # (name, file, text, its replacement, the tests that must then fail)
    (
        "metrics: unbiased as sample-weighted mean",
        "src/debiaslab/metrics.py",
        "return float(cell_acc.mean()), float(cell_acc.min())",
        "return float(hits[filled].sum() / total[filled].sum()), float(cell_acc.min())",
        "tests/test_metrics.py",
    ),
    (
        "metrics: worst group over classes",
        "src/debiaslab/metrics.py",
        '    out["unbiased"], out["worst_group"] = cell_mean_accuracy(correct, targets, biases, num_classes)\n',
        '    out["unbiased"] = cell_mean_accuracy(correct, targets, biases, num_classes)[0]\n'
        '    out["worst_group"] = float(min(p for p in per_class if p is not None))\n',
        "tests/test_metrics.py",
    ),
    (
        "selection: last best on ties",
        "src/debiaslab/selection.py",
        'value > self.best[name]["score"]',
        'value >= self.best[name]["score"]',
        "tests/test_selection.py",
    ),
    (
        "cli: flags not copied into the config",
        "src/debiaslab/cli/train.py",
        "given = {name: value for name, value in vars(args).items() if name in fields}",
        "given = {}",
        "tests/test_methods.py",
    ),
    (
        "cli: a method's own flag not read into its field",
        "src/debiaslab/cli/train.py",
        "g.add_argument(*flags, dest=o.name,",
        'g.add_argument(*flags, dest=o.name + "_flag",',
        "tests/test_options.py",
    ),
    (
        "disent: lambda_swap_align ignored",
        "src/debiaslab/methods/disent.py",
        "cfg.lambda_swap_align * loss_swap_align",
        "loss_swap_align",
        "tests/test_methods.py",
    ),
    (
        "train: bias labels as training labels",
        "src/debiaslab/train.py",
        "return x, torch.index_select(split.targets, 0, idx), idx",
        "return x, torch.index_select(split.biases, 0, idx), idx",
        "tests/test_claims.py::test_training_never_reads_bias_labels",
    ),
    (
        "fused: bias labels as training labels",
        "src/debiaslab/group.py",
        "ys = torch.stack([torch.index_select(s.targets, 0, idx) for s, idx in zip(splits, idxs)])",
        "ys = torch.stack([torch.index_select(s.biases, 0, idx) for s, idx in zip(splits, idxs)])",
        "tests/test_fused.py::test_fused_mlp_runs_end_bit_for_bit_where_lone_runs_end[vanilla-kw0]",
    ),
    (
        "base: skipped steps not counted by the schedule",
        "src/debiaslab/methods/base.py",
        "        self._schedule(step)\n",
        "        if bool(applied):\n            self._schedule(step)\n",
        "tests/test_faults.py::test_skipped_steps_still_count_in_the_lr_schedule",
    ),
    (
        "runs: --overwrite ignored",
        "src/debiaslab/runs.py",
        "    if run.is_empty() or cfg.overwrite:\n",
        "    if run.is_empty():\n",
        "tests/test_claims.py::test_overwrite_replaces_a_different_run_and_retrains_an_identical_one",
    ),
    (
        "train: --no_best_checkpoints ignored",
        "src/debiaslab/train.py",
        'moved = improved + ["wa_last"] * last_average if cfg.best_checkpoints else []',
        'moved = improved + ["wa_last"] * last_average',
        "tests/test_claims.py::test_no_best_checkpoints_writes_only_the_last_and_test_says_so",
    ),
    (
        "groupdro: weights move away from the worst group",
        "src/debiaslab/methods/groupdro.py",
        "q = q * torch.exp(eta * group_loss)",
        "q = q * torch.exp(-eta * group_loss)",
        "tests/test_stages.py::test_group_means_and_the_weight_update_by_hand",
    ),
    (
        "jtt: error set of the right answers",
        "src/debiaslab/methods/jtt.py",
        "logits.argmax(1) != data.targets",
        "logits.argmax(1) == data.targets",
        "tests/test_stages.py::test_jtt_error_set_is_what_the_first_model_gets_wrong_and_is_upsampled",
    ),
    (
        "stages: selection rules also score earlier stages",
        "src/debiaslab/train.py",
        '            if main:\n                with self.timed("best_checkpoints"):\n',
        '            if True:\n                with self.timed("best_checkpoints"):\n',
        "tests/test_stages.py::test_jtt_through_train_and_test",
    ),
    (
        "be: tau not strict",
        "src/debiaslab/methods/bias_ensemble.py",
        "return (probs > tau).sum(0) >= agreement",
        "return (probs >= tau).sum(0) >= agreement",
        "tests/test_be.py::test_a_probability_equal_to_tau_does_not_count",
    ),
    (
        "be: biased branch on every sample",
        "src/debiaslab/methods/bias_ensemble.py",
        "return masked_mean(ce_b, self.aligned[idx])",
        "return ce_b.mean()",
        "tests/test_be.py::test_lff_be_main_stage_matches_a_loop_reimplementation",
    ),
    (
        "be: swap term masked by the wrong sample",
        "src/debiaslab/methods/disent.py",
        "idx_b = idx[perm]",
        "idx_b = idx",
        "tests/test_be.py::test_disent_be_bias_terms_use_the_sample_the_bias_features_come_from",
    ),
    (
        "be: last best on ties",
        "src/debiaslab/methods/bias_ensemble.py",
        'accuracy > self.best["valid"]',
        'accuracy >= self.best["valid"]',
        "tests/test_be.py::test_best_valid_model_is_kept_first_best_wins",
    ),
    (
        "be: best model not put back",
        "src/debiaslab/methods/bias_ensemble.py",
        '            model.load_state_dict(self.best["state"])\n',
        "",
        "tests/test_be.py::test_best_valid_model_is_kept_first_best_wins",
    ),
    (
        "be: aux stages count in the LR schedule",
        "src/debiaslab/methods/bias_ensemble.py",
        "if self._main() and self.schedulers and step >= self.cfg.curr_step:",
        "if self.schedulers and step >= self.cfg.curr_step:",
        "tests/test_be.py::test_each_model_moves_only_in_its_own_stage_and_the_vote_is_that_of_the_kept_models",
    ),
    (
        "cache: read-only folder not detected",
        "src/debiaslab/data/reference.py",
        "if os.access(base, os.W_OK):",
        "if True:",
        "tests/test_claims.py::test_read_only_data_folder_caches_under_xdg_cache_home",
    ),
    (
        "identity: a run's data checksums dropped from the reuse check",
        "src/debiaslab/runs.py",
        '    _check_same_data(run, (record.get("data") or {}).get("sha256"), checksums)\n',
        "",
        "tests/test_misuse.py::test_other_data_under_the_same_name_trains_a_new_run "
        "tests/test_misuse.py::test_a_finished_cli_run_is_not_reused_when_its_folder_data_changed",
    ),
    (
        "identity: fit's default folder without the data's id",
        "src/debiaslab/api.py",
        'data_part = f"-{data_id(data.checksums())}" if isinstance(data, DatasetBundle) else ""',
        'data_part = ""',
        "tests/test_misuse.py::test_other_data_under_the_same_name_trains_a_new_run",
    ),
    (
        "checks: labels not checked against num_classes",
        "src/debiaslab/data/checks.py",
        "        outside = (labels < 0) | (labels >= num_classes)\n",
        "        outside = labels < 0\n",
        "tests/test_misuse.py",
    ),
    (
        "lc: partners from the majority",
        "src/debiaslab/methods/lc.py",
        "    minority = a != y\n    candidates",
        "    minority = a == y\n    candidates",
        "tests/test_lc_authors.py",
    ),
    (
        "lc: lambda without its ramp",
        "src/debiaslab/methods/lc.py",
        "return 0.5 * math.exp(-5.0 * (1.0 - min(step, curr_step) / curr_step) ** 2)",
        "return 0.5",
        "tests/test_lc_authors.py",
    ),
    (
        "lc: a cell's first visit folded into the empty table",
        "src/debiaslab/methods/lc.py",
        "torch.where(first_ever, 1.0, 1.0 - ema)",
        "torch.where(first_ever, 1.0 - ema, 1.0 - ema)",
        "tests/test_lc_authors.py",
    ),
    (
        "lc: the log floored at 1e-12",
        "src/debiaslab/methods/lc.py",
        "DELTA_FLOOR = 1e-4",
        "DELTA_FLOOR = 1e-12",
        "tests/test_lc_authors.py",
    ),
    (
        "lc: the biased network at the full lr",
        "src/debiaslab/methods/lc.py",
        "BIASED_LR_FACTOR = 0.1",
        "BIASED_LR_FACTOR = 1.0",
        "tests/test_lc_authors.py",
    ),
    (
        "groupdro: uniform batches",
        "src/debiaslab/methods/groupdro.py",
        "return balanced_probabilities(self.groups, self.num_groups)",
        "return None",
        "tests/test_stages.py",
    ),
    (
        "groupdro: sgd without momentum",
        "src/debiaslab/methods/groupdro.py",
        "SGD_MOMENTUM = 0.9",
        "SGD_MOMENTUM = 0.0",
        "tests/test_stages.py",
    ),
    (
        "config: an unhashed option hashed at its default",
        "src/debiaslab/config.py",
        "and not (k in UNHASHED_DEFAULTS and d[k] == UNHASHED_DEFAULTS[k])",
        "",
        "tests/test_stages.py",
    ),
    (
        "collect: --choose ranks settings by their test score",
        "src/debiaslab/collect/aggregates.py",
        "id(c): statistics.fmean(100 * r.valid_scores[rule] for r in done)",
        "id(c): statistics.fmean(100 * r.values[rule] for r in done)",
        "tests/test_sweep.py",
    ),
    (
        "selection: a validation split that is the test split read as validation only",
        "src/debiaslab/selection.py",
        "twins = [s for s in SPLITS if s == split or (sha.get(s) and sha.get(s) == sha.get(split))]",
        "twins = [split]",
        "tests/test_reads.py",
    ),
    (
        "collect: runs of two builds averaged in one cell",
        "src/debiaslab/collect/runs.py",
        "key = (core, rec.data_sha)",
        "key = (core, ())",
        "tests/test_sweep.py::test_collect_never_averages_runs_of_two_builds",
    ),
    (
        "collect: the shipped figure recomputed from today's default",
        "src/debiaslab/collect/runs.py",
        "rec.shipped, rec.today = shipped_selection(res), default_selection(dataset, rec.values)",
        "rec.shipped = rec.today = default_selection(dataset, rec.values)",
        "tests/test_reads.py",
    ),
    (
        "collect: a run committed twice counted twice",
        "src/debiaslab/collect/runs.py",
        "    if key in found:\n",
        "    if False:\n",
        "tests/test_reads.py",
    ),
    (
        "docs: a figure of a page drifts from what its command prints",
        "docs/results/selection.md",
        "Over the 28 preset cells whose shipped figures",
        "Over the 29 preset cells whose shipped figures",
        "tests/test_doc_figures.py",
    ),
    (
        "presets: JTT's Colored MNIST pair drifts from its committed rows",
        "src/debiaslab/presets.py",
        'JTT_CMNIST = {"jtt_steps": 500, "jtt_upweight": 20}',
        'JTT_CMNIST = {"jtt_steps": 500, "jtt_upweight": 100}',
        "tests/test_sweep.py::test_committed_rows_are_what_todays_presets_train",
    ),
    (
        "jtt: error samples drawn lambda_up times",
        "src/debiaslab/methods/jtt.py",
        'extra = self.cfg.jtt_upweight - (self.cfg.jtt_error_draws == "upweight")',
        "extra = self.cfg.jtt_upweight - 1",
        "tests/test_stages.py",
    ),
    (
        "bias ensemble: an aux stage's last state a candidate",
        "src/debiaslab/methods/bias_ensemble.py",
        "return tuple(s for s in AUTHORS_CANDIDATES if s <= stage.steps)",
        "return tuple(s for s in AUTHORS_CANDIDATES if s <= stage.steps) + (stage.steps,)",
        "tests/test_be.py",
    ),
    (
        "denetdm: the shared classifier not handed to the target",
        "src/debiaslab/methods/denetdm.py",
        'self.models["model"].fc.load_state_dict(self.models["shallow"].fc.state_dict())',
        "pass",
        "tests/test_denetdm.py",
    ),
    (
        "denetdm: stage 2 without the deep features",
        "src/debiaslab/methods/denetdm.py",
        "poe = mean_ce(target.fc(z_target + z_deep), y)",
        "poe = mean_ce(target.fc(z_target), y)",
        "tests/test_denetdm.py",
    ),
    (
        "denetdm: the oracle's stage-1 pick not put back",
        "src/debiaslab/methods/denetdm.py",
        'self.models[n].load_state_dict(self.stage1_best["state"][n])',
        "pass",
        "tests/test_denetdm.py",
    ),
    (
        "checkpoints: rules of one pick written apart",
        "src/debiaslab/checkpoints.py",
        "_link_over(first, run.checkpoint(rule))",
        "atomic_torch_save(torch.load(first, weights_only=True), run.checkpoint(rule))",
        "tests/test_selection.py",
    ),
    (
        "fusion bypassed: FusedLoop._fuse returns None",
        "src/debiaslab/group.py",
        "    def _fuse(self):\n",
        "    def _fuse(self):\n        return None\n",
        "tests/test_fused.py::test_fused_mlp_runs_end_bit_for_bit_where_lone_runs_end[vanilla-kw0] "
        "tests/test_fused.py::test_fused_steps_add_up_over_resumes",
    ),
    (
        "fused: one Adam kernel bypassed",
        "src/debiaslab/fused.py",
        "return cls(calls) if calls else None",
        "return None",
        "tests/test_fused.py::test_runs_of_one_learning_rate_step_adam_as_one_kernel_bit_for_bit_as_alone",
    ),
]


def caught(file: str, old: str, new: str, tests: str) -> tuple[bool, str]:
    """Whether ``tests`` fail with ``old`` replaced by ``new`` in ``file`` (restored afterwards)."""
    path = ROOT / file
    source = path.read_text()
    if source.count(old) != 1:
        raise SystemExit(
            f"{file}: the text to mutate occurs {source.count(old)} times, not once: {old!r}"
        )
    mutated = source.replace(old, new)
    path.write_text(mutated)
    try:
        r = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests.split()],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=900,
        )
    finally:
        restore(path, source, mutated, old, new)
    lines = r.stdout.strip().splitlines()
    return r.returncode != 0, lines[-1] if lines else r.stderr[-200:]


def restore(path: Path, source: str, mutated: str, old: str, new: str) -> None:
    """Put ``old`` back in ``path``. Where the file was edited while the tests ran (someone else
    working in the tree), only the mutated text is turned back, so their edits stay; where that
    cannot be found, the file is left as it is and a line says so."""
    current = path.read_text()
    if current == mutated:
        path.write_text(source)
    elif new and current.count(new) == 1:
        path.write_text(current.replace(new, old))
    else:
        print(
            f"{path}: changed while the tests ran; left as it is, check for {new!r}",
            file=sys.stderr,
        )


def main(only: list[str]) -> int:
    missed = 0
    for name, file, old, new, tests in MUTATIONS:
        if only and not any(o in name for o in only):
            continue
        ok, summary = caught(file, old, new, tests)
        missed += not ok
        print(f"{'CAUGHT' if ok else 'MISSED'}  {name}: {summary}", flush=True)
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
