"""The Python API: train a method on your own data and model, get the run back, reload it, predict.

    import debiaslab as dl

    data = dl.tensor_data(train=(x, y, bias), valid=(xv, yv, bv), test=(xt, yt, bt))
    run = dl.fit("disent", data, model=my_backbone_factory, num_steps=2000, curr_step=500)
    run.metrics("best_valid_pseudo_unbiased")       # test metrics of the model that rule picked
    logits = run.predict(new_images)                # uint8 [N, C, H, W], as the data was
    same = dl.load_run(run.dir)                     # a finished run from its directory

It is the code path of ``debiaslab train``: ``fit`` builds a ``TrainConfig`` and calls the same
training loop, writing the same run directory (config.json, results.json, metrics.jsonl and the
checkpoints every selection rule picked).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from debiaslab import UserError
from debiaslab.config import TrainConfig
from debiaslab.data.splits import DatasetBundle, Split
from debiaslab.methods import METHODS
from debiaslab.models import MODELS
from debiaslab.selection import SELECTION_RULES, shipped_selection

ModelFactory = Callable[..., nn.Module]  # (num_classes=, head_inputs=, in_shape=) -> model


# ----------------------------------------------------------------------------------------- data
def tensor_data(
    train: Sequence[torch.Tensor],
    valid: Sequence[torch.Tensor],
    test: Sequence[torch.Tensor],
    num_classes: int | None = None,
    name: str = "tensors",
) -> DatasetBundle:
    """A dataset from tensors: each split ``(images, targets)`` or ``(images, targets, biases)``.

    ``images`` are uint8 ``[N, C, H, W]`` (pixels 0-255; the run scales them to [0, 1]);
    ``targets`` and ``biases`` integer class and bias labels. Bias labels are optional: without
    them, methods that read them (GroupDRO) are refused and the bias-aware metrics are ``None``.
    """
    splits = {n: _split(n, s) for n, s in (("train", train), ("valid", valid), ("test", test))}
    classes = num_classes or int(max(int(s.targets.max()) for s in splits.values())) + 1
    return DatasetBundle(name, splits["train"], splits["valid"], splits["test"], classes)


def dataset_data(
    train: torch.utils.data.Dataset,
    valid: torch.utils.data.Dataset,
    test: torch.utils.data.Dataset,
    num_classes: int | None = None,
    name: str = "datasets",
) -> DatasetBundle:
    """A dataset from torch ``Dataset`` objects whose items are ``(image, target)`` or
    ``(image, target, bias)`` with ``image`` a uint8 tensor ``[C, H, W]`` or a PIL image. Each is
    read once, here, into memory: training never touches the ``Dataset`` again."""
    return tensor_data(
        *(_read(n, d) for n, d in (("train", train), ("valid", valid), ("test", test))),
        num_classes=num_classes,
        name=name,
    )


def manifest_data(csv_path: str | Path, image_size: int | None = None) -> DatasetBundle:
    """A dataset from a CSV manifest with the columns ``path,target[,bias][,split]`` (the layout
    of Waterbirds-like datasets; ``debiaslab train --manifest`` reads the same file). Images are
    decoded once and cached next to the CSV."""
    from debiaslab.data.folders import load_manifest
    from debiaslab.prepare import DATA_SEED

    return load_manifest(csv_path, image_size, seed=DATA_SEED)


def _read(name: str, dataset) -> tuple[torch.Tensor, ...]:
    from torchvision.transforms.functional import pil_to_tensor

    columns = None
    for i in range(len(dataset)):
        item = dataset[i]
        if columns is None:
            if len(item) not in (2, 3):
                raise UserError(
                    f"{name} dataset: items must be (image, target) or (image, target, bias), "
                    f"got {len(item)} values"
                )
            columns = [[] for _ in item]
        image = item[0] if isinstance(item[0], torch.Tensor) else pil_to_tensor(item[0])
        columns[0].append(image)
        for column, value in zip(columns[1:], item[1:]):
            column.append(int(value))
    if columns is None:
        raise UserError(f"{name} dataset is empty")
    return (torch.stack(columns[0]), *(torch.tensor(c, dtype=torch.int64) for c in columns[1:]))


def _split(name: str, parts: Sequence[torch.Tensor]) -> Split:
    if len(parts) not in (2, 3):
        raise UserError(
            f"{name}: give (images, targets) or (images, targets, biases), got {len(parts)} tensors"
        )
    images, targets, biases = (*parts, None) if len(parts) == 2 else parts
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise UserError(
            f"{name}: images must be uint8 [N, C, H, W] (pixels 0-255), got {images.dtype} "
            f"{tuple(images.shape)}; convert with (x * 255).round().to(torch.uint8)"
        )
    try:
        return Split(
            images.cpu(), targets.long().cpu(), None if biases is None else biases.long().cpu()
        )
    except ValueError as e:
        raise UserError(f"{name}: {e}") from None


# --------------------------------------------------------------------------------------- models
class Backbone(nn.Module):
    """Any feature extractor as a debiaslab model: ``extract(x)`` is ``features(x)`` flattened,
    ``fc`` a linear head over ``feature_dim * head_inputs`` inputs (DisEnt's heads read two
    concatenated features). Use it in a factory::

        def my_model(num_classes, head_inputs, in_shape):
            return dl.Backbone(my_cnn(), feature_dim=128, num_classes=num_classes, head_inputs=head_inputs)
    """

    def __init__(
        self, features: nn.Module, feature_dim: int, num_classes: int, head_inputs: int = 1
    ):
        super().__init__()
        self.features = features
        self.fc = nn.Linear(feature_dim * head_inputs, num_classes)

    @classmethod
    def from_classifier(
        cls, model: nn.Module, num_classes: int, head_inputs: int = 1, head: str = "fc"
    ) -> Backbone:
        """Split a classifier whose last layer is the linear attribute ``head`` (torchvision's
        ResNets: ``fc``; VGG / EfficientNet: index into ``classifier`` first) into its feature
        extractor and a fresh head for ``num_classes`` and ``head_inputs``. The given ``head``
        is replaced by an identity in ``model``, which becomes the extractor."""
        old = getattr(model, head, None)
        if not isinstance(old, nn.Linear):
            raise UserError(
                f"{type(model).__name__}.{head} is not a linear layer; name the model's last "
                "linear layer with head=, or wrap the features with Backbone(features, dim, ...)"
            )
        setattr(model, head, nn.Identity())
        return cls(model, old.in_features, num_classes, head_inputs)

    def extract(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.features(x), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.extract(x))


def register_model(name: str, factory: ModelFactory) -> str:
    """Make ``factory`` a model that configs (``model=name``) and ``--model`` can name. It is
    called as ``factory(num_classes=, head_inputs=, in_shape=)`` and must return a module with
    ``extract(x)`` (features) and ``fc`` (a linear head over ``feature_dim * head_inputs``), e.g.
    a ``Backbone``. Returns the name."""
    key = name.lower()
    if MODELS.get(key, factory) is not factory:
        raise UserError(
            f"model {name!r} is already registered to another factory; pick another name"
        )
    MODELS[key] = factory
    return key


def _model_name(model: str | ModelFactory | None) -> str | None:
    if model is None or isinstance(model, str):
        return model
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
        """The selection rules this run recorded (``last``, ``best_valid``, ... and ``wa_*``)."""
        return list(self.results["selections"])

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

    def step(self, rule: str | None = None) -> int:
        """The training step whose model ``rule`` picked."""
        return self._selection(rule)["step"]

    def models(self, rule: str | None = None, device: str = "cpu") -> dict[str, nn.Module]:
        """The models (by name, those the method predicts with) that ``rule`` picked, in eval mode."""
        rule = rule or self.default_rule
        self._selection(rule)
        path = self.dir / ("checkpoint_last.pt" if rule == "last" else f"checkpoint_{rule}.pt")
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
        """Logits of the model ``rule`` picked, for uint8 images ``[N, C, H, W]`` like the training
        data (the run's evaluation transform is applied)."""
        from debiaslab.prepare import make_transform

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

        if isinstance(data, DatasetBundle):
            split = data.test
        elif isinstance(data, Split):
            split = data
        else:
            split = _split("data", data)
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
        return self.results["selections"][rule]


def fit(
    method: str,
    data: DatasetBundle | str,
    *,
    model: str | ModelFactory | None = None,
    log_dir: str | Path = "log",
    exp: str | None = None,
    **options,
) -> Run:
    """Train ``method`` on ``data`` and return the finished ``Run``.

    ``data``: a ``DatasetBundle`` (``tensor_data``, ``dataset_data``) or the name of a dataset
    debiaslab reads (``"cmnist"``, ``"cifar10c"``, ``"bffhq"``, ``"bar"``; give ``data_dir`` and
    ``percent``). ``model``: a model name (``"resnet18"``, ``"mlp"``, ...) or a factory
    (``register_model``); default: the dataset's. ``options``: any ``TrainConfig`` field
    (``num_steps``, ``seed``, ``lr``, ``curr_step``, ``device``, ...); unknown names are refused.
    The run goes to ``<log_dir>/<dataset>/<exp>`` (default exp: the method's name).
    """
    from debiaslab.train import train

    cfg = _config(method, data, model, log_dir, exp or method, options)
    train(cfg, data if isinstance(data, DatasetBundle) else None)
    return load_run(cfg.run_dir())


def _config(method, data, model, log_dir, exp: str, options: dict) -> TrainConfig:
    """The ``TrainConfig`` of ``fit``'s arguments; unknown methods and options are refused."""
    if method not in METHODS:
        raise UserError(f"unknown method {method!r}; choose one of {', '.join(sorted(METHODS))}")
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(options) - fields)
    if unknown:
        raise UserError(
            f"unknown option(s) {', '.join(unknown)}; TrainConfig has: {', '.join(sorted(fields))}"
        )
    dataset = data.name if isinstance(data, DatasetBundle) else data
    return TrainConfig(
        **{"progress": False, **options},
        dataset=dataset,
        method=method,
        model=_model_name(model),
        log_dir=str(log_dir),
        exp=exp,
    )


