"""The Python API: train a method on your own data and model, get the run back, reload it, predict.

    import debiaslab as dl
    from debiaslab.data.digits import colored_digits

    toy = colored_digits(percent=5.0)  # a small Colored MNIST; your uint8 [N, C, H, W] likewise
    data = dl.tensor_data(train=(toy.train.images, toy.train.targets, toy.train.biases),
                          valid=toy.valid, test=toy.test)
    run = dl.fit("disent", data, model="mlp", num_steps=1000, curr_step=300)
    run.metrics("best_valid_pseudo_unbiased")  # test metrics of the model that rule picked
    logits = run.predict(toy.test.images)      # uint8 [N, C, H, W], as the data was
    same = dl.load_run(run.dir)                # a finished run from its directory

It is the code path of ``debiaslab train``: ``fit`` builds a ``TrainConfig`` and calls the same
training loop, writing the same run directory (config.json, results.json, metrics.jsonl and the
checkpoints every selection rule picked).
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from debiaslab.config import TrainConfig
from debiaslab.data.checks import check_label_range, checked_images, checked_split
from debiaslab.data.inputs import dataset_data, manifest_data, tensor_data  # noqa: F401
from debiaslab.data.splits import DatasetBundle, Split, data_id
from debiaslab.errors import UserError, closest
from debiaslab.methods import METHODS, register_method  # noqa: F401 (the API's)
from debiaslab.models.user import Backbone, ModelFactory, positive_int, register_model  # noqa: F401
from debiaslab.rundir import RunDir
from debiaslab.selection import (
    SELECTION_RULES,
    figure_reads,
    picked_nothing,
    shipped_selection,
)


def _model_name(model: str | ModelFactory | None) -> str | None:
    if model is None or isinstance(model, str):
        return model
    if isinstance(model, nn.Module):
        raise UserError(
            f"fit(model=...) is a {type(model).__name__} instance; give a factory that builds a "
            "fresh one, def my_model(num_classes, head_inputs, in_shape): ... (a method trains "
            "several models, each its own)"
        )
    if not callable(model):
        raise UserError(
            f"fit(model=...) is a {type(model).__name__}; give a model name (e.g. 'resnet18') or "
            "a factory function (num_classes, head_inputs, in_shape) -> model"
        )
    return register_model(f"user_{getattr(model, '__name__', type(model).__name__)}", model)


# ------------------------------------------------------------------------------------------ runs
@dataclass
class Run:
    """A finished run: its directory, config and results, and the models its rules picked."""

    dir: Path
    config: TrainConfig
    results: dict
    record: dict  # config.json as the run wrote it: the config, the data and its input shape

    @property
    def rules(self) -> list[str]:
        """The selection rules that picked a model in this run (``last``, ``best_valid``, ... and
        ``wa_*``); a rule whose score the run has none of (a pseudo-unbiased score without a
        biased branch, an unbiased one without bias labels) picked nothing and is not listed."""
        return [rule for rule, pick in self.results["selections"].items() if pick is not None]

    @property
    def default_rule(self) -> str:
        """The selection the run ships, used when no rule is given (``default_selection`` of
        results.json: on Colored MNIST the averaged model picked by its pseudo-unbiased
        validation score; ``last`` elsewhere and for runs from before)."""
        return shipped_selection(self.results)

    def metrics(self, rule: str | None = None, split: str = "test") -> dict:
        """Every metric (accuracy, unbiased, aligned, conflicting, worst_group, ...) on ``split``
        (``valid`` or ``test``) of the model ``rule`` picked (None: the run's ``default_rule``)."""
        selection = self._selection(rule)
        if split not in ("valid", "test"):
            raise UserError(f"split {split!r}: choose valid or test")
        return selection[split]

    def reads(self, rule: str | None = None) -> list[str] | None:
        """The labels the figure of ``rule`` (None: the run's ``default_rule``) read beyond the
        training class labels, its training's included: names of ``selection.READS``, e.g.
        ``["valid_labels"]``; ``test_labels`` where the validation split is the test split."""
        rule = rule or self.default_rule
        self._selection(rule)
        return figure_reads(self.results, rule)

    def step(self, rule: str | None = None) -> int:
        """The training step whose model ``rule`` picked."""
        return self._selection(rule)["step"]

    def models(self, rule: str | None = None, device: str = "cpu") -> dict[str, nn.Module]:
        """The models (by name, those the method predicts with) that ``rule`` picked, in eval mode."""
        rule = rule or self.default_rule
        self._selection(rule)
        _check_device(device)
        path = RunDir(self.dir).checkpoint(rule)
        if not path.exists():
            raise UserError(
                f"{path} is missing: the run kept no checkpoint for rule {rule!r} "
                "(trained with best_checkpoints off?)"
            )
        from debiaslab.evaluate import model_states, read_checkpoint, rebuild_models

        blob = read_checkpoint(path)
        method_cls = METHODS[self.config.method]
        models = rebuild_models(
            method_cls, self.config, model_states(blob), self.num_classes, self.in_shape, path
        )
        return {name: model.to(device) for name, model in models.items()}

    @torch.no_grad()
    def predict(
        self, images: torch.Tensor, rule: str | None = None, batch_size: int = 2048
    ) -> torch.Tensor:
        """Logits of the model ``rule`` picked, for uint8 images ``[N, C, H, W]`` (a tensor or a
        numpy array) like the training data (the run's evaluation transform is applied)."""
        from debiaslab.prepare import make_transform

        if not positive_int(batch_size):
            raise UserError(f"predict(batch_size={batch_size!r}): give a positive integer")
        images = checked_images("predict(images)", images)
        if tuple(images.shape[1:]) != self.in_shape:
            raise UserError(
                f"predict(images): images are {list(images.shape[1:])} [C, H, W] but {self.dir} "
                f"was trained on {list(self.in_shape)}; give images of the training data's shape"
            )
        models = self.models(rule, device=str(images.device))
        prepare = make_transform(self.config, None, images.device).eval
        predict = METHODS[self.config.method].predict
        return torch.cat(
            [
                predict(models, prepare(images[i : i + batch_size])).float()
                for i in range(0, len(images), batch_size)
            ]
        )

    def evaluate(
        self, data: DatasetBundle | Split | Sequence[torch.Tensor], rule: str | None = None
    ) -> dict:
        """Every metric of the model ``rule`` picked on new data: a split as ``(images, targets[,
        biases])``, a ``Split`` (``bundle.valid``) or a ``DatasetBundle`` (its test split)."""
        from debiaslab.metrics import compute_metrics

        split = data.test if isinstance(data, DatasetBundle) else data
        split = checked_split("evaluate(data)", split)
        fix = f"{self.dir} was trained on {self.num_classes} classes; give labels of those"
        check_label_range("evaluate(data)", split, self.num_classes, fix)
        preds = self.predict(split.images, rule).argmax(1)
        return compute_metrics(preds, split.targets, split.biases, self.num_classes)

    @property
    def num_classes(self) -> int:
        return int(self.record["data"]["num_classes"])

    @property
    def in_shape(self) -> tuple[int, ...]:
        shape = self.record.get("in_shape")
        if shape is None:
            raise UserError(
                f"{self.dir} was trained before runs recorded their input shape; evaluate "
                "it with `debiaslab test --pretrained_path` instead"
            )
        return tuple(shape)

    def _selection(self, rule: str | None) -> dict:
        rule = rule or self.default_rule
        if rule not in self.results["selections"]:
            known = ", ".join(self.rules)
            hint = "" if rule in SELECTION_RULES else " (not a rule)"
            raise UserError(f"rule {rule!r}{hint} is not among this run's selections: {known}")
        pick = self.results["selections"][rule]
        if pick is None:
            raise UserError(picked_nothing(str(self.dir), self.config.method, rule, self.rules))
        return pick


def _check_device(device) -> None:
    try:
        torch.device(device)
    except (RuntimeError, TypeError):
        raise UserError(
            f"device {device!r} is not a device; give 'cpu', 'cuda' or 'cuda:N'"
        ) from None


def _in_python_words(api_call):
    """``api_call``'s refusals name options as its keywords (``lr``, ``exp=``), not as the
    command line's flags (``--lr``, ``--exp / exp=``), wherever in the library they are raised."""

    @functools.wraps(api_call)
    def call(*args, **kwargs):
        try:
            return api_call(*args, **kwargs)
        except UserError as e:
            raise UserError(python_words(str(e))) from None

    return call


def python_words(message: str) -> str:
    """``message`` with each ``--<option>`` of ``TrainConfig`` written as the option's name."""
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    message = re.sub(r"--(\w+) / (\1=\S*)", r"\2", message)  # "--exp / exp=": say it once
    return re.sub(r"--(\w+)", lambda m: m[1] if m[1] in fields else m[0], message)


@_in_python_words
def fit(
    method: str,
    data: DatasetBundle | str,
    *,
    model: str | ModelFactory | None = None,
    log_dir: str | Path | None = None,
    exp: str | None = None,
    config: TrainConfig | None = None,
    **options,
) -> Run:
    """Train ``method`` on ``data`` and return the finished ``Run``.

    ``data``: a ``DatasetBundle`` (``tensor_data``, ``dataset_data``) or the name of a dataset
    debiaslab reads (``"cmnist"``, ``"cifar10c"``, ``"bffhq"``, ``"bar"``; give ``data_dir`` and
    ``percent``). ``model``: a model name (``"resnet18"``, ``"mlp"``, ...) or a factory
    (``register_model``); default: the dataset's. ``options``: any ``TrainConfig`` field
    (``num_steps``, ``seed``, ``lr``, ``curr_step``, ``device``, ...); unknown names are refused.
    The run goes to ``<log_dir>/<dataset>/<exp>``; default exp ``<method>-<settings id>``, and
    for in-memory data ``<method>-<data id>-<settings id>`` (8 hex digits each, of the data's
    checksums and of every setting of the run, seed and ``num_steps`` included), so other data or
    another setting trains another run. A finished run of the same settings on the same data is
    reused (the message says so); ``overwrite=True`` trains it again. To continue a run to more
    steps, name it (``exp=``) and pass ``resume=True`` with the new ``num_steps``. Bad inputs are
    refused with the fix.
    """
    from debiaslab.train import train

    data = _hashed(data)
    model, log_dir, exp, options = _with_config(method, config, model, log_dir, exp, options)
    cfg = _config(method, data, model, log_dir, exp, options)
    train(cfg, data if isinstance(data, DatasetBundle) else None)
    return load_run(cfg.run_dir())


_CALL_FIELDS = ("dataset", "method", "model", "log_dir", "exp")  # fit's own arguments


def _with_config(method, config, model, log_dir, exp, options: dict) -> tuple:
    """``fit``'s model, log_dir, exp and options, ``config``'s settings under the given ones:
    only those set away from ``TrainConfig``'s defaults, so a config's unset fields stay
    resolved per dataset."""
    if config is None:
        return model, log_dir or "log", exp, options
    if not isinstance(config, TrainConfig):
        raise UserError(
            f"fit(config=...) is a {type(config).__name__}; give a dl.TrainConfig(...), or pass "
            "its settings as keywords"
        )
    default = TrainConfig()
    if config.method not in (default.method, method):
        raise UserError(
            f"fit({method!r}, config=TrainConfig(method={config.method!r})): two methods; "
            "give the method once"
        )
    set_fields = {
        f.name: getattr(config, f.name)
        for f in dataclasses.fields(TrainConfig)
        if f.name not in _CALL_FIELDS and getattr(config, f.name) != getattr(default, f.name)
    }

    def given(name: str, value):
        if value is not None or getattr(config, name) == getattr(default, name):
            return value
        return getattr(config, name)

    return (
        given("model", model),
        given("log_dir", log_dir) or "log",
        given("exp", exp),
        {**set_fields, **options},
    )


def _config(method, data, model, log_dir, exp: str | None, options: dict) -> TrainConfig:
    """The ``TrainConfig`` of ``fit``'s arguments (``exp`` None: the default name of its
    settings); unknown methods and options are refused."""
    if method not in METHODS:
        raise UserError(
            f"unknown method {method!r}{_did_you_mean(method, METHODS)}; choose one of "
            f"{', '.join(sorted(METHODS))}"
        )
    if not isinstance(data, (DatasetBundle, str)):
        raise UserError(
            f"fit(data=...) is a {type(data).__name__}; give dl.tensor_data(...), "
            "dl.dataset_data(...), dl.manifest_data(...) or a dataset name such as 'cmnist'"
        )
    arguments = sorted(set(options) & set(_CALL_FIELDS))
    if arguments:
        raise UserError(
            f"{', '.join(arguments)} given as a run's option; {method!r}, the data, model=, "
            "log_dir= and exp= are fit's own arguments (fit_many: one method and one data for "
            "all runs; call it once per method)"
        )
    if not isinstance(log_dir, (str, Path)):
        raise UserError(f"log_dir={log_dir!r}: give a folder path (a str or a Path)")
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(options) - set(fields))
    if unknown:
        named = ", ".join(name + _did_you_mean(name, fields) for name in unknown)
        raise UserError(
            f"unknown option(s) {named}; every option: the TrainConfig "
            "fields (dataclasses.fields(dl.TrainConfig)), listed on the API page"
        )
    for name, value in options.items():
        _check_option(name, fields[name].type, value)
    dataset = data.name if isinstance(data, DatasetBundle) else data
    if isinstance(data, DatasetBundle):
        if "percent" in options:
            raise UserError(
                f"fit(percent={options['percent']!r}) picks a ratio folder of a dataset read from "
                "data_dir; in-memory data is used as given: drop percent"
            )
        options = {**options, "percent": None}  # no ratio folder: none recorded
    cfg = TrainConfig(
        **{"progress": False, **options},
        dataset=dataset,
        method=method,
        model=_model_name(model),
        log_dir=str(log_dir),
        exp=exp or method,
    )
    return cfg if exp else dataclasses.replace(cfg, exp=_default_exp(cfg, data))


