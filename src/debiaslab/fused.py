"""Fused runs: K runs of one method trained as one step per iteration.

Each run keeps its own ``Method`` object (models, optimizers, schedulers, generator, per-sample
state), built as it would be alone. ``FusedStep`` then stacks them along a new leading run
dimension and computes all K losses with ``torch.func.vmap`` over the *lead* method's own
``compute``: the method's code, written for one run, sees one run's tensors, and vmap's batching
rules turn its K small matmuls into one batched matmul, its K convolutions into one grouped
convolution and its K BatchNorms into one over K x C channels (what HFTA's fused modules do by
hand). Why vmap and not fused modules, measured: docs/speed.md, "Fused runs".

Where each run's tensors live:

- parameters and buffers (BatchNorm statistics): one stacked ``[K, ...]`` tensor each; every
  run's own parameter is a view of its row, so evaluation, weight averaging, checkpoints and the
  optimizer see their run's current values without a copy;
- gradients and Adam's moments: the stacked parameter's gradient, whose row is handed to the
  run's parameter. Where every run's Adam has the same settings, learning rate, schedule and step
  count (a boundary checks), each moment is stacked like the parameters (the run's state holds a
  view of its row) and one fused Adam kernel steps all K runs at once: the same elementwise
  arithmetic as K calls, bit for bit, in one pass. A run whose step does not apply makes the
  group's kernel skip, and the runs that did apply then step alone, as they do wherever the
  runs' optimizers differ (their own fused Adam, learning rate and skip flag);
- the method's own tensors, as its class declares them (``Method.step_state``: per-sample EMAs,
  group weights, the stop flag): stacked while steps run (runs fuse only where these have one
  shape), and copied back into each run's own tensors before anything else reads them
  (``sync_out``, at a boundary) and from them after (``sync_in``). A method holding tensors or
  floats it declares neither there nor as ``boundary_state`` (what only its hooks read) does not
  fuse: its runs step alone (``state_signature``), since the step would read the lead's;
- per-run float settings that differ in the group (the method's float options, the general ones
  it declares in ``step_floats``, floats in its step state): a ``[K]`` tensor the lead method
  reads in place of its own float during the vmapped call.

A run whose step is not finite skips (or stops) alone: its loss, gradient, optimizer step, buffers
and per-sample state are its own rows, and the flags that guard them are per run.
"""

from __future__ import annotations

import contextlib
import warnings

import torch
import torch.nn as nn
from torch.func import vmap

from debiaslab.errors import UserError
from debiaslab.methods.base import StepOutput
from debiaslab.methods.optim import fused_adam
from debiaslab.models.layers import batched_products

# What the check for undeclared state leaves alone: what fusion handles itself (models,
# optimizers, schedulers, generator, buffer snapshot), the config (its floats are declared as
# ``step_floats`` and options), the method's stage (a Python value) and the step's plumbing.
_NOT_STATE = frozenset(
    "models optimizers schedulers generator buffers stage cfg _compute _step".split()
)


def _leaves(owner, key, value, depth: int = 1) -> list[tuple[object, object, object]]:
    """(owner, key, value) of every tensor and float in ``value``, ``owner[key]`` or
    ``owner.key``, found through objects, lists and dicts but not models or optimizers."""
    if depth > 4 or isinstance(value, (nn.Module, torch.optim.Optimizer, torch.Generator)):
        return []
    if isinstance(value, (torch.Tensor, float)):
        return [(owner, key, value)]
    if isinstance(value, (list, dict)):
        items = value.items() if isinstance(value, dict) else enumerate(value)
    elif hasattr(value, "__dict__") and not callable(value):  # not functions, methods, classes
        items = vars(value).items()
    else:
        return []
    return [leaf for k, v in items for leaf in _leaves(value, k, v, depth + 1)]


def _state_slots(method) -> list[tuple[object, object, object]]:
    """(owner, key, value) of every tensor and float of the method's declared ``step_state``."""
    return [
        leaf
        for name in type(method).declared("step_state")
        for leaf in _leaves(method, name, getattr(method, name))
    ]


def _setting_slots(method) -> list[tuple[object, object, object]]:
    """(config, name, value) of every float setting the step reads: the method's own float
    options and the general ones it declares (``step_floats``)."""
    cls, cfg = type(method), method.cfg
    names = [o.name for o in cls.options if o.type is float] + list(cls.declared("step_floats"))
    return [(cfg, name, getattr(cfg, name)) for name in dict.fromkeys(names)]


