"""Training a group of runs fused: K runs, one step per iteration (``fused.FusedStep``).

Every run of a group is a whole ``TrainingLoop`` of its own, built as it would be alone (its seed,
data, sampler, transform, method, weight average, selection tracker, logger and run directory);
only the step is shared. At a boundary each run logs, evaluates, selects and saves through its own
loop, and a run that fails there (a non-finite loss under ``--on_nonfinite stop``) is marked
FAILED and leaves the group, which goes on without it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
import time
from pathlib import Path

import torch

from debiaslab import checkpoints
from debiaslab.accelerate import capture_graphs, compile_compute
from debiaslab.config import TrainConfig
from debiaslab.errors import UserError
from debiaslab.fused import FusedStep, state_signature
from debiaslab.loop import run_steps
from debiaslab.prepare import cached_loader
from debiaslab.runs import OpenedRun, marked_failed_on_error, open_run
from debiaslab.sigterm import sigterm_as_exit
from debiaslab.train import TrainingLoop

# What runs of one group may differ in: the seed, the data (ratio, build) and every float setting
# (learning rate, lambdas, q, EMA alpha, ...). Everything else (method, model, batch size, steps,
# stage plan, cadence, device) must agree.
DATA_FIELDS = ("percent", "data_dir", "corruption_type", "palette")
RUN_FIELDS = frozenset({"seed", "exp", "log_dir", *DATA_FIELDS})


def fusion_key(cfg: TrainConfig) -> tuple:
    """Runs with equal keys can train as one fused group."""
    cfg = cfg.resolved()
    floats = {f.name for f in dataclasses.fields(cfg) if "float" in str(f.type)}
    d = cfg.to_dict()
    return tuple(
        (k, str(d[k]))
        for k in sorted(d)
        if k not in RUN_FIELDS and k not in floats and k not in ("progress", "overwrite")
    )


def fusion_groups(cfgs: list[TrainConfig], max_size: int) -> list[list[int]]:
    """Indices of ``cfgs`` in groups of compatible runs of at most ``max_size``, in first-seen
    order (a run that fits with none is a group of one)."""
    by_key: dict[tuple, list[int]] = {}
    for i, cfg in enumerate(cfgs):
        by_key.setdefault(fusion_key(cfg), []).append(i)
    groups = []
    for members in by_key.values():
        groups += [members[i : i + max_size] for i in range(0, len(members), max_size)]
    return sorted(groups)


class GroupFailed(UserError):
    """Some runs of a fused group failed; the others finished. ``results``: one per run (None for
    a failed one), ``errors``: run directory -> the error."""

    def __init__(self, results: list, errors: dict):
        self.results, self.errors = results, errors
        super().__init__(
            "; ".join(f"{Path(d).name}: {e}" for d, e in errors.items())
            + f" ({len(errors)} of {len(results)} runs failed; the others finished)"
        )


def default_processes(cfgs: list[TrainConfig], bundle=None) -> int:
    """The processes that train ``cfgs`` by default, each a fused group of its share of the
    runs on ``torch.get_num_threads() / processes`` threads (the layout; docs/speed.md, "Fused
    runs", has the measurement it rests on).

    On the CPU: one process per thread this process may use, so each group steps on one thread.
    On 2 cores, two one-thread processes of K runs each trained more run-steps than one
    two-thread process, at every K and for every method measured: a small model's step does not
    split well over threads, and a group on one thread keeps the core's cache to itself. On a
    GPU, or where the runs exist only in this process (in-memory data, a model factory or method
    registered here), this process alone.
    """
    from debiaslab.methods import METHODS, REGISTERED_HERE
    from debiaslab.models import BUILTIN_MODELS
    from debiaslab.prepare import resolve_device

    def elsewhere(cfg: TrainConfig) -> bool:  # can a fresh interpreter build this run?
        cfg = cfg.resolved()
        method = METHODS.get(cfg.method)
        if method is None or cfg.method in REGISTERED_HERE:  # not by an entry point
            return False
        names = method.model_heads(cfg)
        return all(method.model_architecture(cfg, n) in BUILTIN_MODELS for n in names)

    if bundle is not None or not all(elsewhere(c) for c in cfgs):
        return 1
    if any(resolve_device(c.device).type != "cpu" for c in cfgs):
        return 1
    return max(1, min(torch.get_num_threads(), len(cfgs)))


def train_group(
    cfgs: list[TrainConfig], progress_desc: str | None = None, bundle=None
) -> list[dict]:
    """Train ``cfgs`` as fused groups; returns each run's results, in order. ``bundle``: the data
    of every run (in-memory data); default: each run's own, read once per dataset and ratio.

    Runs that differ in more than seed, data and float settings (method, model, batch size, ...)
    cannot share a step: they train as one group per fusion key, which one printed line says.
    Finished runs are read back, not retrained; the others resume from their own last checkpoint.
    Runs whose checkpoints stand at different steps (a group killed between two runs' saves)
    train as one group per step. Raises ``GroupFailed`` after the others finish if some failed.
    """
    groups = say_key_split(cfgs)
    load = cached_loader()
    results: list[dict | None] = [None] * len(cfgs)
    errors: dict[str, BaseException] = {}
    for members in groups:
        trained = _train_one_key([cfgs[i] for i in members], progress_desc, bundle, load, errors)
        for i, result in zip(members, trained):
            results[i] = result
    if errors:
        raise GroupFailed(results, {str(d): e for d, e in errors.items()})
    return results


def say_key_split(cfgs: list[TrainConfig]) -> list[list[int]]:
    """The groups of ``cfgs`` by fusion key, saying so in one line where there are several."""
    groups = fusion_groups(cfgs, max(1, len(cfgs)))
    if len(groups) > 1:
        why = f"they differ in {', '.join(_differing_settings(cfgs))}"
        say_split([[cfgs[i].run_dir() for i in g] for g in groups], why)
    return groups


def _differing_settings(cfgs: list[TrainConfig]) -> list[str]:
    """The settings of the fusion key on which ``cfgs`` disagree."""
    keys = [dict(fusion_key(c)) for c in cfgs]
    return [name for name in keys[0] if len({k[name] for k in keys}) > 1]


def say_split(parts: list[list], why: str) -> None:
    """One line on stderr: runs asked to train as one group train as these parts (a part of one
    steps alone and records no fusion)."""
    names = " | ".join(" + ".join(Path(d).name for d in part) for part in parts)
    total = sum(map(len, parts))
    print(
        f"debiaslab: these {total} runs cannot all share one step ({why}); "
        f"training them as {len(parts)} groups: {names}",
        file=sys.stderr,
    )


def _train_one_key(cfgs, progress_desc, bundle, load, errors: dict) -> list[dict | None]:
    """Train ``cfgs`` (one fusion key), each from where it stands; failures go into ``errors``."""
    opened: list[OpenedRun | None] = []
    for cfg in cfgs:  # a run whose data or directory is refused fails alone
        try:
            opened.append(open_run(cfg, bundle, load))
        except UserError as e:
            print(f"debiaslab: error: {cfg.run_dir()}: {e}", file=sys.stderr)
            errors[cfg.run_dir()] = e
            opened.append(None)
    results: list[dict | None] = [o and o.done for o in opened]
    todo = [i for i, o in enumerate(opened) if o is not None and o.done is None]
    by_start: dict[int, list[int]] = {}
    for i in todo:
        state = opened[i].state
        by_start.setdefault(0 if state is None else state["step"], []).append(i)
    if len(by_start) > 1:
        parts = [[opened[i].run_dir for i in members] for members in by_start.values()]
        say_split(parts, "they resume from different steps")
    for members in by_start.values():
        runs = [opened[i] for i in members]
        for i, result in zip(members, _train_fused(runs, progress_desc, errors)):
            results[i] = result
    return results


def _train_fused(runs: list[OpenedRun], progress_desc, errors: dict) -> list[dict | None]:
    """Build every run's loop, fuse those whose shapes agree, train each fused part."""
    run_dirs = [r.run_dir for r in runs]
    with marked_failed_on_error(run_dirs), sigterm_as_exit():
        t_start = time.time()
        loops, rngs = [], []
        for run in runs:  # one at a time: each seeds the global RNG and builds its models
            loops.append(TrainingLoop(run.cfg, run.bundle, run.device, run.run_dir))
            rngs.append(checkpoints.rng_state())
        parts = fusible_parts(loops)
        if len(parts) > 1:
            why = "their data or the method's per-sample state differ in shape"
            say_split([[run_dirs[i] for i in part] for part in parts], why)
        for part in parts:
            for i in part:
                if len(part) > 1:
                    loops[i].fused_with = [str(loops[j].run_dir) for j in part if j != i]
                loops[i].write_config()
                checkpoints.set_rng_state(rngs[i])
                loops[i].restore(runs[i].state, accelerate=len(part) == 1)
                rngs[i] = checkpoints.rng_state()
        seconds, groups = {}, {}
        for part in parts:
            group = FusedLoop([loops[i] for i in part], [rngs[i] for i in part])
            part_seconds = run_steps(group, progress_desc)
            seconds.update({i: part_seconds for i in part})
            groups.update({i: group for i in part})
    out = []
    for i, loop in enumerate(loops):
        group = groups[i]
        if loop.run_dir in group.failed:
            errors[loop.run_dir] = group.failed[loop.run_dir]
            out.append(None)
            continue
        results = loop.results(seconds[i], time.time() - t_start)
        if group.fused is not None:  # it ended in the group's step: compiled or captured as that
            results["compiled"], results["cuda_graph"] = group.compiled, group.graphed
        loop.folder.write_results(results)
        out.append(results)
    return out


def fusible_parts(loops: list[TrainingLoop]) -> list[list[int]]:
    """Indices of ``loops`` in parts that can share one step: equal image shape, number of
    classes and shapes of the method's step state (e.g. data of other sizes lay out per-sample
    tables otherwise), in first-seen order."""
    parts: dict[tuple, list[int]] = {}
    for i, loop in enumerate(loops):
        key = (
            tuple(loop.train_split.images.shape[1:]),
            loop.num_classes,
            state_signature(loop.method),
        )
        parts.setdefault(key, []).append(i)
    return list(parts.values())


class FusedLoop:
    """A group's runs as one stepper of ``loop.run_steps``: one step for all (fused, or each run's
    own in turn) and every run's own boundary."""

    def __init__(self, loops: list[TrainingLoop], rngs: list[dict] | None = None):
        self.loops = loops
        # its runs' plan and start (they agree) and the lead run's seconds before, read once: the
        # runs are restored before their group is built
        lead = loops[0]
        self.plan, self.start, self.seconds_before = lead.plan, lead.start, lead.seconds_before
        # each run's global RNG state, put in place around its boundary: its checkpoints record
        # (and its resume restores) its own, as alone; the step itself draws from no global RNG
        self.rngs = dict(zip((lp.run_dir for lp in loops), rngs or []))
        self.active = list(loops)
        self.failed: dict[Path, BaseException] = {}
        self.fused = self._fuse()
        self.gathered: torch.Tensor | None = None  # the uint8 batches' buffer, [K, B, ...]
        self.inputs: torch.Tensor | None = None  # and the scaled batches', where reused

    def _fuse(self):
        lead = self.active[0]
        if len(self.active) == 1:
            return None  # one run: its own step, compiled or captured as configured
        fused = FusedStep([loop.method for loop in self.active])
        if lead.compiled:
            compile_compute(fused)
        if lead.graphed:
            capture_graphs(fused)
        return fused

    @property
    def compiled(self) -> list[str]:
        return [] if self.fused is None else self.fused.compiled

    @property
    def graphed(self) -> bool:
        return self.fused is not None and self.fused.graphed

    def open(self, progress_desc: str | None, t_loop: float) -> None:
        """Every run's bar (one line each, named by its seed) and models, as ``TrainingLoop.open``."""
        for position, loop in enumerate(self.loops):
            desc = progress_desc or f"{loop.cfg.method} {loop.cfg.data_label()} s{loop.cfg.seed}"
            loop.open(desc, t_loop, position if len(self.loops) > 1 else None)

    def at_boundary(self, done: int, k: int) -> bool:
        """The group's runs share their cadence: the lead run's says (a failed lead's too)."""
        return self.loops[0].at_boundary(done, k)

    def close(self) -> None:
        for loop in self.loops:
            loop.close()

    def step(self, step: int, k: int) -> None:
        if self.fused is None:
            for loop in self.active:
                loop.step(step, k)
            return
        xs, ys, idxs = self.batches()
        outs = self.fused.update(xs, ys, idxs, step - self.plan.start(k))
        for loop, out in zip(self.active, outs):
            loop.after_step(step, k, out)

    def batches(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Every run's next batch, stacked [K, B, ...]. Without random augmentation the images
        are gathered as uint8 into one buffer and transformed once (the same numbers as one
        transform per run: it is elementwise), not transformed per run and copied again."""
        transform = self.active[0].transform
        if transform.crop_padding or transform.flip:
            return tuple(torch.stack(parts) for parts in zip(*(lp.batch() for lp in self.active)))
        idxs = torch.stack([loop.sampler.next() for loop in self.active])
        images = self.active[0].train_split.images
        shape = (len(self.active), idxs.shape[1], *images.shape[1:])
        if self.gathered is None or self.gathered.shape != shape:
            self.gathered = images.new_empty(shape)
            scaled = transform.only_scales
            self.inputs = images.new_empty(shape, dtype=transform.dtype) if scaled else None
        for loop, idx, out in zip(self.active, idxs, self.gathered):
            torch.index_select(loop.train_split.images, 0, idx, out=out)
        if transform.only_scales:  # the step has let go of the last batch: reuse its memory
            x = transform.scale_into(self.gathered, self.inputs)
        else:
            x = transform(self.gathered.flatten(0, 1), train=True).unflatten(0, shape[:2])
        splits = (loop.train_split for loop in self.active)
        ys = torch.stack([torch.index_select(s.targets, 0, idx) for s, idx in zip(splits, idxs)])
        return x, ys, idxs

    def boundary(self, done: int, k: int) -> int:
        """Every run's boundary (log, evaluate, select, end a stage, save) on its own tensors."""
        if self.fused is not None:
            self.fused.sync_out()
        next_k, failed = k, []
        for loop in self.active:
            try:
                with self.own_rng(loop):
                    next_k = loop.boundary(done, k)
            except UserError as e:  # this run alone stops (a non-finite loss under stop)
                loop.folder.mark_failed(e)
                print(f"{loop.run_dir}: {e}")
                self.failed[loop.run_dir] = e
                failed.append(loop)
        if failed:
            if self.fused is not None:
                self.fused.release()
            self.active = [loop for loop in self.active if loop not in failed]
            self.fused = self._fuse() if len(self.active) > 1 else None
            if self.fused is None:
                self._accelerate_alone()
        elif self.fused is not None:
            self.fused.sync_in()
        return next_k

    @contextlib.contextmanager
    def own_rng(self, loop: TrainingLoop):
        if loop.run_dir not in self.rngs:
            yield
            return
        checkpoints.set_rng_state(self.rngs[loop.run_dir])
        try:
            yield
        finally:
            self.rngs[loop.run_dir] = checkpoints.rng_state()

    def _accelerate_alone(self) -> None:
        """A group left with one run steps it alone, compiled or captured as configured."""
        for loop in self.active:
            if loop.compiled and not loop.method.compiled:
                compile_compute(loop.method)
            if loop.graphed and not loop.method.graphed:
                capture_graphs(loop.method)
