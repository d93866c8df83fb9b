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
    m.add_argument(
        "--train_vanilla", action="store_true", help="train Vanilla (ERM), as in the reference"
    )
    m.add_argument("--train_lff", action="store_true", help="train LfF (Learning from Failure)")
    m.add_argument(
        "--train_ours",
        action="store_true",
        help="train DisEnt (the paper's method), as in the reference",
    )
    m.add_argument(
        "--train_lff_be",
        action="store_true",
        help="train LfF with BiasEnsemble (same as --method lff_be)",
    )
    m.add_argument(
        "--train_disent_be",
        action="store_true",
        help="train DisEnt with BiasEnsemble (same as --method disent_be)",
    )
    add_data_args(g)
    g.add_argument(
        "--model",
        default=None,
        help="mlp, resnet18, resnet20 (LfF's CIFAR ResNet) or resnet50 (default: mlp for cmnist, resnet18 otherwise)",
    )
    g.add_argument(
        "--use_resnet20",
        action="store_true",
        help="same as --model resnet20 (the reference's flag; LfF's C-CIFAR10 backbone)",
    )
    g.add_argument(
        "--seed",
        type=int,
        default=0,
        help="random seed; the same seed on CPU gives identical results (default: 0)",
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
        "--device",
        default="auto",
        help="auto (GPU when there is one), cpu, cuda, cuda:N (default: auto)",
    )
    g.add_argument(
        "--input_scale",
        choices=["unit", "reference"],
        default=None,
        help="pixel scaling: unit = x/255 in [0, 1]; reference = x/255/255, as the reference code trained CMNIST "
        "(default: reference for cmnist, which reproduces the reference's results; unit otherwise)",
    )
    o = p.add_argument_group("optimisation")
    o.add_argument(
        "--num_steps", type=int, default=50_000, help="training iterations (default: 50000)"
    )
    o.add_argument(
        "--batch_size",
        type=int,
        default=None,
        help="batch size (default per dataset: 256 cmnist/cifar10c, 64 bffhq); honoured, unlike the reference",
    )
    o.add_argument(
        "--lr",
        type=float,
        default=None,
        help="Adam learning rate (default per dataset: 0.01 cmnist, 0.001 cifar10c, 0.0001 bffhq)",
    )
    o.add_argument("--weight_decay", type=float, default=0.0, help="Adam weight decay (default: 0)")
    o.add_argument(
        "--use_lr_decay", action="store_true", help="StepLR decay, counted from --curr_step"
    )
    o.add_argument(
        "--lr_decay_step",
        type=int,
        default=10_000,
        help="steps between LR decays, after --curr_step (default: 10000)",
    )
    o.add_argument("--lr_gamma", type=float, default=0.1, help="LR decay factor (default: 0.1)")
    d = p.add_argument_group("LfF / DisEnt")
    d.add_argument(
        "--q",
        type=float,
        default=0.7,
        help="GCE q, really used (the reference hard-codes 0.7) (default: 0.7)",
    )
    d.add_argument(
        "--gce_form",
        choices=["reference", "textbook"],
        default="reference",
        help="reference: CE * q * p^q (gradient of 1 - p^q, as the papers' code); "
        "textbook: (1 - p^q) / q (default: reference)",
    )
    d.add_argument(
        "--ema_alpha", type=float, default=0.7, help="per-sample loss EMA factor (default: 0.7)"
    )
    d.add_argument(
        "--curr_step",
        type=int,
        default=0,
        help="DisEnt: feature swap starts after this step; LR decay counts from it (default: 0)",
    )
    d.add_argument(
        "--lambda_swap",
        type=float,
        default=1.0,
        help="DisEnt: weight of the swap loss (default: 1)",
    )
    d.add_argument(
        "--lambda_dis_align",
        type=float,
        default=1.0,
        help="DisEnt: weight of the bias branch's GCE in L_dis (default: 1)",
    )
    d.add_argument(
        "--lambda_swap_align",
        type=float,
        default=1.0,
        help="DisEnt: weight of the bias branch's GCE in L_swap (default: 1)",
    )
    add_method_options(p)
    w = p.add_argument_group("weight averaging (evaluated next to the raw model; selections wa_*)")
    w.add_argument(
        "--wa_decay",
        type=float,
        default=None,
        help="decay of the exponential moving average of the "
        "weights (and BatchNorm statistics) of the models the method predicts with; 0 turns it off "
        "(default: 0.999)",
    )
    w.add_argument(
        "--wa_start",
        type=int,
        default=None,
        help="main-stage step the average starts at (default: "
        "DisEnt's --curr_step, 0 for the other methods)",
    )
    h = p.add_argument_group("speed")
    h.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="run each training step's per-batch computation (forwards, losses, per-sample "
        "state) through torch.compile (default: on where it was measured to be faster, "
        "which is nowhere yet: see docs/speed.md); if it does not compile it runs eagerly "
        "after one warning; --no-compile (or --no_compile) is the eager path: no "
        "torch.compile and, unless --cuda_graph says otherwise, no CUDA graphs",
    )
    h.add_argument(
        "--no_compile",
        dest="compile",
        action="store_false",
        default=None,
        help="same as --no-compile",
    )
    h.add_argument(
        "--cuda_graph",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="CUDA only: record the whole training step (forwards, losses, per-sample state, "
        "backward, Adam) once as a CUDA graph and replay it, one launch per step instead "
        "of hundreds (default: on for CUDA runs unless --no-compile)",
    )
    h.add_argument(
        "--no_amp",
        action="store_true",
        help="turn off bf16 automatic mixed precision (CUDA only; on by default there)",
    )
    h.add_argument(
        "--cpu_amp",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="CPU only: bf16 automatic mixed precision (oneDNN's bf16 dot products or matrix "
        "units, where the processor has them; see docs/speed.md for what it gains and costs); "
        "default: off (fp32)",
    )
    h.add_argument(
        "--fused_exact",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="CPU, fused runs (--seeds, sweep, fit_many): compute each run's products with its "
        "own kernels, so every run ends bit for bit where it ends alone; default: off, one "
        "batched product for all runs (faster; equal to float rounding: docs/speed.md)",
    )
    h.add_argument(
        "--no_channels_last",
        action="store_true",
        help="turn off the channels_last memory format of convolutional models (CUDA only; on by default there)",
    )
    lg = p.add_argument_group("evaluation and logging")
    lg.add_argument(
        "--exp",
        default="debugging",
        help="experiment name; the run goes to <log_dir>/<dataset>/<exp> (default: debugging)",
    )
    lg.add_argument("--log_dir", default="log", help="root of run directories (default: log)")
    lg.add_argument(
        "--valid_freq",
        type=int,
        default=500,
        help="evaluate on valid and test every N steps (default: 500)",
    )
    lg.add_argument(
        "--log_freq",
        type=int,
        default=500,
        help="log mean train losses every N steps (default: 500)",
    )
    lg.add_argument(
        "--save_freq",
        type=int,
        default=None,
        help="write the last-step checkpoint every N steps (default: --valid_freq)",
    )
    lg.add_argument(
        "--tensorboard",
        action="store_true",
        help="also write tensorboard events to <run_dir>/tensorboard",
    )
    lg.add_argument(
        "--report",
        action="store_true",
        help="at the end, write <run_dir>/report/report.html (see debiaslab report)",
    )
    lg.add_argument(
        "--wandb",
        action="store_true",
        help="also log to Weights & Biases (needs: pip install 'debiaslab[wandb]'; offline without credentials)",
    )
    lg.add_argument(
        "--wandb_project", default="debiaslab", help="wandb project name (default: debiaslab)"
    )
    lg.add_argument("--no_progress", action="store_true", help="no progress bar")
    lg.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing run directory of the same --exp",
    )
    lg.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in <log_dir>/<dataset>/<exp> from its last checkpoint "
        "(an unfinished run of the same config resumes anyway); with --resume, a finished run continues when "
        "--num_steps is raised",
    )
    lg.add_argument(
        "--keep_checkpoints",
        type=int,
        default=1,
        help="full checkpoints to keep: checkpoint_last.pt plus k-1 "
        "older checkpoint_step<N>.pt (default: 1)",
    )
    lg.add_argument(
        "--no_best_checkpoints",
        action="store_true",
        help="do not write checkpoint_<rule>.pt (the models each selection rule picks)",
    )
    lg.add_argument(
        "--on_nonfinite",
        choices=["stop", "skip"],
        default="stop",
        help="a NaN or infinite loss: stop the run "
        "(the last checkpoint stays) or skip that step (default: stop)",
    )
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


# train flags that set a TrainConfig field under another name, or in the other sense; every other
# flag is named as its field
RENAMED_FLAGS = {
    "amp": lambda args: not args.no_amp,
    "channels_last": lambda args: not args.no_channels_last,
    "progress": lambda args: not args.no_progress,
    "best_checkpoints": lambda args: not args.no_best_checkpoints,
    "model": lambda args: "resnet20" if args.use_resnet20 else args.model,
}


def config_from_args(args):
    from debiaslab.config import TrainConfig

    method = (
        next((m for flag, m in METHOD_FLAGS.items() if getattr(args, flag, False)), None)
        or args.method
    )
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
