"""The resolved configuration of a training run and the per-dataset defaults of the paper."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from debiaslab.errors import UserError
from debiaslab.methods import METHODS, on_register
from debiaslab.methods.losses import GCE_FORMS
from debiaslab.methods.options import value_problem

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)

# The paper's per-dataset settings (algorithms.md): model, batch size, image size, normalisation,
# train-time augmentation, and the Vanilla learning rate (also the LfF default).
# Pixel scaling: the reference divided CMNIST pixels by 255 twice.
INPUT_SCALES = {"unit": 1.0 / 255.0, "reference": 1.0 / 255.0**2}
DATASET_DEFAULTS = {
    # CMNIST keeps the reference's pixel scaling (x/255/255): measured here, DisEnt at 0.5pct ends
    # ~15 points lower with x/255 under the paper's hyper-parameters (see docs/methods/index.md, "Faithfulness notes").
    "cmnist": dict(
        model="mlp",
        batch_size=256,
        lr=0.01,
        image_size=None,
        normalize=False,
        augment=False,
        input_scale="reference",
    ),
    "cifar10c": dict(
        model="resnet18",
        batch_size=256,
        lr=0.001,
        image_size=32,
        normalize=True,
        augment=True,
        input_scale="unit",
    ),
    "bffhq": dict(
        model="resnet18",
        batch_size=64,
        lr=0.0001,
        image_size=224,
        normalize=True,
        augment=True,
        input_scale="unit",
    ),
    # BAR: images of many sizes, resized once to 224; the BFFHQ recipe (no paper setting exists for DisEnt on BAR)
    "bar": dict(
        model="resnet18",
        batch_size=64,
        lr=0.0001,
        image_size=224,
        normalize=True,
        augment=True,
        input_scale="unit",
    ),
}
# Fields that say how a run is executed or observed, not what it computes: they may change between a
# run and its resume, and they do not enter the config hash.
RUNTIME_FIELDS = frozenset(
    {
        "progress",
        "overwrite",
        "resume",
        "tensorboard",
        "wandb",
        "wandb_project",
        "device",
        "eval_batch_size",
        "keep_checkpoints",
        "best_checkpoints",
        "on_nonfinite",
        "compile",
        "cuda_graph",
        "fused_exact",
    }
)
# Where a run is written; the hash names that place, so it cannot depend on it.
LOCATION_FIELDS = frozenset({"log_dir", "exp"})
# The methods' own settings, declared by each method (Method.options), kept up to date as methods
# register (``index_method``): method -> {name: default}
METHOD_DEFAULTS: dict[str, dict] = {}
# field -> the methods it is a setting of
METHOD_FIELDS: dict[str, tuple[str, ...]] = {}
# option name -> its declaration (one Option may serve several methods: BiasEnsemble's)
METHOD_OPTIONS: dict = {}
# Fields left out of the identity where they are None (they apply to some datasets or methods
# only, or None means their default), so adding one does not change the hash of the other runs.
DATASET_SPECIFIC_FIELDS = {"palette", "wa_decay", "wa_start", "cpu_amp"}
# Options left out of the identity at their default (Option.hashed_at_default): option -> default
UNHASHED_DEFAULTS: dict = {}


def index_method(cls) -> None:
    """Records a method's options in the tables above."""
    METHOD_DEFAULTS[cls.name] = {o.name: o.default for o in cls.options}
    for option in cls.options:
        METHOD_OPTIONS[option.name] = option
        owners = METHOD_FIELDS.get(option.name, ())
        METHOD_FIELDS[option.name] = owners if cls.name in owners else (*owners, cls.name)
        if not option.in_every_config:
            DATASET_SPECIFIC_FIELDS.add(option.name)
        if not option.hashed_at_default:
            UNHASHED_DEFAULTS[option.name] = option.default


for _method in METHODS.values():
    index_method(_method)
# Colored MNIST's palettes (data/colored.py); "any" accepts whatever colours the data holds.
PALETTE_CHOICES = ("disent", "lff", "any")
COLORED_DATASETS = ("cmnist", "colored_digits")

