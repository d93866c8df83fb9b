"""One method-agnostic training loop: sampling, steps, evaluation cadence, checkpoints, logging."""
from __future__ import annotations

import contextlib
import errno
import functools
import json
import math
import random
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from debiaslab import UserError, __version__, checkpoints
from debiaslab.averaging import DEFAULT_DECAY, WeightAverage
from debiaslab.config import CIFAR_MEAN, CIFAR_STD, INPUT_SCALES, RUNTIME_FIELDS, TrainConfig
from debiaslab.data.reference import load_reference
from debiaslab.data.splits import DatasetBundle, Split
from debiaslab.data.transforms import BatchTransform, resize_uint8
from debiaslab.diagnostics import flagged_report, save_w_snapshot, snapshot_steps, weight_report
from debiaslab.io import atomic_write_json
from debiaslab.logging import RunLogger, StepWindow, require_wandb
from debiaslab.methods import METHODS
from debiaslab.methods.base import StageData, StagePlan
from debiaslab.selection import WA_PREFIX, SelectionTracker, describe, evaluation_of, selection_names
from debiaslab.metrics import compute_metrics, predict_split, primary_key, primary_metric
from debiaslab.models import DATASET_MODEL


def resolve_device(name: str) -> torch.device:
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device {name!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name} asked for, but this machine has no usable CUDA GPU; use --device cpu (or auto)")
    count = torch.cuda.device_count() if device.type == "cuda" else 0
    if device.type == "cuda" and device.index is not None and device.index >= count:
        raise UserError(f"--device {name}: this machine has {count} CUDA GPU(s), cuda:0 to cuda:{count - 1}; "
                        "pick one of them (or --device cuda)")
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class EpochSampler:
    """Shuffled epochs of index batches (drop_last), drawn from its own seeded generator. With
    ``use_counts``, an epoch holds sample i ``counts[i]`` times (JTT's upsampling)."""

    def __init__(self, n: int, batch_size: int, generator: torch.Generator, device):
        if n < batch_size:
            raise UserError(f"--batch_size {batch_size} is larger than the training split ({n} samples); lower it")
        self.n, self.batch_size, self.generator, self.device = n, batch_size, generator, device
        self.repeated = None  # the epoch's sample indices when some samples count more than once
        self.perm = None
        self.pos = 0
        self.epoch = 0

    def use_counts(self, counts: torch.Tensor | None) -> None:
        """From the next batch on, epochs of ``counts[i]`` copies of sample i (None: one each)."""
        self.repeated = None if counts is None else torch.repeat_interleave(
            torch.arange(len(counts)), counts.cpu().long())
        self.perm, self.pos = None, 0

    def next(self) -> torch.Tensor:
        size = self.n if self.repeated is None else len(self.repeated)
        if self.perm is None or self.pos + self.batch_size > size:
            perm = torch.randperm(size, generator=self.generator)
            if self.repeated is not None:
                perm = self.repeated[perm]
            if torch.device(self.device).type == "cuda":
                perm = perm.pin_memory()  # an asynchronous copy: the host need not wait for the device
            self.perm = perm.to(self.device, non_blocking=True)
            self.pos = 0
            self.epoch += 1
        idx = self.perm[self.pos:self.pos + self.batch_size]
        self.pos += self.batch_size
        return idx

    def state_dict(self) -> dict:
        return {"perm": None if self.perm is None else self.perm.cpu(), "pos": self.pos, "epoch": self.epoch,
                "generator": self.generator.get_state()}

    def load_state_dict(self, s: dict) -> None:
        self.perm = None if s["perm"] is None else s["perm"].to(self.device)
        self.pos, self.epoch = s["pos"], s["epoch"]
        self.generator.set_state(s["generator"])


def uses_cuda_extras(cfg: TrainConfig, device: torch.device) -> tuple[bool, bool]:
    """(bf16 autocast, channels_last): each on when its flag is on, the device is CUDA and (channels_last) the model convolves."""
    cuda = torch.device(device).type == "cuda"
    return cfg.amp and cuda, cfg.channels_last and cuda and cfg.model != "mlp"