def undeclared_state(method) -> list[str]:
    """The method's attributes holding tensors or floats that its class declares neither as
    ``step_state`` nor as ``boundary_state``."""
    cls = type(method)
    known = _NOT_STATE | set(cls.declared("step_state")) | set(cls.declared("boundary_state"))
    return [n for n, v in vars(method).items() if n not in known and _leaves(method, n, v)]


def _undeclared_problem(method) -> str | None:
    """One line naming the method's undeclared state and the fix, or None."""
    names = undeclared_state(method)
    if not names:
        return None
    cls = type(method).__name__
    return (
        f"{cls} holds tensors or floats it does not declare ({', '.join(map(repr, names))}): "
        f"name each in {cls}.step_state where its step reads or updates them, else in "
        f"{cls}.boundary_state (only its hooks, sampler and checkpoints read them)"
    )


class UndeclaredStateWarning(UserWarning):
    """A method holds state it does not declare, so its runs cannot share a step."""


def _get(owner, key):
    return owner[key] if isinstance(owner, (list, dict)) else getattr(owner, key)


def _set(owner, key, value) -> None:
    if isinstance(owner, (list, dict)):
        owner[key] = value
    else:
        object.__setattr__(owner, key, value)


def _model_tensors(method) -> tuple[list[tuple[nn.Module, str]], list[tuple[nn.Module, str]]]:
    """(module, name) of every parameter and every buffer of the method's models, in order."""
    params, buffers = [], []
    for model in method.models.values():
        for module in model.modules():
            params += [(module, n) for n, p in module._parameters.items() if p is not None]
            buffers += [(module, n) for n, b in module._buffers.items() if b is not None]
    return params, buffers


def state_signature(method) -> tuple:
    """The shapes and dtypes of the method's step state: runs fuse only where these agree (a
    per-sample table laid out by its data's class sizes cannot be padded to another run's).

    A method holding tensors or floats it does not declare gets a signature of its own, after a
    warning, so each of its runs steps alone, as it would trained alone: fused, the step would
    read the lead run's undeclared values for every run, silently."""
    problem = _undeclared_problem(method)
    if problem:
        warnings.warn(f"{problem}; its runs train one by one", UndeclaredStateWarning, stacklevel=2)
        return ("undeclared", id(method))
    return tuple(
        (str(key), tuple(v.shape), v.dtype)
        for _, key, v in _state_slots(method)
        if isinstance(v, torch.Tensor)
    )