def _did_you_mean(name: str, known) -> str:
    """`` (did you mean X?)`` for the closest of ``known`` to a mistyped ``name``, else ''."""
    close = closest(name, known)
    return f" (did you mean {close[0]}?)" if close else ""


_OPTION_TYPES = {
    "int": (int,),
    "float": (int, float),
    "bool": (bool,),
    "str": (str,),
    "dict": (dict,),
}


def _check_option(name: str, annotation: str, value) -> None:
    """``value`` has the type ``TrainConfig`` declares for ``name`` (a bool is not a number)."""
    kinds = [k.strip() for k in str(annotation).split("|")]
    if value is None and "None" in kinds:
        return
    allowed = tuple(t for k in kinds for t in _OPTION_TYPES.get(k, ()))
    number = "bool" not in kinds and isinstance(value, bool)
    if isinstance(value, allowed) and not number:
        return
    wanted = " or ".join(k for k in kinds if k != "None")
    raise UserError(
        f"fit({name}={value!r}): {name} takes {wanted}, got {type(value).__name__}; "
        "see TrainConfig in the API docs for every option"
    )


def _hashed(data):
    """In-memory data with its checksums computed once, for the folder name and the run's
    identity both (a copy: the caller's bundle stays as it was)."""
    return data.with_checksums() if isinstance(data, DatasetBundle) else data