def make_transform(cfg: TrainConfig, generator: torch.Generator | None, device="cpu") -> BatchTransform:
    return BatchTransform(
        mean=CIFAR_MEAN if cfg.normalize else None, std=CIFAR_STD if cfg.normalize else None,
        crop_padding=4 if cfg.augment else 0, flip=bool(cfg.augment), generator=generator,
        scale=INPUT_SCALES[cfg.input_scale], channels_last=uses_cuda_extras(cfg, device)[1],
    )


def prepare_split(split: Split, cfg: TrainConfig, device) -> Split:
    """Move a split to the device, then resize it there once (never per step)."""
    split = split.to(device)
    if cfg.image_size is not None:
        split = Split(resize_uint8(split.images, cfg.image_size), split.targets, split.biases)
    return split


# Where --compile is on by default: only where benchmarks/steps_per_second.py measured it faster
# (README, "Speed"). CPU: not faster for Vanilla or DisEnt on CMNIST (LfF +30%), and 5-20 s more
# start-up, so off. CUDA: off until measured there.
COMPILE_DEFAULT = {"cpu": False, "cuda": False}

DATA_SEED = 0  # seeds the valid hold-out of datasets without one, the same for every training seed


def load_data(cfg: TrainConfig) -> DatasetBundle:
    """The dataset a config names: a user manifest or image folder, BAR, or a reference-layout folder."""
    from debiaslab.data.folders import load_bar, load_image_folder, load_manifest
    from debiaslab.data.reference import cifar10c_folder, dataset_root

    if cfg.manifest:
        return load_manifest(cfg.manifest, cfg.image_size, seed=DATA_SEED)
    if cfg.image_folder:
        return load_image_folder(cfg.image_folder, cfg.image_size, seed=DATA_SEED)
    if cfg.dataset == "bar":
        return load_bar(dataset_root(cfg.data_dir, "bar"), cfg.image_size or 224, seed=DATA_SEED)
    folder = cifar10c_folder(cfg.corruption_type) if cfg.dataset == "cifar10c" else cfg.dataset
    bundle = load_reference(cfg.data_dir, folder, cfg.percent)
    if cfg.dataset == "cmnist":
        from debiaslab.data.cmnist import check_palette

        bundle.info.update(check_palette(bundle, cfg.resolved().palette, Path(cfg.data_dir)))
    return bundle


def _existing_run(cfg: TrainConfig) -> tuple[str, dict | None]:
    """("fresh", None), ("done", None) for a finished identical run, or ("resume", checkpoint).

    Refuses a directory that holds a different run. An unfinished run of the same config resumes
    from its last checkpoint (or starts again if it never saved one); with ``cfg.resume`` a finished
    run also continues when ``--num_steps`` grew.
    """
    run_dir = Path(cfg.run_dir())
    if not run_dir.exists() or not any(run_dir.iterdir()) or cfg.overwrite:
        return "fresh", None
    try:
        old = TrainConfig.from_saved(json.loads((run_dir / "config.json").read_text())["config"]).to_dict()
    except (OSError, ValueError, KeyError, TypeError):
        raise UserError(f"{run_dir} exists but holds no readable config.json, so it cannot be resumed; "
                        "pass another --exp (or --log_dir), or --overwrite to replace it") from None
    ignore = {"num_steps"} if cfg.resume else set()
    if _comparable(old, ignore) != _comparable(cfg.to_dict(), ignore):
        diff = sorted(k for k in _comparable(old, ignore) if old.get(k) != cfg.to_dict().get(k))
        raise UserError(f"{run_dir} already holds a different run (differs in {', '.join(diff[:5])}); pass another --exp "
                        "(or --log_dir), or --overwrite to replace it")
    finished = (run_dir / "results.json").exists()
    if finished and not (cfg.resume and cfg.num_steps > old["num_steps"]):
        return "done", None
    state = checkpoints.load_for_resume(run_dir)
    if state is None:
        return "fresh", None
    if state["step"] > StagePlan(METHODS[cfg.method].stages(cfg)).total:
        raise UserError(f"{run_dir} is at step {state['step']}, beyond --num_steps {cfg.num_steps} (and the method's "
                        "earlier stages); raise --num_steps")
    return "resume", state


def _comparable(d: dict, ignore=frozenset()) -> dict:
    return {k: v for k, v in d.items() if k not in RUNTIME_FIELDS and k not in ignore}