GENERIC_DEFAULTS = dict(
    model="resnet18",
    batch_size=64,
    lr=0.001,
    image_size=None,
    normalize=True,
    augment=False,
    input_scale="unit",
)


def setting(default, *, check: str | None = None, choices: tuple = (), flag: str | bool = True):
    """A general option's declaration, beside its field and its docstring (the help): its
    default, its ``check`` (``methods/options.py``: positive, non-negative, fraction,
    probability, model, name) or ``choices``. ``flag``: how ``debiaslab train`` takes it (True:
    ``--<name>``, made from this declaration; "data": among the data flags ``test`` shares;
    "method": with the reference's method flags; False: no flag). The CLI flags, ``validate``,
    the ``sweep --set`` and ``fit`` type checks and the options table all read it."""
    return field(default=default, metadata={"check": check, "choices": choices, "flag": flag})


def field_type(f: dataclasses.Field) -> type:
    """The type a field's values have (``int`` of ``int | None``)."""
    name = str(f.type).split("|")[0].strip()
    return {"int": int, "float": float, "bool": bool, "str": str, "dict": dict}[name]


def with_method_options(cls):
    """Adds each method's declared options (``Method.options``) to ``cls`` as fields defaulting
    to None, after its own: the class a ``dataclass`` decorator then makes of it."""
    for option in METHOD_OPTIONS.values():
        cls.__annotations__[option.name] = option.annotation
        setattr(cls, option.name, option.field_default)
    return cls


def add_method_fields(cls) -> None:
    """A method registered after TrainConfig was made (``register_method``): its options join
    the tables and become fields of TrainConfig itself, so configs made from now on take them."""
    index_method(cls)
    new = [
        o for o in cls.options if o.name not in {f.name for f in dataclasses.fields(TrainConfig)}
    ]
    if not new:
        return
    for option in new:
        TrainConfig.__annotations__[option.name] = option.annotation
        setattr(TrainConfig, option.name, option.field_default)
    TrainConfig.extra = field(default_factory=dict, metadata={"flag": False})  # taken off the class
    for made in ("__init__", "__repr__", "__eq__", "__match_args__"):
        if made in TrainConfig.__dict__:  # made by the decorator: made again, with the new fields
            delattr(TrainConfig, made)
    dataclass(TrainConfig)