def fit_many(
    method: str,
    data: DatasetBundle | str,
    runs: Sequence[dict],
    *,
    model: str | ModelFactory | None = None,
    log_dir: str | Path = "log",
    exp: str | None = None,
    **options,
) -> list[Run]:
    """Train several runs of ``method`` on ``data`` at once, as one fused group (one step per
    iteration for all of them; docs/speed.md, "Fused runs"), and return each finished ``Run``.

    ``runs``: each run's own options over the shared ``options``: its ``seed``, its data (a
    ``percent``) and float settings (``lr``, ``lambda_swap``, ``q``, ...). Runs that differ in
    anything else train in separate groups. Each run is the run ``fit`` would train with the
    same options, in ``<log_dir>/<dataset>/<exp>`` (default exp: ``<method>_seed<seed>``, or the
    run's own ``exp``).
    """
    from debiaslab.group import fusion_groups, train_group

    cfgs = []
    for own in runs:
        merged = {**options, **own}
        name = merged.pop("exp", None) or f"{exp or method}_seed{merged.get('seed', 0)}"
        cfgs.append(_config(method, data, model, log_dir, name, merged))
    if len({c.run_dir() for c in cfgs}) != len(cfgs):
        raise UserError("two runs of fit_many would share a run directory; give each its own exp")
    bundle = data if isinstance(data, DatasetBundle) else None
    for members in fusion_groups(cfgs, len(cfgs)):
        train_group([cfgs[i] for i in members], bundle=bundle)
    return [load_run(c.run_dir()) for c in cfgs]


def load_run(path: str | Path) -> Run:
    """A finished run from its directory (``<log_dir>/<dataset>/<exp>``). A run trained with a
    model factory needs that factory registered again (``register_model``) to rebuild its models."""
    path = Path(path)
    results, config = path / "results.json", path / "config.json"
    if not results.exists() or not config.exists():
        raise UserError(
            f"{path} holds no finished run (config.json and results.json); train it first "
            "or point at <log_dir>/<dataset>/<exp>"
        )
    record = json.loads(config.read_text())
    return Run(
        path, TrainConfig.from_saved(record["config"]), json.loads(results.read_text()), record
    )