def evaluate(logits_of, split: Split, transform: BatchTransform, num_classes: int, batch_size: int,
             amp: bool = False, pseudo_biases: torch.Tensor | None = None) -> dict:
    """Every metric of ``logits_of`` (prepared inputs -> logits) on ``split`` (``pseudo_unbiased``
    too where ``pseudo_biases`` are given)."""
    preds = predict_split(_autocast(logits_of, amp), split.images, transform.eval, batch_size)
    return compute_metrics(preds, split.targets, split.biases, num_classes, pseudo_biases)


def _autocast(logits_of, amp: bool):
    def predict(x):
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            return logits_of(x)

    return predict


def make_average(cfg: TrainConfig, method) -> WeightAverage | None:
    """The EMA of the models ``predict`` reads (None under ``--wa_decay 0``)."""
    decay = DEFAULT_DECAY if cfg.wa_decay is None else cfg.wa_decay
    if decay == 0:
        return None
    start = type(method).average_start(cfg) if cfg.wa_start is None else cfg.wa_start
    return WeightAverage({n: method.models[n] for n in type(method).model_names}, decay, start)


def train(cfg: TrainConfig, bundle: DatasetBundle | None = None, progress_desc: str | None = None) -> dict:
    """Train ``cfg.method`` and return the results dict written to ``<run_dir>/results.json``."""
    cfg = cfg.resolved()
    if cfg.model is None:
        cfg.model = DATASET_MODEL.get(cfg.dataset, "resnet18")
    cfg.validate()
    device = resolve_device(cfg.device)
    if cfg.wandb:
        require_wandb()
    mode, state = _existing_run(cfg)
    if mode == "done":
        print(f"{cfg.run_dir()} already holds this finished run; not retraining (pass --overwrite to retrain)")
        return json.loads((Path(cfg.run_dir()) / "results.json").read_text())
    if bundle is None:
        bundle = load_data(cfg)  # before the run directory exists: bad data leaves nothing behind
    bias_labels_for(METHODS[cfg.method], bundle.train, bundle.name)  # refused before anything is written
    run_dir = Path(cfg.run_dir())
    if mode == "fresh":
        try:
            if run_dir.exists():
                shutil.rmtree(run_dir)
            run_dir.mkdir(parents=True)
        except OSError as e:
            raise UserError(f"cannot create the run directory {run_dir} ({e.strerror}); check --log_dir "
                            f"{cfg.log_dir}: it must be a writable folder") from None
    else:
        (run_dir / "FAILED").unlink(missing_ok=True)
        for tmp in run_dir.glob(".*.tmp"):  # half-written files of a killed save; the complete ones are in place
            tmp.unlink()
        (run_dir / "results.json").unlink(missing_ok=True)  # a grown --num_steps: the old results no longer hold
        print(f"resuming {run_dir} from step {state['step']}")
    try:
        with _sigterm_as_exit():
            return _train(cfg, bundle, device, run_dir, progress_desc, state)
    except BaseException as e:
        # never leave a results.json-less run that looks like something: mark it failed
        try:
            (run_dir / "FAILED").write_text(f"training did not finish ({type(e).__name__}); "
                                            "rerun the same command to resume from the last checkpoint\n")
        except OSError:
            pass
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise UserError(f"no space left on the device while writing {e.filename or run_dir}; the last complete checkpoint "
                            f"({_last_step(run_dir)}) is intact: free space and rerun the same command to resume") from None
        raise


