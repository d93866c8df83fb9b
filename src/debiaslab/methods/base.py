"""The interface every method implements (DomainBed style: one class, one small ``loss``)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
import torch.nn as nn

from debiaslab.methods.optim import (
    StepDecay,
    adam_step,
    init_adam_state,
    is_device_steppable,
    make_adam,
)
from debiaslab.methods.options import Option
from debiaslab.models import build_model


@dataclass(frozen=True)
class Stage:
    """A part of training: ``steps`` steps of the method's ``loss`` that train the ``models`` named
    (the others get no gradient). Evaluations in a stage score those models; only the last stage,
    always called ``main``, is scored by the selection rules."""

    name: str
    steps: int
    models: tuple[str, ...]


class StagePlan:
    """A method's stages laid end to end on one step count (the checkpoints' and logs' ``step``)."""

    def __init__(self, stages):
        self.stages = tuple(stages)
        self.ends = list(itertools.accumulate(s.steps for s in self.stages))
        self.total = self.ends[-1]
        self.main_start = self.start(len(self.stages) - 1)

    def start(self, k: int) -> int:
        """The number of steps done before stage ``k`` begins."""
        return self.ends[k - 1] if k else 0

    def index(self, done: int) -> int:
        """The stage the step after ``done`` steps belongs to (the last stage once all are done)."""
        return next((k for k, end in enumerate(self.ends) if done < end), len(self.stages) - 1)


@dataclass
class StageData:
    """What a stage's hooks may read: the training images (on the device) and their class labels,
    never their bias labels, with the evaluation transform."""

    images: torch.Tensor
    targets: torch.Tensor
    prepare: object  # uint8 images -> model inputs (the evaluation transform)
    batch_size: int

    @torch.no_grad()
    def logits(self, predict) -> torch.Tensor:
        """``predict`` (prepared inputs -> logits) on every training image, in batches, as float."""
        return torch.cat(
            [
                predict(self.prepare(self.images[i : i + self.batch_size])).float()
                for i in range(0, len(self.images), self.batch_size)
            ]
        )


@dataclass
class StepOutput:
    """What one training step leaves for the loop, all on the device (read only at boundaries)."""

    names: tuple[str, ...]  # the loss terms' names
    values: torch.Tensor  # [len(names)]: their values, detached
    finite: torch.Tensor  # [len(names)] bool: each term was finite
    applied: torch.Tensor  # 0-d bool: the step moved the weights and the per-sample state
    # made by a step several runs took as one (``fused.FusedStep``): what results.json's
    # fused_steps counts, so a run records a fusion only where a fused step ran
    fused: bool = False

    @property
    def terms(self) -> dict[str, torch.Tensor]:
        return dict(zip(self.names, self.values.unbind()))