class FusedStep:
    """The training step of K methods of one class, shapes and stage plan, as one computation."""

    def __init__(self, methods: list):
        self.methods = list(methods)
        self.lead = self.methods[0]
        self.K = len(self.methods)
        self.compiled: list[str] = []
        self._graphed = False
        self._compute = self.compute
        self._step = self.step_on_batch
        self._stack_models()
        self.adam: StackedAdam | None = None
        self.sync_in()

    # -- stacking ------------------------------------------------------------------------------
    def _stack_models(self) -> None:
        """Stack every parameter and buffer over the runs; each run's becomes a view of its row."""
        per_run = [_model_tensors(m) for m in self.methods]
        self.param_slots, self.buffer_slots = per_run[0]
        self.run_param_slots = [params for params, _ in per_run]  # each run's, for its gradients
        self.params, self.buffers = [], []
        for j in range(len(self.param_slots)):
            tensors = [getattr(m, n) for m, n in (slots[0][j] for slots in per_run)]
            stacked = torch.stack([t.detach() for t in tensors]).requires_grad_()
            for k, t in enumerate(tensors):
                t.data = stacked.detach()[k]
            self.params.append(stacked)
        for j in range(len(self.buffer_slots)):
            tensors = [getattr(m, n) for m, n in (slots[1][j] for slots in per_run)]
            stacked = torch.stack([t.detach() for t in tensors])
            for k, t in enumerate(tensors):
                t.data = stacked[k]
            self.buffers.append(stacked)

    def release(self) -> None:
        """Give every run its own storage back (before the group is rebuilt without some runs)."""
        self.sync_out()
        for method in self.methods:
            params, buffers = _model_tensors(method)
            for m, n in params + buffers:
                t = getattr(m, n)
                t.data = t.data.clone()
            for opt in method.optimizers.values():
                for state in opt.state.values():
                    state.update({key: v.clone() for key, v in state.items()})
            method.graphed = False  # no longer stepped through the group's graphs

    def sync_in(self) -> None:
        """Take the methods' own tensors and differing floats into the stacked state (after a
        boundary, a resume or a stage change, which may have changed or replaced them)."""
        for method in self.methods:  # a hook may have added some (fusible_parts checked before)
            problem = _undeclared_problem(method)
            if problem:
                raise UserError(f"these runs cannot share a step: {problem}")
        per_run = [_state_slots(m) + _setting_slots(m) for m in self.methods]
        lead = per_run[0]
        if any(len(s) != len(lead) for s in per_run):
            raise ValueError("the runs' methods hold different state; they cannot be fused")
        self.adam = StackedAdam.rebuilt(self.adam, self.methods, self.run_param_slots, self.params)
        previous = getattr(self, "_stacked_by_slot", {})
        self._stacked_by_slot: dict[tuple, torch.Tensor] = {}
        self.state_slots, self.state = [], []
        stacked_of: dict[int, torch.Tensor] = {}  # one tensor reached twice is stacked once
        for j, (owner, key, value) in enumerate(lead):
            values = [s[j][2] for s in per_run]
            if isinstance(value, torch.Tensor) and id(value) in stacked_of:
                self.state.append(stacked_of[id(value)])
            elif isinstance(value, torch.Tensor):
                if any(v.dtype != value.dtype or v.shape != value.shape for v in values):
                    raise ValueError(f"state {key!r} differs in shape or dtype between the runs")
                stacked = torch.stack([v.detach() for v in values])
                self.state.append(self._kept((id(owner), key), stacked, previous))
                stacked_of[id(value)] = self.state[-1]
            elif any(v != value for v in values):
                device = self.params[0].device
                stacked = torch.tensor(values, dtype=torch.float32, device=device)
                self.state.append(self._kept((id(owner), key), stacked, previous))
            else:
                continue
            self.state_slots.append([s[j] for s in per_run])  # (owner, key, value) of each run

    def _kept(self, slot: tuple, stacked: torch.Tensor, previous: dict) -> torch.Tensor:
        """``stacked``'s values in the tensor the slot had before, where it fits: a captured
        graph holds the very tensors it was recorded with."""
        old = previous.get(slot)
        if old is not None and old.shape == stacked.shape and old.dtype == stacked.dtype:
            stacked = old.copy_(stacked)
        self._stacked_by_slot[slot] = stacked
        return stacked

    def sync_out(self) -> None:
        """Copy the stacked state back into each run's own tensors (before they are read)."""
        for stacked, per_run in zip(self.state, self.state_slots):
            for k, (_, _, value) in enumerate(per_run):
                if isinstance(value, torch.Tensor):
                    value.copy_(stacked[k])

    @contextlib.contextmanager
    def _swapped(self, params, buffers, state):
        """The lead method reading one run's slice (vmap's batched tensors) in place of its own."""
        saved = []
        for (module, name), value in zip(self.param_slots, params):
            saved.append((module._parameters, name, module._parameters[name]))
            module._parameters[name] = value
        for (module, name), value in zip(self.buffer_slots, buffers):
            saved.append((module._buffers, name, module._buffers[name]))
            module._buffers[name] = value
        state_saved = [per_run[0] for per_run in self.state_slots]  # the lead's own
        for (owner, key, _), value in zip(state_saved, state):
            _set(owner, key, value)
        try:
            yield
            replaced = [
                key for (owner, key, _), v in zip(state_saved, state) if _get(owner, key) is not v
            ]
        finally:
            for table, name, value in saved:
                table[name] = value
            for owner, key, own in state_saved:
                _set(owner, key, own)
        if replaced:  # the update went to a tensor of this call alone, lost as it returns
            raise UserError(
                f"{type(self.lead).__name__}'s step replaced {', '.join(map(repr, replaced))} of "
                "its step_state; update it in place (copy_, index_put_) so fused runs keep it"
            )

    # -- the step ------------------------------------------------------------------------------
    def compute(self, xs, ys, idxs, draws):
        """Every run's loss, terms and flags: the lead's ``compute`` vmapped over the runs."""
        names: list[tuple[str, ...]] = []

        def one(params, buffers, state, x, y, idx, draws):
            with self._swapped(params, buffers, state):
                loss, term_names, values, finite, applied = self.lead.compute(x, y, idx, draws)
            names.append(term_names)
            return loss, values, finite, applied

        loss, values, finite, applied = vmap(one, randomness="error")(
            self.params, self.buffers, self.state, xs, ys, idxs, draws
        )
        return loss, names[0], values, finite, applied

    def step_on_batch(self, xs, ys, idxs, draws) -> StepOutput:
        """One step of every run: as ``Method.step_on_batch``, with the loss, the BatchNorm
        statistics and the skip flags per run, then each run's own optimizer step."""
        saved_buffers = [b.clone() for b in self.buffers]
        with batched_products(not self.lead.cfg.fused_exact):
            loss, names, values, finite, applied = self._compute(xs, ys, idxs, draws)
            for p in self.params:
                p.grad = None
            loss.sum().backward()
        for b, saved in zip(self.buffers, saved_buffers):
            keep = applied.view(-1, *[1] * (b.dim() - 1))
            b.copy_(torch.where(keep, b, saved))
        for k in range(self.K):
            for (module, name), stacked in zip(self.run_param_slots[k], self.params):
                getattr(module, name).grad = None if stacked.grad is None else stacked.grad[k]
        alone = applied
        if self.adam is not None:  # one kernel for the group until a run's step does not apply
            self.adam.apart.logical_or_(~applied.all())
            self.adam.step(self.adam.apart.float())
            alone = applied & self.adam.apart
        for k, method in enumerate(self.methods):
            method.optimizer_step(alone[k])
        return StepOutput(names, values, finite, applied)

    def update(self, xs, ys, idxs, step: int) -> list[StepOutput]:
        """One step of every run (``Method.update`` for K runs): each run's draws, the fused step,
        each run's LR schedule; returns each run's ``StepOutput``, marked ``fused`` (built here,
        outside a captured graph, so a replayed step is counted too)."""
        draws = [m.draw(ys.shape[1], step) for m in self.methods]
        if any(tuple(d) != tuple(draws[0]) for d in draws):
            raise ValueError("the runs drew different things at one step; they cannot be fused")
        stacked = {name: torch.stack([d[name] for d in draws]) for name in draws[0]}
        out = self._step(xs, ys, idxs, stacked)
        for method in self.methods:
            method._schedule(step)
        return [
            StepOutput(out.names, out.values[k], out.finite[k], out.applied[k], fused=True)
            for k in range(self.K)
        ]

    # -- what ``accelerate`` compiles and captures -------------------------------------------
    @property
    def stage(self):
        return self.lead.stage

    @property
    def on_device(self) -> bool:
        """Every run's optimizer step reads nothing on the host (fused Adam)."""
        return all(m.on_device for m in self.methods)

    @property
    def graphed(self) -> bool:
        return self._graphed

    @graphed.setter
    def graphed(self, on: bool) -> None:
        """The group's step replays as CUDA graphs, so each run's ``compute`` inside it does
        too (autocast keeps no cast weights across replays)."""
        self._graphed = on
        for m in self.methods:
            m.graphed = on


