"""One method-agnostic training loop: sampling, steps, evaluation cadence, checkpoints, logging.

Its parts live beside it: ``loop.run_steps`` steps it (and a fused group, ``group.FusedLoop``),
``runs`` makes a run's folder ready (fresh, resumed or done) and marks it failed,
``step_evaluation`` evaluates the models at a step, ``results`` says what results.json holds,
``sigterm`` turns SIGTERM into a resumable stop; ``rundir.RunDir`` is the folder's format.
"""

from __future__ import annotations

import contextlib
import math
import time
from pathlib import Path

import torch

from debiaslab import checkpoints
from debiaslab.accelerate import capture_graphs, compile_compute
from debiaslab.averaging import DEFAULT_DECAY, WeightAverage
from debiaslab.config import TrainConfig
from debiaslab.data.sampler import EpochSampler
from debiaslab.data.splits import DatasetBundle, Split
from debiaslab.diagnostics import flagged_report, save_w_snapshot, snapshot_steps
from debiaslab.errors import UserError
from debiaslab.logging import RunLogger, StepWindow
from debiaslab.loop import run_steps
from debiaslab.methods import METHODS
from debiaslab.methods.base import StageData, StagePlan
from debiaslab.metrics import primary_metric
from debiaslab.preflight import setting_warnings
from debiaslab.prepare import (
    hardware,
    make_transform,
    prepare_split,
    seed_everything,
    uses_cuda_extras,
)
from debiaslab.results import data_info, results_record
from debiaslab.rundir import RunDir
from debiaslab.runs import bias_labels_for, marked_failed_on_error, open_run
from debiaslab.selection import (
    WA_PREFIX,
    SelectionTracker,
    effective_reads,
    selection_names,
    shared_splits,
)
from debiaslab.sigterm import Stop, sigterm_as_exit
from debiaslab.step_evaluation import evaluate_all, save_pick
from debiaslab.version import __version__

# Where --compile is on by default: only where benchmarks/steps_per_second.py measured it faster
# (docs/speed.md). CPU: not faster for Vanilla or DisEnt on CMNIST (LfF +30%), and 5-20 s more
# start-up, so off. CUDA: off until measured there.
COMPILE_DEFAULT = {"cpu": False, "cuda": False}
# The loop's work outside the steps, timed (results.json "boundary_seconds"): evaluating, saving
# the models a selection rule picked, and writing the resumable full checkpoint.
BOUNDARY_PARTS = ("evaluation", "best_checkpoints", "full_checkpoints")


def make_average(cfg: TrainConfig, method) -> WeightAverage | None:
    """The EMA of the models ``predict`` reads (None under ``--wa_decay 0``)."""
    decay = DEFAULT_DECAY if cfg.wa_decay is None else cfg.wa_decay
    if decay == 0:
        return None
    start = type(method).average_start(cfg) if cfg.wa_start is None else cfg.wa_start
    return WeightAverage({n: method.models[n] for n in type(method).model_names}, decay, start)


def train(
    cfg: TrainConfig, bundle: DatasetBundle | None = None, progress_desc: str | None = None
) -> dict:
    """Train ``cfg.method`` and return the results dict written to ``<run_dir>/results.json``."""
    opened = open_run(cfg, bundle)
    if opened.done is not None:
        return opened.done
    with marked_failed_on_error([opened.run_dir]):
        with sigterm_as_exit():
            return _train(
                opened.cfg,
                opened.bundle,
                opened.device,
                opened.run_dir,
                progress_desc,
                opened.state,
            )


def _end_stage(method, stage, stage_data: StageData, train_split: Split, logger, done: int) -> None:
    """Run the method's end-of-stage hook (in eval mode) and log what it singled out."""
    method.eval()
    method.end_stage(stage, stage_data)
    method.train()
    flagged = method.flagged_conflicting()
    if flagged is None:
        return
    record = {"kind": "stage_end", "step": done, "stage": stage.name, "flagged": int(flagged.sum())}
    if train_split.biases is not None:  # bias labels read for this log only, never for training
        record.update(flagged_report(flagged, train_split.targets != train_split.biases))
    logger.log(record)


def _train(cfg, bundle, device, run_dir: Path, progress_desc, state: dict | None = None) -> dict:
    t_start = time.time()
    loop = TrainingLoop(cfg, bundle, device, run_dir)
    loop.write_config()
    loop.restore(state)
    train_seconds = run_steps(loop, progress_desc)
    results = loop.results(train_seconds, time.time() - t_start)
    loop.folder.write_results(results)
    return results