class Method:
    """A training method owns its models, optimizers, LR schedulers and per-sample state.

    Subclasses set ``model_names`` / ``head_inputs`` and implement ``loss`` (the loss of one batch
    and its named terms, updating any per-sample state) and ``predict`` (a static function of the
    models, so a checkpoint can be evaluated without rebuilding the training state). Randomness a
    step needs comes from ``draw``, outside the per-batch computation, so that computation is one
    graph that ``torch.compile`` can capture whole.
    """

    name = ""
    model_names: tuple[str, ...] = ("model",)
    head_inputs = 1
    uses_bias_labels = False  # True only for methods that read bias labels while training
    options: tuple[Option, ...] = ()  # the method's own settings (TrainConfig fields, flags)
    # The papers' recipe of the method (``preset``): TrainConfig field -> value, under a dataset
    # or a (dataset, ratio), the latter laid over the former
    presets: dict = {}
    # A method that plugs into another (BiasEnsemble) takes that one's preset and adds its own
    # options' defaults (presets.py)
    preset_base: type[Method] | None = None
    # Other published recipes of the method beside the papers': dataset -> recipe name ->
    # {"config": TrainConfig changes over the paper preset, "source": where they come from}; each
    # is a preset per ratio named after its source, compared with the paper's row (presets.py)
    recipes: dict = {}
    color: str | None = None  # its line's colour where runs are compared (None: matplotlib's cycle)
    # What fused runs (fused.py) take from each run into the one step, declared because a walk
    # over the attributes cannot tell what the step reads. Each class names only its own; the
    # class's declaration is the union over it and its bases (``declared``).
    # - step_state: attributes whose tensors and floats (through objects, lists, dicts) the step
    #   reads or updates in place: stacked over the runs while steps run
    step_state: tuple[str, ...] = ("halted",)
    # - boundary_state: attributes holding tensors only the boundaries read (stage hooks,
    #   sampling, checkpoints), never the step: they stay with their run
    boundary_state: tuple[str, ...] = ()
    # - step_floats: the general TrainConfig floats the step reads (the method's own float
    #   ``options`` count already): where runs differ in one, the step reads its run's value
    step_floats: tuple[str, ...] = ()

    def __init__(
        self,
        cfg,
        models: dict[str, nn.Module],
        train_targets: torch.Tensor,
        num_classes: int,
        generator: torch.Generator,
        train_biases: torch.Tensor | None = None,
    ):
        """``train_biases`` is given to methods with ``uses_bias_labels`` only."""
        self.cfg = cfg
        self.stage = self.stages(cfg)[-1]
        self.models = models
        self.num_classes = num_classes
        self.generator = generator
        device = train_targets.device
        self.amp = cfg.bf16(device.type)  # bf16 autocast of the forward pass
        self.device_type = device.type
        self.optimizers = {n: self.make_optimizer(n, m) for n, m in models.items()}
        self.schedulers = (
            {
                n: StepDecay(o, step_size=cfg.lr_decay_step, gamma=cfg.lr_gamma)
                for n, o in self.optimizers.items()
            }
            if cfg.use_lr_decay
            else {}
        )
        # under --on_nonfinite stop: set by the first non-finite step, after which no step applies
        self.halted = torch.zeros((), dtype=torch.bool, device=device)
        self.on_device = all(is_device_steppable(o) for o in self.optimizers.values())
        self.buffers = BufferSnapshot([b for m in models.values() for b in m.buffers()])
        # what ``update`` calls: the step as written, or compiled or captured from the loop
        # (``accelerate``: a method is one run's step and imports none of that)
        self._compute = self.compute
        self._step = self.step_on_batch
        self.compiled: list[str] = []  # the parts of the step that run compiled
        self.graphed = False  # the step replays as CUDA graphs

    @classmethod
    def declared(cls, name: str) -> tuple[str, ...]:
        """Declaration ``name`` (``step_state``, ...) of the class and all its bases, bases first:
        a subclass adds its own names without restating (or forgetting) its bases'."""
        names: dict[str, None] = {}
        for klass in reversed(cls.__mro__):
            names.update(dict.fromkeys(klass.__dict__.get(name, ())))
        return tuple(names)

    @classmethod
    def model_heads(cls, cfg) -> dict[str, int]:
        """Every model the loop builds for the method, name -> ``head_inputs``: ``model_names``
        (those ``predict`` reads, and a checkpoint of the method keeps for evaluation), then any
        helper models only training uses, whose number may depend on the config."""
        return {name: cls.head_inputs for name in cls.model_names}

    @classmethod
    def model_architecture(cls, cfg, name: str) -> str:
        """The architecture (``models.MODELS`` key) of model ``name``: ``cfg.model`` unless the
        method's models differ (DeNetDM's deep and shallow branches)."""
        return cfg.model

    @classmethod
    def build_models(cls, cfg, num_classes: int, in_shape) -> dict[str, nn.Module]:
        """Fresh models of every name in ``model_heads``, in that order (the seed decides them)."""
        return {
            name: build_model(cls.model_architecture(cfg, name), num_classes, heads, in_shape)
            for name, heads in cls.model_heads(cfg).items()
        }

    def make_optimizer(self, name: str, model: nn.Module) -> torch.optim.Optimizer:
        """Model ``name``'s optimizer: Adam at ``optimizer_settings(name)``. A method whose authors
        train with another returns it here; one without the fused Adam kernel costs the step a
        host read (``optimizer_step``) and cannot be captured as a CUDA graph."""
        return make_adam(model.parameters(), *self.optimizer_settings(name))

    def optimizer_settings(self, name: str) -> tuple[float, float]:
        """Adam's learning rate and weight decay for model ``name``: the run's, unless the method
        trains a stage's models with its own."""
        return self.cfg.lr, self.cfg.weight_decay

    # -- stages --------------------------------------------------------------------------------
    @classmethod
    def stages(cls, cfg) -> tuple[Stage, ...]:
        """The parts of training, in order; the last is ``main``, of ``cfg.num_steps`` steps."""
        return (Stage("main", cfg.num_steps, cls.model_names),)

    @classmethod
    def stage_evaluation_steps(cls, cfg, stage: Stage) -> tuple[int, ...] | None:
        """The updates into earlier stage ``stage`` after which it is evaluated (each evaluation
        reaching ``stage_evaluated``), and only those; None: every ``valid_freq`` steps and at the
        stage's end."""
        return None

    def begin_stage(self, stage: Stage, data: StageData) -> None:
        """Called as ``stage`` starts (eager: may read the host). Also on resume inside it, so it
        must only set up what the method's saved state does not hold."""
        self.stage = stage

    def end_stage(self, stage: Stage, data: StageData) -> None:
        """Called as ``stage`` ends, before the next begins (eager): e.g. score the training set."""

    def stage_evaluated(self, stage: Stage, record: dict) -> None:
        """Called after each evaluation of an earlier (not main) stage with ``{"step", "valid"}``
        (the validation metrics only: no stage selects on test unless ``reads_test_labels``, when
        ``"test"`` is there too), e.g. to keep the stage's best-validation models."""

    @classmethod
    def training_reads(cls, cfg) -> tuple[str, ...]:
        """The labels training reads beyond the training split's class labels (names of
        ``selection.READS``): the training bias labels of a method that ``uses_bias_labels``, the
        labels of the split an earlier stage is picked on. Recorded in config.json and
        results.json; every figure of the run carries them (collect's marks)."""
        return ("train_bias_labels",) if cls.uses_bias_labels else ()

    @classmethod
    def reads_test_labels(cls, cfg) -> bool:
        """True for an oracle option that picks an earlier stage's state on the test split (the
        stage then gets the test metrics too)."""
        return any(read.startswith("test_") for read in cls.training_reads(cfg))

    def sample_counts(self) -> torch.Tensor | None:
        """How many times each training sample is drawn per epoch in the current stage (None: once)."""
        return None

    def sample_probabilities(self) -> torch.Tensor | None:
        """Each training sample's relative chance of being drawn in the current stage, batches then
        drawn with replacement (None: shuffled epochs)."""
        return None

    def eval_predict(self, x: torch.Tensor) -> torch.Tensor:
        """Logits the current stage's evaluations score (in the main stage: ``predict``)."""
        return self.predict(self.models, x)

    def bias_logits(self, x: torch.Tensor) -> torch.Tensor | None:
        """The logits of the method's own biased branch, the part trained to read the bias (None
        for a method without one). The pseudo-unbiased selection rule groups validation samples by
        its argmax instead of their bias label."""
        return None

    @classmethod
    def resolve_options(cls, cfg) -> dict:
        """Defaults of ``options`` that depend on the rest of the resolved ``cfg`` (an option
        left None after its declared default is filled): name -> value."""
        return {}

    @classmethod
    def validate(cls, cfg) -> None:
        """Checks across the method's settings (each option's own range is checked already);
        raises UserError."""

    @classmethod
    def step_settings(cls, cfg) -> dict[str, tuple[int, str]]:
        """The settings that act at a main-stage step: name -> (that step, what happens then).
        One at or beyond ``num_steps`` never acts; the run warns (preflight.setting_warnings)."""
        if not cfg.use_lr_decay:
            return {}
        return {
            "lr_decay_step": (cfg.curr_step + cfg.lr_decay_step, "the learning rate's first decay")
        }

    @classmethod
    def swap_start(cls, cfg) -> int | None:
        """The main-stage step from which the method swaps features across the batch (the
        learning curves mark it), or None for a method that never does."""
        return None

    @classmethod
    def preset(cls, dataset: str, percent: str) -> dict:
        """The TrainConfig field values the papers set for the method on ``dataset`` at ratio
        ``percent``, over the dataset's common settings and the method's options' defaults
        (presets.py lays them in that order)."""
        return {**cls.presets.get(dataset, {}), **cls.presets.get((dataset, percent), {})}

    @classmethod
    def average_start(cls, cfg) -> int:
        """The main-stage step weight averaging starts at unless ``--wa_start`` says otherwise."""
        return 0

    def flagged_conflicting(self) -> torch.Tensor | None:
        """The training samples the method has singled out as likely bias-conflicting at the end
        of a stage (JTT's error set, ...), as a bool mask; logged against the true bias labels."""
        return None

    # -- the per-step hooks a method implements -------------------------------------------------
    def draw(self, batch_size: int, step: int) -> dict:
        """What step ``step`` (0-based) draws from the method's generator or decides by the step
        count, passed to ``loss``; a change of its keys is a new graph, so keep them few."""
        return {}

    def loss(
        self, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor, draws: dict
    ) -> tuple[torch.Tensor, dict]:
        """The training loss of one batch and its named scalar terms (not detached, ``loss`` among
        them). May update per-sample state; never reads a tensor on the host."""
        raise NotImplementedError

    # -- one training step ------------------------------------------------------------------------
    def update(self, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor, step: int) -> StepOutput:
        """One training step on a batch: the step's draws, the step itself (eager, compiled or a
        CUDA graph replay), then the learning-rate schedule."""
        out = self._step(x, y, idx, self.draw(len(y), step))
        self._schedule(step)
        return out

    def step_on_batch(
        self, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor, draws: dict
    ) -> StepOutput:
        """The step proper, with no host round-trip where the optimizers are fused (so a CUDA
        graph can hold it whole).

        A step whose loss terms are not all finite moves no weight, no BatchNorm statistic, no
        optimizer moment and no per-sample state; the LR schedule still counts it. Under
        ``on_nonfinite == "stop"`` no later step applies either, until the loop reads the flags
        at its next boundary and stops.
        """
        saved_buffers = self.buffers.take()  # BatchNorm statistics: the forward moves them
        loss, names, values, finite, applied = self._compute(x, y, idx, draws)
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=True)
        loss.backward()
        self.buffers.keep(applied, saved_buffers)  # after backward, which reads them
        self.optimizer_step(applied)
        return StepOutput(names, values, finite, applied)

    def compute(self, x, y, idx, draws):
        """The per-batch computation (forwards, loss terms, per-sample state), masked on the device.

        Returns the loss, its terms' names and detached values, which terms were finite and
        whether the step applies; where it does not, the per-sample state is put back as it was.
        """
        saved_rows = self.sample_state(idx)
        # a CUDA graph must not keep autocast's cast weights across replays (PyTorch's graph notes)
        with torch.autocast(
            self.device_type, dtype=torch.bfloat16, enabled=self.amp, cache_enabled=not self.graphed
        ):
            loss, terms = self.loss(x, y, idx, draws)
        values = torch.stack([v.detach().float() for v in terms.values()])
        finite = torch.isfinite(values)
        applied = finite.all() & ~self.halted
        if self.cfg.on_nonfinite == "stop":
            self.halted.copy_(~applied)
        self.keep_sample_state(idx, saved_rows, applied)
        return loss, tuple(terms), values, finite, applied

    def optimizer_step(self, applied: torch.Tensor) -> None:
        """Step every optimizer unless ``applied`` is false (read on the device where it can be)."""
        optimizers = list(self.optimizers.values())
        if self.on_device:
            adam_step(optimizers, (~applied).float())
        elif bool(applied):  # an optimizer without the fused kernel: one host read per step
            for opt in optimizers:
                opt.step()

    def _schedule(self, step: int) -> None:
        """The schedule counts from ``curr_step``: schedulers step once per iteration with
        ``step >= curr_step``, so the LR first decays at ``curr_step + lr_decay_step``. A step that
        did not apply still counts: the schedule follows the iteration count."""
        if self.schedulers and step >= self.cfg.curr_step:
            for s in self.schedulers.values():
                s.step()

    def lr(self) -> float:
        return float(next(iter(self.optimizers.values())).param_groups[0]["lr"])

    def train(self) -> None:
        for m in self.models.values():
            m.train()

    def eval(self) -> None:
        for m in self.models.values():
            m.eval()

    # -- evaluation ---------------------------------------------------------------------------
    @staticmethod
    def predict(models: dict[str, nn.Module], x: torch.Tensor) -> torch.Tensor:
        return models["model"](x)

    def sample_state(self, idx: torch.Tensor):
        """A copy of the per-sample state of samples ``idx``, taken before a step changes it."""
        return None

    def keep_sample_state(self, idx: torch.Tensor, saved, keep: torch.Tensor) -> None:
        """Where ``keep`` (0-d bool, on the device) is false, put ``saved`` back."""

    def sample_weights(self) -> torch.Tensor | None:
        """The method's per-training-sample weight W (its own guess of "bias-conflicting"), if any."""
        return None

    # -- state --------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "models": {n: m.state_dict() for n, m in self.models.items()},
            "optimizers": {n: o.state_dict() for n, o in self.optimizers.items()},
            "schedulers": {n: s.state_dict() for n, s in self.schedulers.items()},
            "generator": self.generator.get_state(),
            "extra": self.extra_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        for n, m in self.models.items():
            m.load_state_dict(state["models"][n])
        for n, o in self.optimizers.items():
            load_optimizer_state(o, state["optimizers"][n])
        for n, s in self.schedulers.items():
            s.load_state_dict(state["schedulers"][n])
        if "generator" in state:
            self.generator.set_state(state["generator"])
        self.load_extra_state(state.get("extra", {}))

    def extra_state(self) -> dict:
        return {}

    def load_extra_state(self, state: dict) -> None:
        pass