@contextlib.contextmanager
def _sigterm_as_exit():
    """A pre-empted job gets SIGTERM: end like an interrupt (marked FAILED, resumable) instead of vanishing."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _last_step(run_dir: Path) -> str:
    try:
        return f"{run_dir / checkpoints.LAST}, step {torch.load(run_dir / checkpoints.LAST, weights_only=True)['step']}"
    except Exception:
        return "none was written yet"


def bias_labels_for(method_cls, train_split: Split, name: str) -> dict:
    """The constructor argument of a method that trains on bias labels; refused without them."""
    if not method_cls.uses_bias_labels:
        return {}
    if train_split.biases is None:
        raise UserError(f"{method_cls.name} trains on bias labels, and the training split of {name} has none; "
                        "choose a label-free method (e.g. lff, disent, jtt) or data with bias labels")
    return {"train_biases": train_split.biases}


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
    from tqdm.auto import tqdm

    t_start = time.time()
    seed_everything(cfg.seed)
    train_split, valid_split, test_split = (prepare_split(getattr(bundle, n), cfg, device) for n in ("train", "valid", "test"))
    C = bundle.num_classes
    method_cls = METHODS[cfg.method]
    in_shape = tuple(train_split.images.shape[1:])
    amp, channels_last = uses_cuda_extras(cfg, device)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    models = {n: m.to(device, memory_format=memory_format) for n, m in method_cls.build_models(cfg, C, in_shape).items()}
    gen_device = device if device.type == "cuda" else torch.device("cpu")
    method = method_cls(cfg, models, train_split.targets, C, torch.Generator(device=gen_device).manual_seed(cfg.seed + 1),
                        **bias_labels_for(method_cls, train_split, bundle.name))
    transform = make_transform(cfg, torch.Generator(device=gen_device).manual_seed(cfg.seed + 2), device)
    sampler = EpochSampler(len(train_split), cfg.batch_size, torch.Generator().manual_seed(cfg.seed + 3), device)
    average = make_average(cfg, method)
    tracker = SelectionTracker(cfg.dataset, selection_names(average is not None))
    plan = StagePlan(method_cls.stages(cfg))
    stage_data = StageData(train_split.images, train_split.targets, transform.eval, cfg.eval_batch_size)

    def enter_stage(k: int) -> None:
        method.begin_stage(plan.stages[k], stage_data)
        sampler.use_counts(method.sample_counts())

    data_info = {"name": bundle.name, "num_classes": C, "counts": bundle.counts(), "sha256": bundle.checksums(), **bundle.info}
    for k in [k for k in data_info if k.startswith("sha256_")]:
        data_info.pop(k)
    compiled, graphed = compile_step(cfg, device), capture_step(cfg, device, method)
    atomic_write_json(run_dir / "config.json", {
        "config": cfg.to_dict(), "data": data_info, "debiaslab": __version__, "torch": torch.__version__,
        "device": str(device), "torch_threads": torch.get_num_threads(), "uses_bias_labels_in_training": method_cls.uses_bias_labels,
        "compiled": compiled, "cuda_graph": graphed,
    })
    window, start, skipped, seconds_before = StepWindow(), 0, [], 0.0
    if state is not None:
        method.load_state_dict(state["method_state"])
        enter_stage(plan.index(state["step"]))
        sampler.load_state_dict(state["sampler"])
        transform.generator.set_state(state["transform_generator"])
        tracker.best = state["tracker"]
        window = StepWindow({k: v.to(device) for k, v in state["log_sums"].items()}, state["log_count"])
        start, skipped, seconds_before = state["step"], list(state["skipped"]), state["train_seconds"]
        if average is not None and "average" in state:
            average.load_state_dict(state["average"])  # a checkpoint from before averaging: it starts afresh
    else:
        enter_stage(0)
    if compiled:
        method.compile()
    if graphed:
        method.capture()
    logger = RunLogger(run_dir, cfg.to_dict(), cfg.tensorboard, cfg.wandb, cfg.wandb_project, cfg.exp, resume_step=start)
    if state is not None:
        checkpoints.set_rng_state(state["rng"])  # last: building the models above drew from the global RNG
    t_loop = time.time()
    last_saved = start if state is not None else None
    w_steps = {plan.main_start + s for s in snapshot_steps(cfg.num_steps, cfg.valid_freq)}

    def save(done: int) -> None:
        nonlocal last_saved
        checkpoints.save_full(run_dir, {
            "config": cfg.to_dict(), "method": cfg.method, "step": done, "method_state": method.state_dict(),
            "sampler": sampler.state_dict(), "transform_generator": transform.generator.get_state(), "tracker": tracker.best,
            **window.state_dict(), "skipped": skipped,
            **({"average": average.state_dict()} if average is not None else {}),
            "train_seconds": seconds_before + time.time() - t_loop, "rng": checkpoints.rng_state(),
        }, cfg.keep_checkpoints, last_saved)
        last_saved = done

    bar = tqdm(total=plan.total, initial=start, desc=progress_desc or f"{cfg.method} {cfg.data_label()}",
               disable=not cfg.progress, mininterval=0.5, dynamic_ncols=True, leave=True)
    try:
        method.train()
        k = plan.index(start)
        for step in range(start, plan.total):
            idx = sampler.next()
            # index_select copies whole rows: ~10x faster than advanced indexing of a 4-D tensor
            x = transform(torch.index_select(train_split.images, 0, idx), train=True)
            done = step + 1
            window.add(done, method.update(x, torch.index_select(train_split.targets, 0, idx), idx,
                                           step - plan.start(k)))
            bar.update(1)
            stage_ends, main = done == plan.ends[k], k == len(plan.stages) - 1
            if main and average is not None:
                average.update(step - plan.start(k))
            log_now, eval_now = done % cfg.log_freq == 0 or stage_ends, done % cfg.valid_freq == 0 or stage_ends
            save_now = done % cfg.save_freq == 0 or stage_ends
            tag = {} if main else {"stage": plan.stages[k].name}
            if not (log_now or eval_now or save_now):
                continue  # nothing below reads the device: the steps queue up without waiting
            for bad_step, terms in window.not_applied():
                if cfg.on_nonfinite != "skip":
                    raise UserError(_nonfinite_message(bad_step, terms, done, cfg, run_dir, last_saved))
                skipped.append(bad_step)
                logger.log({"kind": "skip", "step": bad_step, "nonfinite": terms})
            if log_now:
                means = window.take_means()
                if means is not None:
                    logger.log({"kind": "train", "step": done, **tag, "lr": method.lr(), **means})
            if eval_now:
                record = _evaluate_all(method, valid_split, test_split, transform, C, cfg, train_split,
                                       average if main else None)
                record.update(kind="eval", step=done, **tag)
                logger.log(record)
                if not main:
                    method.stage_evaluated(plan.stages[k], {"step": done, "valid": record["valid"]})
            if eval_now and main:
                if done in w_steps and method.sample_weights() is not None:
                    save_w_snapshot(run_dir, done, method.sample_weights(), None if train_split.biases is None
                                    else train_split.targets != train_split.biases)
                improved = tracker.update(record)
                last_average = "wa" in record and done == plan.total
                for rule in (improved + ["wa_last"] * last_average) if cfg.best_checkpoints else ():
                    _save_pick(run_dir, rule, cfg, done, method, average, record)
                bar.set_postfix(valid=f"{record['valid']['accuracy']:.3f}",
                                test_unb=f"{primary_metric(record['test'], cfg.dataset):.3f}", refresh=False)
            if stage_ends and not main:
                _end_stage(method, plan.stages[k], stage_data, train_split, logger, done)
                k += 1
                enter_stage(k)
            if save_now:
                save(done)
    finally:
        bar.close()
        logger.close()
    train_seconds = seconds_before + time.time() - t_loop
    results = _results(cfg, tracker, data_info, train_seconds, time.time() - t_start, skipped)
    if average is not None:
        results["weight_averaging"] = {"decay": average.decay, "start": average.start,
                                       "models": list(average.models), "steps_averaged": average.count}
    results["uses_bias_labels_in_training"] = method_cls.uses_bias_labels
    if len(plan.stages) > 1:  # the steps of every stage; "steps" counts the main stage's
        results["stages"] = [{"name": st.name, "steps": st.steps} for st in plan.stages]
    results["steps_per_second"] = round(plan.total / train_seconds, 2) if train_seconds > 0 else math.nan
    results["compiled"] = method.compiled  # the parts of the step torch.compile ran (none: eager)
    results["cuda_graph"] = method.graphed
    atomic_write_json(run_dir / "results.json", results)
    return results


def _nonfinite_message(bad_step: int, terms: list[str], done: int, cfg: TrainConfig, run_dir: Path,
                       last_saved: int | None) -> str:
    last = f"{run_dir / checkpoints.LAST}, step {last_saved}" if last_saved is not None else \
        "none (nothing was saved yet)"
    return (f"non-finite loss at step {bad_step} ({', '.join(terms) or 'loss'}) of {cfg.method}; no step "
            f"applied from then on and the run stopped at step {done}, where it read the flag. The last "
            f"good checkpoint is {last}: rerun with a lower --lr to start again, or the same command "
            "with --on_nonfinite skip to resume and skip such steps")


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
        raise UserError(f"--cuda_graph needs a CUDA device, and this run is on {device}; drop the flag")
    wanted = cfg.cuda_graph if cfg.cuda_graph is not None else cuda and cfg.compile is not False
    if wanted and not method.on_device:
        if cfg.cuda_graph:
            raise UserError("--cuda_graph: this run's optimizer has no fused CUDA kernel, so its step "
                            "reads the host and cannot be recorded; drop the flag")
        return False
    return bool(wanted)


def _save_pick(run_dir: Path, rule: str, cfg: TrainConfig, done: int, method, average, record: dict):
    """checkpoint_<rule>.pt: the models (raw, or averaged for wa_*) a selection picked at ``done``."""
    models = average.models if rule.startswith(WA_PREFIX) else method.models
    evaluation = evaluation_of(record, rule)
    checkpoints.save_models(run_dir, rule, {
        "config": cfg.to_dict(), "method": cfg.method, "step": done,
        "models": {n: models[n].state_dict() for n in type(method).model_names},
        "metrics": {k: evaluation[k] for k in ("valid", "test")}})


def _evaluate_all(method, valid_split, test_split, transform, C, cfg, train_split,
                  average: WeightAverage | None = None) -> dict:
    """The raw models' valid and test metrics and, once averaging has started, the averaged
    models' under ``"wa"``; the valid split's pseudo bias labels come from the method's biased
    branch (as it is now), the same for both."""
    method.eval()
    pseudo = _pseudo_biases(method, valid_split, transform, cfg)
    record = _evaluate_pair(method.eval_predict, valid_split, test_split, transform, C, cfg, method.amp, pseudo)
    if average is not None and average.started:
        averaged = functools.partial(type(method).predict, average.models)
        record["wa"] = _evaluate_pair(averaged, valid_split, test_split, transform, C, cfg, method.amp, pseudo)
    method.train()
    w = method.sample_weights()
    if w is not None and train_split.biases is not None:  # bias labels read for logging only
        record["train_w"] = weight_report(w, train_split.targets != train_split.biases)
    return record


def _pseudo_biases(method, split: Split, transform: BatchTransform, cfg: TrainConfig):
    """The class the method's biased branch predicts for each sample of ``split`` (None without one)."""
    with torch.no_grad():
        if method.bias_logits(transform.eval(split.images[:1])) is None:  # a one-sample probe
            return None
    return predict_split(_autocast(method.bias_logits, method.amp), split.images, transform.eval,
                         cfg.eval_batch_size)


