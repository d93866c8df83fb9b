"""``debiaslab train`` and ``debiaslab test``, also the paper's ``python train.py`` and
``python test.py``."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from debiaslab.cli.common import add_data_args, data_config, metrics_table
from debiaslab.config import METHOD_FIELDS, METHOD_OPTIONS
from debiaslab.errors import UserError
from debiaslab.methods import METHODS
from debiaslab.selection import (
    BIAS_MARK,
    TEST_MARK,
    figure_reads,
    marks,
    read_reasons,
    selection_names,
    shipped_selection,
)

# the reference code's method flags
METHOD_FLAGS = {
    "train_vanilla": "vanilla",
    "train_lff": "lff",
    "train_ours": "disent",
    "train_lff_be": "lff_be",
    "train_disent_be": "disent_be",
}
METHOD_CHOICES = tuple(METHODS)


def add_train_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("what to train")
    g.add_argument(
        "--preset",
        default=None,
        help="start from a cell of the paper's table, e.g. cmnist-0.5pct-disent: its "
        "dataset, ratio, method and hyper-parameters (flags given explicitly override it; "
        "debiaslab presets lists them)",
    )
    add_method_flags(g)
    add_data_args(g)
    g.add_argument(
        "--use_resnet20",
        action="store_true",
        help="same as --model resnet20 (the reference's flag; LfF's C-CIFAR10 backbone)",
    )
    g.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=None,
        metavar="SEED",
        help="train one run per seed, fused into one step per iteration (docs/speed.md, "
        "'Fused runs'); each run goes to <log_dir>/<dataset>/<exp>_seed<SEED> and is the run "
        "--seed SEED would train (instead of --seed)",
    )
    g.add_argument(
        "--jobs",
        type=int,
        default=None,
        metavar="N",
        help="with --seeds: the processes that train the seeds at once, each a fused group of its "
        "share on its share of the cores (default: one per core on the CPU, one on a GPU; "
        "docs/speed.md, 'Fused runs')",
    )
    g.add_argument(
        "--report",
        action="store_true",
        help="at the end, write <run_dir>/report/report.html (see debiaslab report)",
    )
    add_config_flags(p, g)
    add_method_options(p)
    r = p.add_argument_group("accepted for compatibility with the reference code")
    r.add_argument(
        "--num_workers",
        type=int,
        default=None,
        help="ignored: data lives in memory, no loader workers",
    )
    r.add_argument(
        "--momentum",
        type=float,
        default=None,
        help="ignored: the optimizer is Adam, as in the reference",
    )
    r.add_argument(
        "--target_attr_idx",
        type=int,
        default=0,
        choices=[0],
        help="labels come from file names <id>_<target>_<bias>; only 0 is supported",
    )
    r.add_argument("--bias_attr_idx", type=int, default=1, choices=[1], help="only 1 is supported")


def add_method_flags(g) -> None:
    m = g.add_mutually_exclusive_group()
    m.add_argument(
        "--method",
        choices=list(METHOD_CHOICES),
        help="training method, one of the registry's (debiaslab.methods.METHODS; docs/methods): "
        + ", ".join(
            f"{name}{' (trains on bias labels)' if m.uses_bias_labels else ''}"
            for name, m in METHODS.items()
        ),
    )
    for flag, method in METHOD_FLAGS.items():
        m.add_argument(
            f"--{flag}", action="store_true", help=f"same as --method {method} (the reference's)"
        )


# TrainConfig's sections: the first field of each -> the title of its flags' group
SECTIONS = {
    "dataset": "what to train",
    "num_steps": "optimisation",
    "q": "LfF / DisEnt",
    "input_scale": "inputs, weight averaging and speed",
    "valid_freq": "evaluation, checkpoints and logging",
}


def add_config_flags(p: argparse.ArgumentParser, first_group) -> None:
    """A flag per general TrainConfig field, made from its declaration (``config.setting``): its
    type, choices and docstring, the help. Each defaults to None, so TrainConfig's default (or
    the preset's) applies where the flag is not given. A bool field takes ``--name``,
    ``--no-name`` and ``--no_name`` (the reference's spelling)."""
    from debiaslab.clidoc import field_docs
    from debiaslab.config import TrainConfig, field_type

    docs = field_docs(TrainConfig)
    group = first_group
    for f in dataclasses.fields(TrainConfig):
        if f.name in SECTIONS and f.name != "dataset":
            group = p.add_argument_group(SECTIONS[f.name])
        if f.name not in docs or f.metadata.get("flag", True) is not True:
            continue  # a method's option (add_method_options) or a flag of its own
        kind, choices = field_type(f), f.metadata.get("choices")
        default = f.default if f.default is not dataclasses.MISSING else None
        text = " ".join(docs[f.name].replace("``", "").split()).replace("%", "%%")
        help_text = text if default is None else f"{text} (default: {default})"  # None: said
        if kind is bool:
            group.add_argument(
                f"--{f.name}", action=argparse.BooleanOptionalAction, default=None, help=help_text
            )
            group.add_argument(
                f"--no_{f.name}", dest=f.name, action="store_false", help=argparse.SUPPRESS
            )
        else:
            group.add_argument(
                f"--{f.name}", type=kind, choices=choices or None, default=None, help=help_text,
                metavar=None if choices else kind.__name__.upper(),
            )  # fmt: skip


def add_method_options(p: argparse.ArgumentParser) -> None:
    """A group of flags per method's own settings (``Method.options``), read from the registry:
    a new method's settings appear here without a line of this file."""
    groups: dict = {}  # the methods an option belongs to -> their options
    for name, option in METHOD_OPTIONS.items():
        groups.setdefault(METHOD_FIELDS[name], []).append(option)
    for names, options in groups.items():
        aliases = any(o.aliases for o in options)
        title = " and ".join(names) + ": the method's own settings"
        g = p.add_argument_group(
            title + ("; the reference's flag names work too" if aliases else "")
        )
        for o in options:
            flags = [f"--{o.name}", *(f"--{alias}" for alias in o.aliases)]
            if o.type is bool:
                kind = dict(action=argparse.BooleanOptionalAction)
            else:
                kind = dict(type=o.type, metavar=o.type.__name__.upper())
                if o.choices:
                    kind = dict(type=o.type, choices=o.choices)
            g.add_argument(*flags, dest=o.name, default=None, help=o.describe(), **kind)


# the reference's flag of a TrainConfig field that has another name
RENAMED_FLAGS = {"model": lambda args: "resnet20" if args.use_resnet20 else args.model}


def chosen_method(args) -> str | None:
    """The method the flags name (``--method`` or one of the reference's), if any."""
    flagged = (m for flag, m in METHOD_FLAGS.items() if getattr(args, flag, False))
    return next(flagged, None) or getattr(args, "method", None)


def config_from_args(args):
    from debiaslab.config import TrainConfig

    method = chosen_method(args)
    if method is None:
        raise UserError(
            "choose a method: --train_vanilla, --train_lff, --train_ours (DisEnt), --train_lff_be, "
            "--train_disent_be or --method NAME"
        )
    if args.use_resnet20 and args.model not in (None, "resnet20"):
        raise UserError(f"--use_resnet20 contradicts --model {args.model}; pass one of them")
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    given = {name: value for name, value in vars(args).items() if name in fields}
    given.update({name: flag(args) for name, flag in RENAMED_FLAGS.items()})
    given = {name: value for name, value in given.items() if value is not None}
    return TrainConfig(**{**given, **data_config(args), "method": method})


def cmd_train(args) -> int:
    from debiaslab.train import train

    cfg = config_from_args(args)
    if args.seeds is not None:
        return train_seeds(cfg, args)
    if getattr(args, "jobs", None) is not None:
        raise UserError("--jobs sets the processes of --seeds; give --seeds A B ... with it")
    results = train(cfg)
    print(results_summary(results))
    print(f"run directory: {Path(cfg.log_dir) / cfg.dataset / cfg.exp}")
    if args.report:
        from debiaslab.report import make_report

        print(f"report: {make_report([cfg.run_dir()], device=cfg.device)}")
    return 0


def train_seeds(cfg, args) -> int:
    """``train --seeds A B ...``: one run per seed, trained as fused groups (one per process of
    ``--jobs``, by default ``group.default_processes``)."""
    from debiaslab.group import GroupFailed, default_processes
    from debiaslab.sweep import train_fused

    if args.jobs is not None and args.jobs <= 0:
        raise UserError(f"--jobs {args.jobs}: give a positive number of processes")
    if len(set(args.seeds)) != len(args.seeds):
        raise UserError(f"--seeds {' '.join(map(str, args.seeds))} repeats a seed; give each once")
    cfgs = [dataclasses.replace(cfg, seed=seed, exp=f"{cfg.exp}_seed{seed}") for seed in args.seeds]
    try:
        results = train_fused(cfgs, args.jobs or default_processes(cfgs))
        failed = {}
    except GroupFailed as e:
        results, failed = e.results, e.errors
    for c, r in zip(cfgs, results):
        if r is not None:
            print(results_summary(r))
        print(f"run directory: {c.run_dir()}" + (" (FAILED)" if r is None else ""))
    if args.report:
        from debiaslab.report import make_report

        done = [c.run_dir() for c, r in zip(cfgs, results) if r is not None]
        print(f"report: {make_report(done, device=cfg.device)}")
    for run_dir, error in failed.items():
        print(f"debiaslab: error: {run_dir}: {error}", file=sys.stderr)
    return 1 if failed else 0


def results_summary(results: dict) -> str:
    rows = []
    for rule, sel in results["selections"].items():
        if sel is not None:
            mark = marks(figure_reads(results, rule))
            rows.append((f"{rule} (step {sel['step']}){' ' + mark if mark else ''}", sel["test"]))
    return (
        f"{results['method']} on {results['dataset']} {results['percent'] or ''}".rstrip()
        + f", seed {results['seed']}, "
        f"{results['steps']} steps, {results.get('steps_per_second', 0):.1f} steps/s — test "
        f"metrics (%) per selection rule (shipped by default: {shipped_selection(results)}):\n"
        + metrics_table(rows)
        + "\n"
        + "\n".join(label_notes(results))
    )


def label_notes(results: dict) -> list[str]:
    """What the marks of a run's printed table mean, and why every rule of it may carry one."""
    return read_reasons(results) + [f"{TEST_MARK} read test labels, {BIAS_MARK} read bias labels"]


def add_test_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--pretrained_path",
        required=True,
        help="a debiaslab run directory or checkpoint .pt, or a reference "
        "directory with best_model_l.th + best_model_b.th (DisEnt) or best_model.th (Vanilla)",
    )
    add_data_args(p)
    p.add_argument(
        "--select",
        default=None,
        choices=selection_names(),
        metavar="RULE",
        help="for a debiaslab run directory: the checkpoint a selection rule picked, one of "
        f"{', '.join(selection_names())} (wa_*: the weight-averaged model) (default: the one "
        "the run ships, its results.json default_selection; last for runs without one)",
    )
    p.add_argument(
        "--input_scale",
        choices=["auto", "unit", "reference"],
        default="auto",
        help="pixel scaling: unit = x/255, reference = x/255/255 (how the reference trained "
        "CMNIST); auto picks by checkpoint origin",
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N (default: auto)")
    p.add_argument(
        "--batch_size", type=int, default=2048, help="evaluation batch size (default: 2048)"
    )
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")


def cmd_test(args) -> int:
    import json

    import torch

    from debiaslab.config import TrainConfig
    from debiaslab.evaluate import load_checkpoint
    from debiaslab.metrics import primary_key, primary_metric
    from debiaslab.prepare import (
        evaluate,
        load_data,
        make_transform,
        prepare_split,
        resolve_device,
        uses_cuda_extras,
    )

    if args.batch_size <= 0:
        raise UserError(f"--batch_size must be positive, got {args.batch_size}")
    device = resolve_device(args.device)
    data = data_config(args)
    method_cls, models, info = load_checkpoint(args.pretrained_path, data["dataset"], args.select)
    cfg = info["config"] or TrainConfig(dataset=data["dataset"]).resolved()
    scale = info["input_scale"] if args.input_scale == "auto" else args.input_scale
    given = {k: v for k, v in data.items() if v is not None}
    cfg = dataclasses.replace(cfg, **given, input_scale=scale)
    bundle = load_data(cfg)
    if info["num_classes"] != bundle.num_classes:
        raise UserError(
            f"the checkpoint predicts {info['num_classes']} classes but {cfg.dataset} has {bundle.num_classes}; "
            "check --dataset"
        )
    amp, channels_last = uses_cuda_extras(cfg, device)
    transform = make_transform(cfg, None, device)
    for m in models.values():
        m.to(
            device, memory_format=torch.channels_last if channels_last else torch.contiguous_format
        )
    out = {
        "checkpoint": info["path"],
        "source": info["source"],
        "step": info["step"],
        "selection": info["rule"],
        "input_scale": scale,
        "metrics": {},
    }
    splits = {name: prepare_split(getattr(bundle, name), cfg, device) for name in ("valid", "test")}
    try:  # one image first: a checkpoint of another input shape fails here with a clear message
        with torch.no_grad():
            method_cls.predict(models, transform.eval(splits["test"].images[:1]))
    except RuntimeError as e:
        raise UserError(
            f"checkpoint {info['path']} does not fit the images of {cfg.data_label()} "
            f"({'x'.join(map(str, splits['test'].images.shape[1:]))}): {str(e).splitlines()[0][:120]}; "
            "check --dataset / --image_size"
        ) from None
    for name, split in splits.items():
        out["metrics"][name] = evaluate(
            lambda x: method_cls.predict(models, x),
            split,
            transform,
            bundle.num_classes,
            args.batch_size,
            amp,
        )
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(
            f"{info['source']} checkpoint {info['path']} (step {info['step']}, selection: {info['rule']}), "
            f"{method_cls.name} on {cfg.data_label()}, pixel scaling {scale}; metrics in %:"
        )
        print(metrics_table([(k, v) for k, v in out["metrics"].items()]))
        print(
            f"test {primary_key(cfg.dataset)} accuracy: "
            f"{100 * primary_metric(out['metrics']['test'], cfg.dataset):.2f}"
        )
    return 0


# (name, function, argument adder, help, description)
COMMANDS = [
    (
        "train",
        cmd_train,
        add_train_args,
        "train a method on a reference-layout dataset",
        "Train a method (Vanilla, LfF, DisEnt and the later ones). The paper's flags work as in its README.",
    ),
    (
        "test",
        cmd_test,
        add_test_args,
        "evaluate a checkpoint (debiaslab's or the reference code's)",
        "Evaluate a checkpoint on the valid and test splits and print every metric.",
    ),
]