class TrainingLoop:
    """One run: the objects it is made of (built in a fixed order, as the seeds decide them), the
    loop over its steps, and what it does at a boundary (log, evaluate, select, save)."""

    def __init__(
        self, cfg: TrainConfig, bundle: DatasetBundle, device: torch.device, run_dir: Path
    ):
        self.cfg, self.device, self.run_dir = cfg, device, run_dir
        self.folder = RunDir(run_dir)  # its files, as the run folder's format names them
        seed_everything(cfg.seed)
        self.train_split, self.valid_split, self.test_split = (
            prepare_split(getattr(bundle, n), cfg, device) for n in ("train", "valid", "test")
        )
        self.num_classes = bundle.num_classes
        self.method_cls = METHODS[cfg.method]
        self.method = self._build_method(bundle.name)
        gen_device = device if device.type == "cuda" else torch.device("cpu")
        generator = torch.Generator(device=gen_device).manual_seed(cfg.seed + 2)
        self.transform = make_transform(cfg, generator, device)
        n, sampler_generator = len(self.train_split), torch.Generator().manual_seed(cfg.seed + 3)
        self.sampler = EpochSampler(n, cfg.batch_size, sampler_generator, device)
        self.average = make_average(cfg, self.method)
        self.tracker = SelectionTracker(cfg.dataset, selection_names(self.average is not None))
        self.plan = StagePlan(self.method_cls.stages(cfg))
        self.stage_evaluations = [
            self.method_cls.stage_evaluation_steps(cfg, s) for s in self.plan.stages
        ]
        self.stage_data = StageData(
            self.train_split.images,
            self.train_split.targets,
            self.transform.eval,
            cfg.eval_batch_size,
        )
        self.data_info = data_info(bundle)
        self.compiled = compile_step(cfg, device)
        self.graphed = capture_step(cfg, device, self.method)
        self.window, self.start, self.skipped, self.seconds_before = StepWindow(), 0, [], 0.0
        self.last_saved: int | None = None
        self.fused_with: list[str] = []  # the other runs of its fused group (none: alone)
        # its steps taken inside a fused step, as the step marked them (StepOutput.fused): what
        # results.json's fused_with rests on, not the group the run was put in
        self.fused_steps = 0
        # where the loop's time goes besides the steps: the figures that say what bounds a run
        self.boundary_seconds = dict.fromkeys(BOUNDARY_PARTS, 0.0)
        self.w_steps = {
            self.plan.main_start + s for s in snapshot_steps(cfg.num_steps, cfg.valid_freq)
        }

    def _build_method(self, dataset_name: str):
        cfg, split, device = self.cfg, self.train_split, self.device
        _, channels_last = uses_cuda_extras(cfg, device)
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        in_shape = tuple(split.images.shape[1:])
        models = {
            n: m.to(device, memory_format=memory_format)
            for n, m in self.method_cls.build_models(cfg, self.num_classes, in_shape).items()
        }
        gen_device = device if device.type == "cuda" else torch.device("cpu")
        generator = torch.Generator(device=gen_device).manual_seed(cfg.seed + 1)
        bias_labels = bias_labels_for(self.method_cls, split, dataset_name)
        return self.method_cls(
            cfg, models, split.targets, self.num_classes, generator, **bias_labels
        )

    def label_record(self) -> dict:
        """What training reads beyond the training class labels, for config.json and
        results.json: ``training_reads`` (as it falls on this data, see ``effective_reads``) and
        the splits that are one split in two roles."""
        reads = effective_reads(self.method_cls.training_reads(self.cfg), self.data_info)
        return {
            "uses_bias_labels_in_training": "train_bias_labels" in reads,
            "reads_test_labels_in_training": any(r.startswith("test_") for r in reads),
            "training_reads": reads,
            "shared_splits": [list(pair) for pair in shared_splits(self.data_info)],
        }

    def write_config(self) -> None:
        self.folder.write_config(
            {
                "config": self.cfg.to_dict(),
                "data": self.data_info,
                "debiaslab": __version__,
                "torch": torch.__version__,
                "device": str(self.device),
                "torch_threads": torch.get_num_threads(),
                "hardware": hardware(self.device),
                **self.label_record(),
                "warnings": setting_warnings(self.cfg),  # settings its steps never reach
                "in_shape": list(
                    self.train_split.images.shape[1:]
                ),  # what the models were built for
                "compiled": self.compiled,
                "cuda_graph": self.graphed,
                "bf16": self.method.amp,  # the step and evaluations ran under bf16 autocast
                **({"fused_with": self.fused_with} if self.fused_with else {}),
            },
        )

    def enter_stage(self, k: int) -> None:
        self.method.begin_stage(self.plan.stages[k], self.stage_data)
        self.sampler.use_counts(self.method.sample_counts())
        self.sampler.use_weights(self.method.sample_probabilities())

    def restore(self, state: dict | None, accelerate: bool = True) -> None:
        """Put a checkpoint's state back (None: a fresh run), then open the log. ``accelerate``:
        compile or capture the method's own step as configured (a fused group does its own)."""
        if state is None:
            self.enter_stage(0)
        else:
            self.method.load_state_dict(state["method_state"])
            self.enter_stage(self.plan.index(state["step"]))
            self.sampler.load_state_dict(state["sampler"])
            self.transform.generator.set_state(state["transform_generator"])
            self.tracker.best = state["tracker"]
            sums = {k: v.to(self.device) for k, v in state["log_sums"].items()}
            self.window = StepWindow(sums, state["log_count"])
            self.start, self.skipped = state["step"], list(state["skipped"])
            self.seconds_before, self.last_saved = state["train_seconds"], state["step"]
            self.boundary_seconds.update(state.get("boundary_seconds", {}))
            self.restore_fusion(state)
            # a checkpoint from before weight averaging holds none: the average starts afresh
            if self.average is not None and "average" in state:
                self.average.load_state_dict(state["average"])
        if self.compiled and accelerate:
            compile_compute(self.method)
        if self.graphed and accelerate:
            capture_graphs(self.method)
        cfg = self.cfg
        self.logger = RunLogger(
            self.run_dir,
            cfg.to_dict(),
            cfg.tensorboard,
            cfg.wandb,
            cfg.wandb_project,
            cfg.exp,
            resume_step=self.start,
        )
        if state is not None:
            # last: building the models drew from the global RNG
            checkpoints.set_rng_state(state["rng"])

    def restore_fusion(self, state: dict) -> None:
        """The fused steps of the sessions before (a checkpoint from before they were counted
        holds none) and the runs they were taken with, kept after this session's group."""
        self.fused_steps = state.get("fused_steps", 0)
        earlier = state.get("fused_with", [])
        self.fused_with += [d for d in earlier if d not in self.fused_with]

    # -- the loop (``loop.run_steps`` drives it, alone or as a part of a ``group.FusedLoop``) ---
    active = True  # a lone run leaves the loop only by raising

    def open(self, desc: str | None, t_loop: float, position: int | None = None) -> None:
        """The bar opened and the models in training mode as the steps begin; ``t_loop``: when
        (the training seconds its checkpoints record count from it)."""
        self.t_loop = t_loop
        self.open_bar(desc, position)
        self.method.train()

    def close(self) -> None:
        self.bar.close()
        self.logger.close()

    def open_bar(self, desc: str | None, position: int | None = None) -> None:
        from tqdm.auto import tqdm

        Stop.stepping = True  # the lone and the fused loop open their bars as the steps begin
        cfg = self.cfg
        self.bar = tqdm(
            total=self.plan.total,
            initial=self.start,
            desc=desc or f"{cfg.method} {cfg.data_label()}",
            disable=not cfg.progress,
            mininterval=0.5,
            dynamic_ncols=True,
            leave=True,
            position=position,
        )

    def step(self, step: int, k: int) -> None:
        """One training step (0-based ``step``, in stage ``k``) and the weight average after it."""
        x, y, idx = self.batch()
        self.after_step(step, k, self.method.update(x, y, idx, step - self.plan.start(k)))

    def batch(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The next training batch: augmented inputs, class labels and sample indices."""
        split, idx = self.train_split, self.sampler.next()
        # index_select copies whole rows: ~10x faster than advanced indexing of a 4-D tensor
        x = self.transform(torch.index_select(split.images, 0, idx), train=True)
        return x, torch.index_select(split.targets, 0, idx), idx

    def after_step(self, step: int, k: int, out) -> None:
        """Keep the step's flags and terms, advance the bar, fold the step into the average."""
        self.window.add(step + 1, out)
        self.fused_steps += out.fused
        self.bar.update(1)
        if self._main(k) and self.average is not None:
            self.average.update(step - self.plan.start(k))

    def _main(self, k: int) -> bool:
        return k == len(self.plan.stages) - 1

    def at_boundary(self, done: int, k: int) -> bool:
        """Whether anything reads the device after step ``done``; between boundaries the steps
        queue up without waiting. After a stop's checkpoint (``Stop``) it exits: a fused group's
        runs all save at one boundary before any exits, and the one step taken since is dropped."""
        if Stop.saved:
            raise SystemExit(143)  # 128 + SIGTERM, as the handler's own exit
        if Stop.requested:
            Stop.stopping = True
            return True  # a boundary now, which saves (``boundary``)
        cfg = self.cfg
        return (
            done == self.plan.ends[k]
            or any(done % freq == 0 for freq in (cfg.log_freq, cfg.valid_freq, cfg.save_freq))
            or self.evaluation_due(done, k)
        )

    def evaluation_due(self, done: int, k: int) -> bool:
        """Whether the models are evaluated after step ``done`` of stage ``k``: the stage's own
        steps where its method names them, else every ``valid_freq`` steps and at its end."""
        points = None if self._main(k) else self.stage_evaluations[k]
        if points is None:
            return done % self.cfg.valid_freq == 0 or done == self.plan.ends[k]
        return done - self.plan.start(k) in points

    def boundary(self, done: int, k: int) -> int:
        """Check the steps since the last boundary, log, evaluate, select, end a stage and save as
        their cadence says; returns the stage the next step belongs to."""
        cfg, stage_ends, main = self.cfg, done == self.plan.ends[k], self._main(k)
        tag = {} if main else {"stage": self.plan.stages[k].name}
        self.check_nonfinite(done)
        if done % cfg.log_freq == 0 or stage_ends:
            self.log_train(done, tag)
        if self.evaluation_due(done, k):
            with self.timed("evaluation"):
                record = self.evaluate(done, k, tag)
            if main:
                with self.timed("best_checkpoints"):
                    self.select(done, record)
        if stage_ends and not main:
            _end_stage(
                self.method,
                self.plan.stages[k],
                self.stage_data,
                self.train_split,
                self.logger,
                done,
            )
            k += 1
            self.enter_stage(k)
        if done % cfg.save_freq == 0 or stage_ends or Stop.stopping:
            with self.timed("full_checkpoints"):
                self.save(done)
            Stop.saved = Stop.stopping
        return k

    @contextlib.contextmanager
    def timed(self, part: str):
        """Add the wall time of the block to ``boundary_seconds[part]``. The queued steps were
        waited for before it (check_nonfinite reads the device), so they are not counted in it."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.boundary_seconds[part] += time.perf_counter() - t0

    def check_nonfinite(self, done: int) -> None:
        for bad_step, terms in self.window.not_applied():
            if self.cfg.on_nonfinite != "skip":
                message = _nonfinite_message(
                    bad_step, terms, done, self.cfg, self.run_dir, self.last_saved
                )
                raise UserError(message)
            self.skipped.append(bad_step)
            self.logger.log({"kind": "skip", "step": bad_step, "nonfinite": terms})

    def log_train(self, done: int, tag: dict) -> None:
        means = self.window.take_means()
        if means is not None:
            self.logger.log({"kind": "train", "step": done, **tag, "lr": self.method.lr(), **means})

    def evaluate(self, done: int, k: int, tag: dict) -> dict:
        main = self._main(k)
        record = evaluate_all(
            self.method,
            self.valid_split,
            self.test_split,
            self.transform,
            self.num_classes,
            self.cfg,
            self.train_split,
            self.average if main else None,
        )
        record.update(kind="eval", step=done, **tag)
        self.logger.log(record)
        if not main:
            seen = ("valid", "test") if self.method_cls.reads_test_labels(self.cfg) else ("valid",)
            self.method.stage_evaluated(
                self.plan.stages[k], {"step": done, **{s: record[s] for s in seen}}
            )
        return record

    def select(self, done: int, record: dict) -> None:
        """Move each selection rule's pick; save the models of those that moved (and, at the end,
        the final average as wa_last)."""
        cfg, method, split = self.cfg, self.method, self.train_split
        if done in self.w_steps and method.sample_weights() is not None:
            conflicting = None if split.biases is None else split.targets != split.biases
            save_w_snapshot(self.run_dir, done, method.sample_weights(), conflicting)
        improved = self.tracker.update(record)
        last_average = "wa" in record and done == self.plan.total
        moved = improved + ["wa_last"] * last_average if cfg.best_checkpoints else []
        for averaged in (False, True):
            rules = [r for r in moved if r.startswith(WA_PREFIX) == averaged]
            if rules:
                save_pick(self.run_dir, rules, cfg, done, method, self.average, record)
        self.bar.set_postfix(
            valid=f"{record['valid']['accuracy']:.3f}",
            test_unb=f"{primary_metric(record['test'], cfg.dataset):.3f}",
            refresh=False,
        )

    def save(self, done: int) -> None:
        cfg = self.cfg
        checkpoints.save_full(
            self.run_dir,
            {
                "config": cfg.to_dict(),
                "method": cfg.method,
                "step": done,
                "method_state": self.method.state_dict(),
                "sampler": self.sampler.state_dict(),
                "transform_generator": self.transform.generator.get_state(),
                "tracker": self.tracker.best,
                **self.window.state_dict(),
                "skipped": self.skipped,
                **({"average": self.average.state_dict()} if self.average is not None else {}),
                "train_seconds": self.seconds_before + time.time() - self.t_loop,
                "boundary_seconds": dict(self.boundary_seconds),
                "fused_steps": self.fused_steps,
                "fused_with": self.fused_with if self.fused_steps else [],
                "rng": checkpoints.rng_state(),
            },
            cfg.keep_checkpoints,
            self.last_saved,
        )
        self.last_saved = done

    # -- the end -------------------------------------------------------------------------------
    def results(self, train_seconds: float, total_seconds: float) -> dict:
        cfg, plan, average = self.cfg, self.plan, self.average
        results = results_record(
            cfg, self.tracker, self.data_info, train_seconds, total_seconds, self.skipped
        )
        if average is not None:
            results["weight_averaging"] = {
                "decay": average.decay,
                "start": average.start,
                "models": list(average.models),
                "steps_averaged": average.count,
            }
        results.update(self.label_record())
        if len(plan.stages) > 1:  # the steps of every stage; "steps" counts the main stage's
            results["stages"] = [{"name": st.name, "steps": st.steps} for st in plan.stages]
        speed = round(plan.total / train_seconds, 2) if train_seconds > 0 else math.nan
        results["steps_per_second"] = speed
        results["boundary_seconds"] = {k: round(v, 2) for k, v in self.boundary_seconds.items()}
        results["compiled"] = self.method.compiled  # the parts of the step compiled (none: eager)
        results["cuda_graph"] = self.method.graphed
        results["bf16"] = self.method.amp
        results["fused_steps"] = self.fused_steps
        if self.fused_steps:  # only a fusion that ran: not the group the run was merely put in
            results["fused_with"] = self.fused_with
            # linear products: each run's own kernels (bit for bit as alone), or batched
            exact = self.cfg.fused_exact and self.device.type == "cpu"
            results["fused_products"] = "exact" if exact else "batched"
        return results


def _nonfinite_message(
    bad_step: int,
    terms: list[str],
    done: int,
    cfg: TrainConfig,
    run_dir: Path,
    last_saved: int | None,
) -> str:
    last = (
        f"{RunDir(run_dir).last_checkpoint}, step {last_saved}"
        if last_saved is not None
        else "none (nothing was saved yet)"
    )
    return (
        f"non-finite loss at step {bad_step} ({', '.join(terms) or 'loss'}) of {cfg.method}; no step "
        f"applied from then on and the run stopped at step {done}, where it read the flag. The last "
        f"good checkpoint is {last}: rerun with a lower --lr to start again, or the same command "
        "with --on_nonfinite skip to resume and skip such steps"
    )


def compile_step(cfg: TrainConfig, device: torch.device) -> bool:
    """Whether the step goes through ``torch.compile``: ``--compile`` / ``--no-compile``, else
    where it was measured to help (``COMPILE_DEFAULT``)."""
    if cfg.compile is not None:
        return cfg.compile
    return COMPILE_DEFAULT.get(torch.device(device).type, False)


def capture_step(cfg: TrainConfig, device: torch.device, method) -> bool:
    """Whether the step replays as CUDA graphs: ``--cuda_graph`` / ``--no-cuda_graph``, else on
    CUDA unless ``--no-compile`` asked for the eager path. Needs fused optimizers (a step that
    reads the host cannot be recorded)."""
    cuda = torch.device(device).type == "cuda"
    if cfg.cuda_graph and not cuda:
        raise UserError(
            f"--cuda_graph needs a CUDA device, and this run is on {device}; drop the flag"
        )
    wanted = cfg.cuda_graph if cfg.cuda_graph is not None else cuda and cfg.compile is not False
    if wanted and not method.on_device:
        if cfg.cuda_graph:
            raise UserError(
                "--cuda_graph: this run's optimizer has no fused CUDA kernel, so its step "
                "reads the host and cannot be recorded; drop the flag"
            )
        return False
    return bool(wanted)