def _default_exp(cfg: TrainConfig, data: DatasetBundle | str) -> str:
    """``<method>[-<data id>]-<settings id>``: other data or another setting, another run (the
    settings id hashes ``TrainConfig.identity``, which leaves out where and how a run is kept)."""
    cfg.validate()  # a config that cannot train is refused before its hash is asked for
    data_part = f"-{data_id(data.checksums())}" if isinstance(data, DatasetBundle) else ""
    return f"{cfg.method}{data_part}-{cfg.config_hash(8)}"


@_in_python_words
def fit_many(
    method: str,
    data: DatasetBundle | str,
    runs: Sequence[dict],
    *,
    model: str | ModelFactory | None = None,
    log_dir: str | Path | None = None,
    exp: str | None = None,
    config: TrainConfig | None = None,
    processes: int | None = None,
    **options,
) -> list[Run]:
    """Train several runs of ``method`` on ``data`` at once, as fused groups (one step per
    iteration for each group; docs/speed.md, "Fused runs"), and return each finished ``Run``.

    ``runs``: each run's own options over the shared ``options``: its ``seed``, its data (a
    ``percent``) and float settings (``lr``, ``lambda_swap``, ``q``, ...). Runs that differ in
    anything else train in separate groups. Each run is the run ``fit`` would train with the
    same options, in the folder ``fit`` would give it (its settings name it), in
    ``<exp>_seed<seed>`` when ``exp`` is given, or in the run's own ``exp``.

    ``processes``: how many processes train the runs at once, each a fused group of its share
    on its share of the cores (default: ``group.default_processes``, one per core on the CPU for
    data in a folder and built-in models; this process for in-memory data, your own model or a
    GPU).
    """
    from debiaslab.group import default_processes
    from debiaslab.sweep import train_fused

    data = _hashed(data)
    model, log_dir, exp, options = _with_config(method, config, model, log_dir, exp, options)
    if isinstance(runs, (str, dict)) or not runs or not all(isinstance(o, dict) for o in runs):
        raise UserError(
            "fit_many(runs=...): give a non-empty list of dicts, one per run, e.g. [{'seed': 0}, "
            "{'seed': 1, 'lr': 0.003}]"
        )
    cfgs = []
    for own in runs:
        merged = {**options, **own}
        name = merged.pop("exp", None) or (exp and f"{exp}_seed{merged.get('seed', 0)}")
        cfgs.append(_config(method, data, model, log_dir, name, merged))
    dirs = [c.run_dir() for c in cfgs]
    if len(set(dirs)) != len(dirs):
        twice = next(d for d in dirs if dirs.count(d) > 1)
        raise UserError(
            f"two runs of fit_many would share the run directory {twice} (the same settings, or "
            "the same exp and seed); give each its own exp, or drop the repeated run"
        )
    bundle = data if isinstance(data, DatasetBundle) else None
    if processes is not None and not positive_int(processes):
        raise UserError(f"fit_many(processes={processes!r}): give a positive int, or leave it out")
    train_fused(cfgs, processes or default_processes(cfgs, bundle), bundle)
    return [load_run(c.run_dir()) for c in cfgs]