class BufferSnapshot:
    """Copies of the models' buffers (BatchNorm statistics) taken and put back in a few kernels:
    one flat copy per dtype, not one per buffer (a ResNet18 has ~60 buffers, and on a GPU each
    kernel launch costs about as much as the small kernel itself)."""

    def __init__(self, buffers: list[torch.Tensor]):
        groups: dict[torch.dtype, list[torch.Tensor]] = {}
        for b in buffers:
            groups.setdefault(b.dtype, []).append(b)
        self.groups = list(groups.values())

    def take(self) -> list[torch.Tensor]:
        return [_flat(group) for group in self.groups]

    def keep(self, keep: torch.Tensor, saved: list[torch.Tensor]) -> None:
        """Where ``keep`` (0-d bool, on the device) is false, put the ``saved`` values back."""
        for group, flat in zip(self.groups, saved):
            chosen = torch.where(keep, _flat(group), flat)
            parts = chosen.split([b.numel() for b in group])
            torch._foreach_copy_(group, [p.view_as(b) for p, b in zip(parts, group)])


def _flat(tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def load_optimizer_state(opt: torch.optim.Optimizer, state: dict) -> None:
    """``opt.load_state_dict``, keeping its own learning-rate tensors (filled with the saved
    values): a compiled step reads those very tensors, and checkpoints written before the learning
    rate was a tensor hold floats."""
    own_lrs = [g["lr"] for g in opt.param_groups]
    opt.load_state_dict(state)
    for group, own in zip(opt.param_groups, own_lrs):
        if isinstance(own, torch.Tensor):
            own.fill_(float(group["lr"]))
            group["lr"] = own
    if is_device_steppable(opt):
        init_adam_state(opt)