class StackedAdam:
    """The fused Adam of every run of a group as one kernel call per parameter group.

    Built at a boundary (``build``: host reads allowed) where each run's optimizers are fused Adam
    over its rows of the same stacked parameters, in the same order, with equal settings,
    learning rates, schedules and step counts: these then stay equal until the next boundary, so
    one call with the first run's learning rate computes every run's step. A parameter whose row
    fills whole vectors of the kernel (``WHOLE`` elements) is stepped as the stacked tensor, its
    moments and step counts stacked too (each run's state holds views of its rows); the others
    go into the same call as each run's own tensor, since the kernel runs the last elements of a
    tensor outside its vector loop and those must round as a lone run's do.
    """

    # elements per row that keep every row's elements in the vector lanes a lone run uses them
    # in: a multiple of any CPU vector width the kernel runs at (AVX-512: 16 floats, unrolled)
    WHOLE = 64

    def __init__(self, calls: list[dict]):
        self.calls = calls  # per param group: the tensors of its one kernel call
        # set on the device by the first step a run skips: from then on the runs' step counts
        # differ, so each run steps alone (the group's call skips) until a rebuild
        self.apart = torch.zeros((), dtype=torch.bool, device=calls[0]["params"][0].device)

    @classmethod
    def rebuilt(cls, old: StackedAdam | None, *args) -> StackedAdam | None:
        """``build`` at a boundary, keeping ``old`` (the tensors a captured step holds) where
        the runs still share its calls, and keeping it skipped where they no longer can."""
        new = cls.build(*args)
        if old is None:
            return new
        if new is None or not old.same_calls(new):
            old.apart.fill_(True)
            return old if new is None else new
        old.apart.fill_(False)
        return old

    def same_calls(self, other: StackedAdam) -> bool:
        def ids(calls):
            return [
                [id(t) for key in ("params", "exp_avg", "exp_avg_sq") for t in c[key]]
                for c in calls
            ]

        return ids(self.calls) == ids(other.calls)

    @classmethod
    def build(cls, methods, run_param_slots, params) -> StackedAdam | None:
        """The group's stacked Adam, or None where the runs' optimizers cannot share a kernel."""
        layouts = [_adam_layout(m, slots) for m, slots in zip(methods, run_param_slots)]
        if any(layout is None or layout[0] != layouts[0][0] for layout in layouts):
            return None
        calls = []
        for g, (_, indices) in enumerate(layouts[0][0]):
            run_groups = [layout[1][g] for layout in layouts]
            if len({_settings(*run) for run in run_groups}) != 1:
                return None
            call = dict(params=[], exp_avg=[], exp_avg_sq=[], counts=[], kernel_counts=[])
            call["group"] = run_groups[0][1]  # the first run's: its settings and learning rate
            for i, j in enumerate(indices):
                if params[j][0].numel() % cls.WHOLE == 0:
                    m, v, counts = _stack_state(run_groups, i)
                    _add(call, params[j], m, v, counts, counts[0])
                    continue
                for opt, group, _ in run_groups:
                    p = group["params"][i]
                    state = opt.state[p]
                    _add(call, p, state["exp_avg"], state["exp_avg_sq"], state["step"])
            calls.append(call)
        return cls(calls) if calls else None

    @torch.no_grad()
    def step(self, skip: torch.Tensor) -> None:
        """Every run's Adam step, unless ``skip`` (a float 0-d tensor) is 1: then none."""
        for c in self.calls:
            live = [i for i, p in enumerate(c["params"]) if p.grad is not None]
            if live:
                fused_adam(
                    c["group"],
                    *([c[key][i] for i in live] for key in ("params", "exp_avg", "exp_avg_sq")),
                    [c["counts"][i] for i in live],
                    skip,
                    kernel_counts=[c["kernel_counts"][i] for i in live],
                )