def _evaluate_pair(logits_of, valid_split, test_split, transform, C, cfg, amp, pseudo) -> dict:
    return {"valid": evaluate(logits_of, valid_split, transform, C, cfg.eval_batch_size, amp, pseudo),
            "test": evaluate(logits_of, test_split, transform, C, cfg.eval_batch_size, amp)}


def _results(cfg: TrainConfig, tracker: SelectionTracker, data_info: dict, train_seconds: float, total_seconds: float,
             skipped: list[int]) -> dict:
    selections = {}
    for rule in tracker.names:
        pick = tracker.best.get(rule)
        selections[rule] = None if pick is None else {
            "description": describe(rule), "step": pick["step"], "valid": pick["valid"], "test": pick["test"],
            "test_primary": primary_metric(pick["test"], cfg.dataset),
        }
    return {
        "method": cfg.method, "dataset": cfg.dataset, "percent": cfg.percent if cfg.uses_percent() else None, "seed": cfg.seed, "steps": cfg.num_steps,
        "default_selection": "last",
        "primary_metric": f"{primary_key(cfg.dataset)} accuracy" if "conflicting" in data_info["counts"]["test"]
                          else "accuracy (no bias labels)",
        "selections": selections, "data": data_info, "config": cfg.to_dict(),
        "skipped_steps": skipped,  # steps whose loss was NaN / inf, skipped under --on_nonfinite skip
        "train_seconds": round(train_seconds, 2), "total_seconds": round(total_seconds, 2),
    }