@dataclass
@with_method_options
class TrainConfig:
    """Everything a training run is: what to train, on which data, how, and what to keep.

    ``debiaslab train``'s flags and ``dl.fit(method, data, **options)``'s options are these
    fields. ``None`` means "the default for this dataset or method", filled in by
    :meth:`resolved` (for your own data: ResNet-18, batch 64, Adam lr 1e-3, normalisation by
    CIFAR-10's mean and deviation, no augmentation; the API page's "Your own data" says why). The
    resolved config is what config.json records. Its :meth:`identity` (runtime and location
    fields left out) and the data's checksums name the run: the same identity on the same data is
    the same run.
    """

    # what to train
    dataset: str = setting("cmnist", check="name", flag="data")
    """The dataset's name: ``cmnist``, ``cifar10c``, ``bffhq``, ``bar`` (read from ``data_dir``),
    or the name of your in-memory data (``tensor_data(name=)``); it also names the folder under
    ``log_dir``."""
    percent: str | None = setting("1pct", flag="data")
    """The bias-conflicting ratio folder of a reference-layout dataset: ``0.5pct``, ``1pct``,
    ``2pct``, ``5pct`` (None for in-memory data, which ``fit`` uses as given)."""
    method: str = setting("vanilla", flag="method")
    """The method (``debiaslab.methods.METHODS``): vanilla, lff, disent, lff_be, disent_be, jtt,
    groupdro, lc, denetdm."""
    model: str | None = setting(None, check="model")
    """The backbone (``resnet18``, ``resnet20``, ``resnet50``, ``mlp``, ... or a name given to
    ``register_model``). None: the dataset's (MLP on Colored MNIST, ResNet-18 elsewhere)."""
    data_dir: str = setting("dataset", flag="data")
    """The folder holding ``<dataset>/`` in the reference layout (``debiaslab data build``)."""
    corruption_type: int = setting(0, flag="data")
    """Corrupted CIFAR-10 only: 0 reads ``<data_dir>/cifar10c``, 1 ``<data_dir>/cifar10c_type1``."""
    palette: str | None = setting(None, choices=PALETTE_CHOICES, flag="data")
    """Colored MNIST only: the colours the data must have, ``disent`` (the paper's data, the
    default), ``lff`` or ``any``; other data is refused."""
    manifest: str | None = setting(None, flag="data")
    """Your own dataset as a CSV with the columns ``path,target[,bias][,split]``."""
    image_folder: str | None = setting(None, flag="data")
    """Your own dataset as folders ``<dir>/train|valid|test/<class>/<image>``."""
    log_dir: str = "log"
    """Where runs are written: ``<log_dir>/<dataset>/<exp>``."""
    exp: str = setting("debugging", check="name")
    """The run's folder name under ``<log_dir>/<dataset>/`` (``fit``: the method's name with
    the ids of the data and of the settings)."""
    seed: int = 0
    """Seeds the models' initialisation, the batches and every random draw of the method."""
    device: str = "auto"
    """``auto`` (CUDA when there is one), ``cpu``, ``cuda`` or ``cuda:N``."""

    # optimisation
    num_steps: int = setting(50_000, check="positive")
    """Steps of the main stage (a method with an earlier stage, JTT, BiasEnsemble, DeNetDM, adds
    its steps)."""
    batch_size: int | None = setting(None, check="positive")
    """Training batch size. None: the dataset's (256 on Colored MNIST and Corrupted CIFAR-10, 64
    elsewhere)."""
    lr: float | None = setting(None, check="positive")
    """Adam's learning rate. None: the dataset's (0.01 Colored MNIST, 0.001 Corrupted CIFAR-10 and
    your own data, 0.0001 BFFHQ and BAR)."""
    weight_decay: float = setting(0.0, check="non-negative")
    """Adam's weight decay."""
    use_lr_decay: bool = False
    """Step decay of the learning rate: times ``lr_gamma`` every ``lr_decay_step`` steps, counted
    from ``curr_step``."""
    lr_decay_step: int = setting(10_000, check="positive")
    """Steps between two decays of the learning rate (with ``use_lr_decay``)."""
    lr_gamma: float = setting(0.1, check="positive")
    """The factor of each learning-rate decay (with ``use_lr_decay``)."""

    # LfF / DisEnt
    q: float = setting(0.7, check="probability")
    """The generalized cross-entropy's q, with which the biased models train (LfF, DisEnt, the
    BiasEnsemble models)."""
    gce_form: str = setting("reference", choices=GCE_FORMS)
    """How the generalized cross-entropy is computed: ``reference`` (the paper code's) or
    ``textbook`` (methods/losses.py)."""
    ema_alpha: float = setting(0.7, check="fraction")
    """The factor of the per-sample moving average of the losses that the relative difficulty
    weights read (LfF, DisEnt)."""
    curr_step: int = setting(0, check="non-negative")
    """DisEnt: the step the feature swap (and weight averaging) starts at; every method's
    learning-rate decay also counts from it."""
    # inputs
    input_scale: str | None = setting(None, choices=tuple(INPUT_SCALES))
    """``unit``: pixels / 255; ``reference``: pixels / 255 / 255, as the paper code fed Colored
    MNIST. None: the dataset's (``reference`` on Colored MNIST, ``unit`` elsewhere)."""
    image_size: int | None = setting(None, check="positive", flag="data")
    """Resize images to this size once, when read (BFFHQ and BAR: 224). None: as they are."""
    normalize: bool | None = None
    """Normalise with the CIFAR-10 mean and deviation. None: the dataset's (off on Colored MNIST,
    on elsewhere)."""
    augment: bool | None = None
    """Random crops and flips of whole batches while training. None: the dataset's (on for
    Corrupted CIFAR-10, BFFHQ and BAR; off on Colored MNIST and your own data)."""
    amp: bool = True
    """bf16 autocast on CUDA."""
    cpu_amp: bool | None = None
    """bf16 autocast on the CPU (oneDNN's bf16 dot products). None: off, fp32."""
    channels_last: bool = True
    """The channels_last memory format for convolutional models, on CUDA."""
    compile: bool | None = None
    """``torch.compile`` the step. None: where measured faster (``train.COMPILE_DEFAULT``)."""
    cuda_graph: bool | None = None
    """Replay the step as CUDA graphs. None: on CUDA unless compiling is off."""
    fused_exact: bool | None = None
    """In a fused group on the CPU, each run's linear products by its own kernels, so a fused
    run ends bit for bit where it ends alone. None: off, one batched product for all the runs
    (faster, as measured in docs/speed.md; equal to a lone run's to float rounding). CUDA
    always batches."""
    wa_decay: float | None = setting(None, check="fraction")
    """The decay of the weight average of the models (``wa_*`` rules). None: 0.999; 0: off."""
    wa_start: int | None = setting(None, check="non-negative")
    """The main-stage step weight averaging starts at. None: the method's (DisEnt's
    ``curr_step``, else 0)."""

    # evaluation, checkpoints, logging
    valid_freq: int = setting(500, check="positive")
    """Steps between evaluations, which the selection rules pick from (and the last step)."""
    log_freq: int = setting(500, check="positive")
    """Steps between logged training losses."""
    save_freq: int | None = setting(None, check="positive")
    """Steps between resumable checkpoints. None: ``valid_freq``."""
    eval_batch_size: int = setting(2048, check="positive")
    """Batch size of evaluations."""
    tensorboard: bool = False
    """Also log to TensorBoard (``<run>/tensorboard``)."""
    wandb: bool = False
    """Also log to Weights & Biases (the ``wandb`` extra)."""
    wandb_project: str = "debiaslab"
    """The Weights & Biases project."""
    progress: bool = True
    """A progress bar (``fit``: off)."""
    overwrite: bool = False
    """Replace a run already in the run's folder instead of reusing or resuming it."""
    resume: bool = False
    """Continue an unfinished run (also automatic); with it a larger ``num_steps`` continues a
    finished one."""
    keep_checkpoints: int = setting(1, check="positive")
    """Full checkpoints kept: ``checkpoint_last.pt`` and k - 1 older ``checkpoint_step<N>.pt``."""
    best_checkpoints: bool = True
    """Keep ``checkpoint_<rule>.pt``, the models each selection rule picked."""
    on_nonfinite: str = setting("stop", choices=("stop", "skip"))
    """A NaN or infinite loss: ``stop`` the run (marked failed, resumable) or ``skip`` the step."""
    extra: dict = field(default_factory=dict, metadata={"flag": False})
    """Free-form notes kept with the run (they enter its identity)."""

    def resolved(self) -> TrainConfig:
        """Fill every ``None`` from the dataset defaults (an explicit value always wins)."""
        defaults = DATASET_DEFAULTS.get(self.dataset, GENERIC_DEFAULTS)
        changes = {k: v for k, v in defaults.items() if getattr(self, k) is None}
        cfg = dataclasses.replace(self, **changes)
        if cfg.palette is None and cfg.uses_palette():
            cfg = dataclasses.replace(cfg, palette="disent")
        method = METHODS.get(cfg.method)
        if method is not None:
            own = {o.name: o.default for o in method.options if getattr(cfg, o.name) is None}
            cfg = dataclasses.replace(cfg, **own)
            cfg = dataclasses.replace(cfg, **method.resolve_options(cfg))
        if cfg.save_freq is None:
            cfg = dataclasses.replace(cfg, save_freq=cfg.valid_freq)
        return cfg

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    @classmethod
    def from_saved(cls, d: dict) -> TrainConfig:
        """The config a run directory recorded. Runs saved before ``palette`` existed all trained on
        LfF's palette (the only one then), so a Colored MNIST config without it means ``lff``; runs
        saved before one of their method's options existed get the value they trained with
        (``Option.saved_before``, declared with the option: LC's first reading, GroupDRO's
        shuffled epochs, JTT's lambda_up draws, BiasEnsemble's cadence, DeNetDM's own head)."""
        if d.get("dataset") in COLORED_DATASETS and "palette" not in d:
            d = {**d, "palette": "lff"}
        method = METHODS.get(d.get("method"))
        for option in method.options if method is not None else ():
            if option.saved_before is not None and option.name not in d:
                d = {**d, option.name: option.saved_before}
        return cls.from_dict(d)

    def identity(self) -> dict:
        """What the run computes: the resolved config without runtime and location fields."""
        d = self.resolved().to_dict()
        floats = {f.name for f in dataclasses.fields(self) if str(f.type).startswith("float")}
        return {
            k: float(d[k])
            if k in floats and isinstance(d[k], int) and not isinstance(d[k], bool)
            else d[k]
            for k in sorted(d)
            if k not in RUNTIME_FIELDS
            and k not in LOCATION_FIELDS
            and not (k in DATASET_SPECIFIC_FIELDS and d[k] is None)
            and not (k in UNHASHED_DEFAULTS and d[k] == UNHASHED_DEFAULTS[k])
        }

    def config_hash(self, length: int = 10) -> str:
        """A short sha256 of :meth:`identity`: same config -> same hash, any change -> another."""
        import hashlib
        import json

        blob = json.dumps(self.identity(), sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:length]

    def bf16(self, device_type: str) -> bool:
        """Whether a run of this config on a ``device_type`` device computes under bf16 autocast:
        ``amp`` on CUDA, ``cpu_amp`` on the CPU."""
        if device_type == "cuda":
            return self.amp
        return device_type == "cpu" and bool(self.cpu_amp)

    def uses_percent(self) -> bool:
        """Reference-layout datasets come in ratio folders; BAR and user datasets do not."""
        if self.percent is None:  # in-memory data (fit): used as given
            return False
        return not (self.manifest or self.image_folder or self.dataset == "bar")

    def uses_palette(self) -> bool:
        """Colored MNIST (and the demo's Colored Digits) in ratio folders: their data has a palette."""
        return self.dataset in COLORED_DATASETS and self.uses_percent()

    def data_label(self) -> str:
        """'cmnist 0.5pct', or just the dataset's name where ``percent`` does not apply."""
        return f"{self.dataset} {self.percent}" if self.uses_percent() else self.dataset

    def run_dir(self) -> str:
        import os

        return os.path.join(self.log_dir, self.dataset, self.exp)

    def validate(self) -> None:
        """Refuses a setting that cannot train, with a one-line reason: each field by its
        declaration (``setting``), then what settings must be together."""
        for f in dataclasses.fields(self):
            check, choices = f.metadata.get("check"), f.metadata.get("choices", ())
            problem = value_problem(f.name, field_type(f), getattr(self, f.name), check, choices)
            if problem:
                raise UserError(problem)
        if self.method not in METHODS:
            raise UserError(f"unknown method {self.method!r}; choose one of {', '.join(METHODS)}")
        if self.manifest and self.image_folder:
            raise UserError("pass either --manifest or --image_folder, not both")
        if self.palette is not None and not self.uses_palette():
            raise UserError(
                f"--palette applies to Colored MNIST only, not to {self.data_label()}; drop it"
            )
        for name, methods in METHOD_FIELDS.items():
            if METHOD_OPTIONS[name].given(getattr(self, name)) and self.method not in methods:
                raise UserError(
                    f"--{name} is a setting of {' and '.join(methods)}, not of {self.method}; drop it"
                )
        for option in METHOD_OPTIONS.values():
            problem = option.problem(getattr(self, option.name))
            if problem:
                raise UserError(problem)
        method = METHODS[self.method]
        if all(getattr(self, o.name) is not None for o in method.options):
            method.validate(self)  # once resolved: checks across the method's settings


on_register(add_method_fields)
