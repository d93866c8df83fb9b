"""Evaluate a saved checkpoint: ours (a run directory or .pt file) or the reference code's."""

from __future__ import annotations

from pathlib import Path

import torch

from debiaslab.checkpoints import rule_of
from debiaslab.config import TrainConfig
from debiaslab.errors import UserError
from debiaslab.methods import METHODS
from debiaslab.models import DATASET_MODEL, MODELS, build_model
from debiaslab.rundir import RunDir
from debiaslab.selection import SELECTION_RULES, picked_nothing, shipped_selection

REFERENCE_FILES = {"disent": ("best_model_l.th", "best_model_b.th"), "vanilla": ("best_model.th",)}


def read_checkpoint(path: Path) -> dict:
    """A checkpoint file as a dict on the CPU; a file that does not load is a one-line error."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise UserError(
            f"cannot load checkpoint {path} ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
            "the file is corrupted or not a PyTorch checkpoint"
        ) from None


def _load_state(model, state: dict, path: Path) -> None:
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).splitlines()[0]
        raise UserError(
            f"checkpoint {path} does not fit the {type(model).__name__} of this dataset ({first}); "
            "check --dataset / --model"
        ) from None


def load_checkpoint(path, dataset: str, select: str | None = None, model: str | None = None):
    """Returns ``(method_cls, models, info)``; ``info['input_scale']`` names the pixel scaling to use.
    ``select`` None: the selection a run directory recorded as its default."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"--pretrained_path {path} does not exist")
    if path.is_dir():
        # the reference writes <log_dir>/<dataset>/<exp>/result/best_model_*.th; accept either folder
        for folder in (path, path / "result"):
            for method, files in REFERENCE_FILES.items():
                if all((folder / f).exists() for f in files):
                    return _load_reference(folder, files, method, dataset, model)
        run = RunDir(path)
        results = run.read_results()
        select = select or shipped_selection(results)
        if select not in SELECTION_RULES:
            raise UserError(
                f"--select {select!r} is not a rule; choose one of {', '.join(SELECTION_RULES)}"
            )
        picks = (results or {}).get("selections") or {}
        if select in picks and picks[select] is None:
            method = (results.get("config") or {}).get("method", "the method")
            picked = [rule for rule, pick in picks.items() if pick is not None]
            raise UserError(picked_nothing(str(path), method, select, picked))
        candidate = run.checkpoint(select)
        if not candidate.exists():
            raise UserError(
                f"{path} holds neither a debiaslab checkpoint for rule '{select}' ({candidate.name}) nor the "
                "reference's best_model_l.th + best_model_b.th / best_model.th"
            )
        path = candidate
    blob = read_checkpoint(path)
    if not isinstance(blob, dict) or "config" not in blob:
        raise UserError(f"{path} is not a debiaslab checkpoint (no config inside)")
    cfg = TrainConfig.from_saved(blob["config"]).resolved()
    method_cls = METHODS[blob["method"]]
    states = model_states(blob)
    num_classes = next(iter(states.values()))["fc.weight"].shape[0]
    models = rebuild_models(
        method_cls, cfg, states, num_classes, recorded_in_shape(path.parent), path
    )
    info = {
        "source": "debiaslab",
        "path": str(path),
        "step": blob["step"],
        "rule": rule_of(path, blob),
        "config": cfg,
        "input_scale": cfg.input_scale,
        "num_classes": num_classes,
    }
    return method_cls, models, info


def model_states(blob: dict) -> dict:
    """The state dicts of the predicting models in a checkpoint: a rule's pick or a full one."""
    return blob["models"] if blob.get("kind") == "models" else blob["method_state"]["models"]


def recorded_in_shape(run_dir: Path) -> tuple[int, ...] | None:
    """The input shape a run built its models for (config.json), None for runs from before it
    was recorded."""
    run = RunDir(run_dir)
    shape = run.read_config().get("in_shape") if run.config_file.exists() else None
    return tuple(shape) if shape else None


def rebuild_models(
    method_cls, cfg: TrainConfig, states: dict, num_classes: int, in_shape, source: Path
) -> dict:
    """The models ``method_cls`` predicts with, built as the run built them (each name's
    architecture, ``in_shape`` where recorded) and loaded from ``states``, in eval mode."""
    models = {}
    for name in method_cls.model_names:
        arch = method_cls.model_architecture(cfg, name)
        if arch.lower() not in MODELS:
            raise UserError(
                f"{source}: model {arch!r} is not known in this process; give the factory the run "
                f"was trained with: dl.load_run(run_dir, model=factory), or "
                f"dl.register_model({arch!r}, factory)"
            )
        model = build_model(
            arch, num_classes, method_cls.head_inputs, in_shape or _in_shape(states[name], arch)
        )
        _load_state(model, states[name], source)
        models[name] = model.eval()
    return models


def _in_shape(state: dict, model: str):
    if model.startswith("mlp"):
        return (state["feature.0.weight"].shape[1],)
    return (3, 224, 224)


def _load_reference(path: Path, files, method: str, dataset: str, model: str | None):
    """The reference's ``{'steps', 'state_dict', 'optimizer'}`` files; CMNIST ones used pixels / 255**2."""
    model = model or DATASET_MODEL.get(dataset, "resnet18")
    if model not in MODELS:
        raise UserError(f"unknown --model {model!r}")
    method_cls = METHODS[method]
    models, steps = {}, None
    for name, f in zip(method_cls.model_names, files):
        blob = read_checkpoint(path / f)
        if not isinstance(blob, dict) or "state_dict" not in blob:
            raise UserError(
                f"{path / f} is not a reference checkpoint (expected a dict with 'state_dict')"
            )
        state = blob["state_dict"]
        if "fc.weight" not in state:
            raise UserError(f"{path / f} has no 'fc' layer: not a reference {model} checkpoint")
        num_classes = state["fc.weight"].shape[0]
        m = build_model(model, num_classes, method_cls.head_inputs, _in_shape(state, model))
        _load_state(m, state, path / f)
        models[name] = m.eval()
        steps = blob.get("steps", steps)
    scale = "reference" if model == "mlp" else "unit"
    info = {
        "source": "reference",
        "path": str(path),
        "step": steps,
        "rule": "reference 'best' (selected on test by its authors)",
        "config": None,
        "input_scale": scale,
        "num_classes": num_classes,
    }
    return method_cls, models, info