def _add(call: dict, param, exp_avg, exp_avg_sq, counts, kernel_counts=None) -> None:
    """One tensor of a kernel call, with its moments, the step counts the call raises and the
    count the kernel reads (the same 0-d tensor, or the first row of a stacked parameter's)."""
    values = (
        param,
        exp_avg,
        exp_avg_sq,
        counts,
        counts if kernel_counts is None else kernel_counts,
    )
    for key, value in zip(("params", "exp_avg", "exp_avg_sq", "counts", "kernel_counts"), values):
        call[key].append(value)


def _adam_layout(method, param_slots) -> tuple[tuple, list] | None:
    """(shape, per param group (optimizer, group, schedule)) of a run's optimizers: the shape
    names each param group's stacked parameters by index; None unless every optimizer is a
    fused Adam with its state built."""
    if not method.on_device:  # every optimizer fused (optim.is_device_steppable)
        return None
    index = {id(getattr(module, name)): j for j, (module, name) in enumerate(param_slots)}
    shape, groups = [], []
    for name, opt in method.optimizers.items():
        schedule = method.schedulers.get(name)
        schedule = None if schedule is None else tuple(sorted(schedule.state_dict().items()))
        for group in opt.param_groups:
            if any(id(p) not in index or not opt.state.get(p) for p in group["params"]):
                return None
            shape.append((name, tuple(index[id(p)] for p in group["params"])))
            groups.append((opt, group, schedule))
    return tuple(shape), groups


def _settings(opt, group: dict, schedule) -> tuple:
    """What one kernel call must share until the next boundary: the settings, the learning
    rate's value and dtype, its schedule, and each parameter's step count (host reads)."""
    lr = group["lr"]
    return (
        tuple(group["betas"]),
        group["eps"],
        group["weight_decay"],
        bool(group.get("decoupled_weight_decay")),
        bool(group.get("amsgrad")),
        float(lr),
        lr.dtype if isinstance(lr, torch.Tensor) else None,
        schedule,
        tuple(float(opt.state[p]["step"]) for p in group["params"]),
    )


def _stack_state(run_groups, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Parameter ``i`` of a param group: its moments and step counts stacked over the runs, each
    run's state then holding views of its rows (kept where they already are)."""
    states = [opt.state[group["params"][i]] for opt, group, _ in run_groups]
    out = []
    for key in ("exp_avg", "exp_avg_sq", "step"):
        tensors = [s[key] for s in states]
        base = tensors[0]._base
        if base is not None and all(t._base is base for t in tensors) and len(base) == len(tensors):
            if all(t.data_ptr() == base[k].data_ptr() for k, t in enumerate(tensors)):
                out.append(base)
                continue
        stacked = torch.stack([t.detach() for t in tensors])
        for k, s in enumerate(states):
            s[key] = stacked[k]
        out.append(stacked)
    return tuple(out)