def load_run(path: str | Path, model: ModelFactory | None = None) -> Run:
    """A finished run from its directory (``<log_dir>/<dataset>/<exp>``). ``model``: the factory a
    run of your own model was trained with (``fit(model=factory)``), registered again under the
    name the run recorded, so that ``predict`` and ``models`` can rebuild it in a new process."""
    path = Path(path)
    folder = RunDir(path)
    if not folder.results_file.exists() or not folder.config_file.exists():
        raise UserError(
            f"{path} holds no finished run (config.json and results.json); train it first "
            "or point at <log_dir>/<dataset>/<exp>"
        )
    record, results = folder.read_record(RunDir.CONFIG), folder.read_record(RunDir.RESULTS)
    run = Run(path, TrainConfig.from_saved(record["config"]), results, record)
    if model is not None:
        _register_run_models(run, model)
    return run


def _register_run_models(run: Run, factory: ModelFactory) -> None:
    """``factory`` under each architecture of the run's predicting models that is not built in."""
    from debiaslab.models import BUILTIN_MODELS

    method_cls = METHODS[run.config.method]
    archs = {method_cls.model_architecture(run.config, n).lower() for n in method_cls.model_names}
    own = sorted(archs - BUILTIN_MODELS)
    if not own:
        raise UserError(
            f"load_run({str(run.dir)!r}, model=...): the run was trained with the built-in "
            f"{', '.join(sorted(archs))}; drop model="
        )
    for name in own:
        register_model(name, factory)
