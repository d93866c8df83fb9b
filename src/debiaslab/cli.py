"""The ``debiaslab`` command (and the paper's ``python train.py`` / ``python test.py``)."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from debiaslab.config import PALETTE_CHOICES
from debiaslab.errors import UserError
from debiaslab.selection import TABLE_RULES, selection_names, shipped_selection
from debiaslab.version import __version__

METHOD_FLAGS = {
    "train_vanilla": "vanilla",
    "train_lff": "lff",
    "train_ours": "disent",
    "train_lff_be": "lff_be",
    "train_disent_be": "disent_be",
}
# debiaslab.methods.METHODS, without importing torch
DENETDM_FLAGS = (
    "denetdm_stage1_steps",
    "denetdm_stage1_lr",
    "denetdm_stage1_weight_decay",
    "denetdm_temperature",
    "denetdm_distill_weight",
    "denetdm_deep",
    "denetdm_shallow",
)
METHOD_CHOICES = (
    "vanilla",
    "lff",
    "disent",
    "jtt",
    "lc",
    "groupdro",
    "lff_be",
    "disent_be",
    "denetdm",
)


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (exit code 2)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _fmt(v) -> str:
    return "   n/a" if v is None else f"{100 * v:6.2f}"


def metrics_table(rows: list[tuple[str, dict]]) -> str:
    width = max([28] + [len(name) for name, _ in rows])
    head = f"{'':{width}s} {'acc':>6s} {'align':>6s} {'confl':>6s} {'unbias':>6s} {'worst':>6s}"
    lines = [head]
    for name, m in rows:
        lines.append(
            f"{name:{width}s} {_fmt(m['accuracy'])} {_fmt(m['aligned'])} {_fmt(m['conflicting'])} "
            f"{_fmt(m['unbiased'])} {_fmt(m['worst_group'])}"
        )
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------- train
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
        help="training method: vanilla, lff, disent; jtt "
        "(label-free, two stages); lc (Logit Correction, label-free); groupdro (trains on bias labels); "
        "lff_be, disent_be (LfF / DisEnt with BiasEnsemble, label-free); denetdm (two stages, label-free)",
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
    j = p.add_argument_group("JTT / LC / GroupDRO")
    j.add_argument(
        "--jtt_steps",
        type=int,
        default=None,
        help="JTT: steps of the first (ERM) stage, whose "
        "misclassified training samples form the error set (default: 1000)",
    )
    j.add_argument(
        "--jtt_upweight",
        type=int,
        default=None,
        help="JTT: times each error-set sample is drawn per "
        "epoch of the second stage (lambda_up; default: 50)",
    )
    j.add_argument(
        "--groupdro_eta",
        type=float,
        default=None,
        help="GroupDRO: step size of the group weights (default: 0.01)",
    )
    j.add_argument(
        "--lc_tau",
        type=float,
        default=None,
        help="LC: weight of the log-prior correction of the logits (default: 1)",
    )
    j.add_argument(
        "--lc_prior_alpha",
        type=float,
        default=None,
        help="LC: moving-average factor of the group prior estimate (default: 0.9)",
    )
    j.add_argument(
        "--lc_mixup",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="LC: Group MixUp of "
        "minority samples with majority samples of their class (default: on)",
    )
    b = p.add_argument_group(
        "BiasEnsemble (lff_be / disent_be); the reference's flag names are accepted too"
    )
    b.add_argument(
        "--be_num_models",
        "--num_bias_models",
        dest="be_num_models",
        type=int,
        default=None,
        help="auxiliary biased (GCE) models trained one after another before the main stage (default: 5)",
    )
    b.add_argument(
        "--be_steps",
        "--biased_model_train_iter",
        dest="be_steps",
        type=int,
        default=None,
        help="training steps of each auxiliary model; its best-validation-accuracy state is kept (default: 1000)",
    )
    b.add_argument(
        "--be_tau",
        "--biased_model_softmax_threshold",
        dest="be_tau",
        type=float,
        default=None,
        help="an auxiliary model finds a sample bias-aligned when its probability of the sample's class is "
        "above this (default: 0.99)",
    )
    b.add_argument(
        "--be_agreement",
        "--agreement",
        dest="be_agreement",
        type=int,
        default=None,
        help="how many auxiliary models must find a sample aligned for the biased branch to train on it "
        "(default: 3)",
    )
    n = p.add_argument_group("DeNetDM")
    n.add_argument(
        "--denetdm_stage1_steps",
        type=int,
        default=None,
        help="DeNetDM: steps of stage 1, the deep and "
        "shallow branches trained as a product of experts (default: 10000)",
    )
    n.add_argument(
        "--denetdm_stage1_lr",
        type=float,
        default=None,
        help="DeNetDM: Adam learning rate of stage 1 "
        "(default: 0.001; --lr is the target's, in stage 2)",
    )
    n.add_argument(
        "--denetdm_stage1_weight_decay",
        type=float,
        default=None,
        help="DeNetDM: Adam weight decay of "
        "stage 1 (default: 0.001; --weight_decay is the target's)",
    )
    n.add_argument(
        "--denetdm_temperature",
        type=float,
        default=None,
        help="DeNetDM: temperature T of the "
        "distillation from the shallow branch in stage 2 (default: 2)",
    )
    n.add_argument(
        "--denetdm_distill_weight",
        type=float,
        default=None,
        help="DeNetDM: weight of that distillation term (default: 1)",
    )
    n.add_argument(
        "--denetdm_deep",
        default=None,
        help="DeNetDM: the deep (biased) branch's architecture (default: "
        "mlp_deep for an MLP, resnet20 on 32x32 images, else the run's --model)",
    )
    n.add_argument(
        "--denetdm_shallow",
        default=None,
        help="DeNetDM: the shallow (debiased) branch's architecture "
        "(default: mlp_shallow for an MLP, cnn3 on 32x32 images, else cnn4)",
    )
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


def add_data_args(g) -> None:
    g.add_argument(
        "--dataset",
        default=None,
        help="dataset folder under --data_dir: cmnist, cifar10c, bffhq, bar "
        "(default: cmnist; with --manifest / --image_folder: that file's or folder's name)",
    )
    g.add_argument(
        "--percent",
        default="1pct",
        help="ratio of bias-conflicting training samples, a folder name such as 0.5pct, 1pct, "
        "2pct, 5pct (default: 1pct, as the reference)",
    )
    g.add_argument(
        "--data_dir",
        default="dataset",
        help="folder holding <dataset>/ in the reference layout (default: dataset)",
    )
    t = g.add_mutually_exclusive_group()
    t.add_argument(
        "--use_type0",
        action="store_true",
        help="cifar10c: corruption type 0 in <data_dir>/cifar10c (the default)",
    )
    t.add_argument(
        "--use_type1",
        action="store_true",
        help="cifar10c: corruption type 1 in <data_dir>/cifar10c_type1",
    )
    u = g.add_mutually_exclusive_group()
    u.add_argument(
        "--manifest",
        default=None,
        help="your own dataset: a CSV with columns path, target and optionally bias, split (see docs/datasets.md)",
    )
    u.add_argument(
        "--image_folder",
        default=None,
        help="your own dataset: a folder with train/<class>/, test/<class>/ and optionally valid/<class>/ images",
    )
    g.add_argument(
        "--image_size",
        type=int,
        default=None,
        help="resize every image to N x N once, at load time (default per dataset: 32 cifar10c, "
        "224 bffhq and bar, none otherwise)",
    )
    g.add_argument(
        "--palette",
        choices=PALETTE_CHOICES,
        default=None,
        help="cmnist: the colours the data must have, read back from its images: disent (the default; the "
        "paper's data), lff (LfF's protocol) or any (whatever the folder holds); a folder of the other palette "
        "is refused",
    )


def data_config(args) -> dict:
    """The TrainConfig fields that say which dataset to read."""
    dataset = args.dataset
    if dataset is None:
        source = args.manifest or args.image_folder
        dataset = Path(source).resolve().stem if source else "cmnist"
    return dict(
        dataset=dataset,
        percent=args.percent,
        data_dir=args.data_dir,
        corruption_type=1 if args.use_type1 else 0,
        manifest=args.manifest,
        image_folder=args.image_folder,
        image_size=args.image_size,
        palette=args.palette,
    )


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
    return TrainConfig(
        **data_config(args),
        method=method,
        model="resnet20" if args.use_resnet20 else args.model,
        amp=not args.no_amp,
        cpu_amp=args.cpu_amp,
        channels_last=not args.no_channels_last,
        log_dir=args.log_dir,
        exp=args.exp,
        seed=args.seed,
        device=args.device,
        num_steps=args.num_steps,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        use_lr_decay=args.use_lr_decay,
        lr_decay_step=args.lr_decay_step,
        lr_gamma=args.lr_gamma,
        q=args.q,
        gce_form=args.gce_form,
        ema_alpha=args.ema_alpha,
        curr_step=args.curr_step,
        lambda_swap=args.lambda_swap,
        lambda_dis_align=args.lambda_dis_align,
        lambda_swap_align=args.lambda_swap_align,
        jtt_steps=args.jtt_steps,
        jtt_upweight=args.jtt_upweight,
        groupdro_eta=args.groupdro_eta,
        lc_tau=args.lc_tau,
        lc_prior_alpha=args.lc_prior_alpha,
        lc_mixup=args.lc_mixup,
        be_num_models=args.be_num_models,
        be_steps=args.be_steps,
        be_tau=args.be_tau,
        be_agreement=args.be_agreement,
        **{name: getattr(args, name) for name in DENETDM_FLAGS},
        wa_decay=args.wa_decay,
        wa_start=args.wa_start,
        valid_freq=args.valid_freq,
        log_freq=args.log_freq,
        save_freq=args.save_freq,
        tensorboard=args.tensorboard,
        wandb=args.wandb,
        wandb_project=args.wandb_project,
        progress=not args.no_progress,
        overwrite=args.overwrite,
        resume=args.resume,
        keep_checkpoints=args.keep_checkpoints,
        best_checkpoints=not args.no_best_checkpoints,
        on_nonfinite=args.on_nonfinite,
        input_scale=args.input_scale,
        compile=args.compile,
        cuda_graph=args.cuda_graph,
    )


def cmd_train(args) -> int:
    from debiaslab.train import train

    cfg = config_from_args(args)
    if args.seeds is not None:
        return train_seeds(cfg, args)
    results = train(cfg)
    print(results_summary(results))
    print(f"run directory: {Path(cfg.log_dir) / cfg.dataset / cfg.exp}")
    if args.report:
        from debiaslab.report import make_report

        print(f"report: {make_report([cfg.run_dir()], device=cfg.device)}")
    return 0


def train_seeds(cfg, args) -> int:
    """``train --seeds A B ...``: one run per seed, trained as one fused group."""
    from debiaslab.group import GroupFailed, train_group

    if len(set(args.seeds)) != len(args.seeds):
        raise UserError(f"--seeds {' '.join(map(str, args.seeds))} repeats a seed; give each once")
    cfgs = [dataclasses.replace(cfg, seed=seed, exp=f"{cfg.exp}_seed{seed}") for seed in args.seeds]
    try:
        results = train_group(cfgs)
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
            rows.append((f"{rule} (step {sel['step']})", sel["test"]))
    return (
        f"{results['method']} on {results['dataset']} {results['percent'] or ''}".rstrip()
        + f", seed {results['seed']}, "
        f"{results['steps']} steps, {results.get('steps_per_second', 0):.1f} steps/s — test "
        "metrics (%) per selection rule "
        f"(shipped by default: {shipped_selection(results)}; oracle_best_test selects on test "
        "labels):\n" + metrics_table(rows)
    )


# ------------------------------------------------------------------------------------------ test
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


# ------------------------------------------------------------------------------------------ data
def add_build_output_args(p: argparse.ArgumentParser, folder: str, train_images: str) -> None:
    """The output options every dataset builder shares."""
    p.add_argument(
        "--out",
        default="dataset",
        help=f"output folder; the dataset goes to <out>/{folder} (default: dataset)",
    )
    p.add_argument(
        "--percent",
        nargs="+",
        default=["0.5", "1", "2", "5"],
        help="bias-conflicting percentages to build (default: 0.5 1 2 5)",
    )
    p.add_argument(
        "--valid_size",
        type=int,
        default=5000,
        help=f"{train_images} held out as the biased valid split (default: 5000)",
    )
    p.add_argument("--force", action="store_true", help="replace an existing dataset folder")


def build_percents(args) -> list[float]:
    from debiaslab.data.builder import parse_pct

    return sorted({parse_pct(p) for p in args.percent})


def check_valid_size(args, num_train: int, train_images: str) -> None:
    if not 0 < args.valid_size < num_train:
        raise UserError(
            f"--valid_size {args.valid_size} must be between 1 and the {num_train} {train_images}"
        )


def add_build_cmnist_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--mnist",
        default=None,
        help="local MNIST: an .npz (x_train, y_train, x_test, y_test), a torchvision root "
        "holding MNIST/, or an image folder with train/<digit>/ and test/<digit>/ (default: download with torchvision)",
    )
    add_build_output_args(p, "cmnist", "MNIST training digits")
    p.add_argument("--seed", type=int, default=0, help="builder seed (default: 0)")
    p.add_argument(
        "--severity",
        type=int,
        default=4,
        choices=[1, 2, 3, 4, 5],
        help="colour-noise severity, sigma 0.05..0.002 (default: 4, the paper's)",
    )
    p.add_argument(
        "--palette",
        choices=[c for c in PALETTE_CHOICES if c != "any"],
        default="disent",
        help="digit colours: disent = the ten saturated hues of the DisEnt paper's data, read off the dataset "
        "figure of its code repository (assets/data.png; the default, the data of the paper's Table 1); "
        "lff = LfF's palette (Nam et al. 2020), an easier problem",
    )
    p.add_argument(
        "--download_dir",
        default=None,
        help="where torchvision downloads MNIST (default: <out>/.downloads)",
    )


def cmd_build_cmnist(args) -> int:
    from debiaslab.data.cmnist import write_cmnist
    from debiaslab.data.mnist import load_mnist

    pcts = build_percents(args)
    out = Path(args.out)
    mnist, prov = load_mnist(
        args.mnist, Path(args.download_dir) if args.download_dir else out / ".downloads"
    )
    check_valid_size(args, len(mnist["x_train"]), "MNIST training digits")
    manifest = write_cmnist(
        mnist,
        prov,
        out,
        pcts,
        args.seed,
        args.severity,
        args.valid_size,
        force=args.force,
        palette=args.palette,
    )
    print(
        f"Colored MNIST ({args.palette} palette) written to {out / 'cmnist'} in "
        f"{manifest['build_seconds']} s (manifest: {out / 'cmnist' / 'manifest.json'})"
    )
    return 0


def add_cifar10_source_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--cifar10",
        default=None,
        help="local CIFAR-10: an .npz (x_train, y_train, x_test, y_test), a .zip or folder with "
        "train/<class>/ and test/<class>/ images (e.g. ../shared/data/cifar10-jpeg.zip), or a torchvision root "
        "(default: download with torchvision)",
    )
    p.add_argument(
        "--download_dir",
        default=None,
        help="where torchvision downloads CIFAR-10 (default: <out>/.downloads)",
    )
    p.add_argument(
        "--type",
        type=int,
        default=0,
        choices=[0, 1],
        dest="corruption_type",
        help="corruption set: 0 = snow, frost, fog, brightness, contrast, spatter, elastic, jpeg, pixelate, saturate "
        "(the paper's); 1 = gaussian/shot/impulse/speckle noise, "
        "gaussian/defocus/glass/motion/zoom blur, original (default: 0)",
    )
    p.add_argument(
        "--severity",
        type=int,
        default=5,
        choices=[1, 2, 3, 4, 5],
        help="CIFAR-10-C severity (default: 5, the hardest, which is what LfF's 'Severity4' runs used)",
    )
    p.add_argument("--seed", type=int, default=0, help="builder seed (default: 0)")


def add_build_cifar10c_args(p: argparse.ArgumentParser) -> None:
    add_cifar10_source_args(p)
    add_build_output_args(p, "cifar10c (type 1: <out>/cifar10c_type1)", "CIFAR-10 training images")
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="worker processes for the corruptions (default: one per CPU core)",
    )


def _load_cifar10(args):
    from debiaslab.data.cifar10 import load_cifar10

    out = Path(getattr(args, "out", ".") or ".")
    return load_cifar10(
        args.cifar10, Path(args.download_dir) if args.download_dir else out / ".downloads"
    )


def cmd_build_cifar10c(args) -> int:
    from debiaslab.data.cifar10c import write_cifar10c
    from debiaslab.data.reference import cifar10c_folder

    pcts = build_percents(args)
    if args.workers is not None and args.workers <= 0:
        raise UserError(f"--workers must be positive, got {args.workers}")
    cifar, prov = _load_cifar10(args)
    check_valid_size(args, len(cifar["x_train"]), "CIFAR-10 training images")
    manifest = write_cifar10c(
        cifar,
        prov,
        Path(args.out),
        pcts,
        args.seed,
        args.severity,
        args.corruption_type,
        args.valid_size,
        force=args.force,
        workers=args.workers,
    )
    root = Path(args.out) / cifar10c_folder(args.corruption_type)
    print(
        f"Corrupted CIFAR-10 (type {args.corruption_type}, severity {args.severity}) written to {root} "
        f"in {manifest['build_seconds']} s (manifest: {root / 'manifest.json'})"
    )
    return 0


def add_preview_cifar10c_args(p: argparse.ArgumentParser) -> None:
    add_cifar10_source_args(p)
    p.add_argument(
        "--output",
        default="cifar10c_preview.png",
        help="PNG to write (default: cifar10c_preview.png)",
    )
    p.add_argument(
        "--columns", type=int, default=10, help="images per row, one class each first (default: 10)"
    )


def cmd_preview_cifar10c(args) -> int:
    from torchvision.io import encode_png

    from debiaslab.data.cifar10c import preview_grid
    from debiaslab.io import atomic_write_bytes

    if args.columns <= 0:
        raise UserError(f"--columns must be positive, got {args.columns}")
    cifar, _ = _load_cifar10(args)
    grid = preview_grid(cifar, args.corruption_type, args.severity, args.seed, args.columns)
    atomic_write_bytes(Path(args.output), encode_png(grid).numpy().tobytes())
    print(
        f"preview of type {args.corruption_type} at severity {args.severity} written to {args.output} "
        f"(rows: clean, then one per corruption in bias-label order)"
    )
    return 0


def preset_defaults(name: str) -> dict:
    """A preset as argparse defaults of the train command (explicit flags still win)."""
    from debiaslab.presets import get_preset

    return {**get_preset(name).config, "exp": name}


def cmd_presets(args) -> int:
    from debiaslab.presets import PAPER_SOURCE, PRESETS, match_presets

    presets = match_presets(args.patterns) if args.patterns else list(PRESETS.values())
    if args.json:
        import json

        print(
            json.dumps(
                {
                    p.name: {
                        "config": p.config,
                        "uses_bias_labels": p.uses_bias_labels,
                        "paper": {
                            "mean": p.paper_mean,
                            "std": p.paper_std,
                            "metric": p.metric,
                            "source": p.source,
                        },
                    }
                    for p in presets
                },
                indent=2,
            )
        )
        return 0
    sources = sorted({p.source for p in presets}, key=lambda s: s != PAPER_SOURCE)
    print(
        f"{len(presets)} presets (paper numbers: {'; '.join(sources)}); run one with: debiaslab train --preset NAME"
    )
    for p in presets:
        print("  " + p.describe())
    return 0


# ----------------------------------------------------------------------------------------- sweep
def add_sweep_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "the grid (a config file and/or flags; a flag replaces that key everywhere in the file, "
        "sub-grids included: --seeds 1 runs every sub-grid's cells at seed 1)"
    )
    g.add_argument(
        "--config",
        default=None,
        help="TOML or JSON grid file (see docs/reproducing.md and configs/)",
    )
    g.add_argument(
        "--presets",
        nargs="+",
        default=None,
        metavar="PATTERN",
        help="run these presets (shell patterns, "
        "e.g. 'cmnist-*' or '*-disent') instead of datasets x ratios x methods",
    )
    g.add_argument("--datasets", nargs="+", default=None, help="datasets (default: cmnist)")
    g.add_argument(
        "--methods", nargs="+", default=None, help="methods (default: vanilla lff disent)"
    )
    g.add_argument(
        "--ratios",
        nargs="+",
        default=None,
        help="bias-conflicting percentages, e.g. 0.5 1 2 5 (default: the paper's for each dataset)",
    )
    g.add_argument("--seeds", nargs="+", type=int, default=None, help="seeds (default: 0)")
    g.add_argument(
        "--set",
        nargs="+",
        action="extend",
        default=[],
        metavar="KEY=V[,V...]",
        dest="set_values",
        help="any train setting, e.g. num_steps=1000 data_dir=dataset; a comma list adds an axis (lr=0.01,0.001)",
    )
    x = p.add_argument_group("execution")
    x.add_argument(
        "--out",
        default="runs",
        help="results directory; runs go to <out>/<dataset>/<method>-<ratio>-seed<seed>-<hash> (default: runs)",
    )
    x.add_argument(
        "--backend",
        choices=["local", "ray"],
        default="local",
        help="local subprocesses, or Ray tasks "
        "(needs: pip install 'debiaslab[ray]') (default: local)",
    )
    x.add_argument(
        "--jobs",
        type=int,
        default=None,
        help="local: runs at once (default: 4 per GPU, as measured on an H200, or 1 on CPU); "
        "CPU runs share the cores between them",
    )
    x.add_argument(
        "--devices",
        default="auto",
        help="local: auto, cpu, cuda (every GPU) or GPU indices such as 0,1 (default: auto)",
    )
    x.add_argument(
        "--runs_per_device",
        type=int,
        default=None,
        metavar="K",
        help="runs sharing each device at once: local, K per GPU (or K on the CPU, each with "
        "1/K of the cores); ray, each run asks for 1/K GPU. Small models leave a GPU idle "
        "between kernels, so packing runs fills it (default: 4 on a GPU, 1 on the CPU; instead of --jobs)",
    )
    x.add_argument(
        "--fuse",
        choices=("auto", "off"),
        default="auto",
        help="local: train runs that differ only in seed, data and float settings as fused "
        "groups, one process and one step per iteration for the whole group (docs/speed.md, "
        "'Fused runs'); off: one process per run (default: auto)",
    )
    x.add_argument(
        "--fuse_max",
        type=int,
        default=12,
        metavar="K",
        help="the most runs in one fused group (default: 12); groups are also split so that "
        "every job has one",
    )
    x.add_argument(
        "--address",
        default=None,
        help="ray: cluster address, e.g. ray://head:10001 or auto (default: start a local Ray)",
    )
    x.add_argument(
        "--cpus_per_run",
        type=float,
        default=None,
        help="ray: CPUs each run asks for (default: 1 with a GPU, 2 without)",
    )
    x.add_argument(
        "--gpus_per_run",
        type=float,
        default=None,
        help="ray: GPUs each run asks for (default: 1 if the cluster has GPUs, else 0)",
    )
    x.add_argument(
        "--dry_run", action="store_true", help="list the runs and their status, run nothing"
    )
    x.add_argument(
        "--no_progress",
        action="store_true",
        help="no progress bar (one line per finished run only)",
    )


def sweep_spec(args) -> dict:
    from debiaslab.sweep import load_spec_file, parse_set

    spec = load_spec_file(args.config) if args.config else {}
    for key in ("presets", "datasets", "methods", "ratios", "seeds"):
        if (
            getattr(args, key) is not None
        ):  # a flag overrides the file everywhere, sub-grids included
            spec[key] = getattr(args, key)
            for sub in spec.get("grid", []):
                sub.pop(key, None)
    if args.set_values:
        spec["set"] = {**spec.get("set", {}), **parse_set(args.set_values)}
    return spec


def cmd_sweep(args) -> int:
    from debiaslab.sweep import sweep

    if args.backend == "ray":
        import debiaslab.sweep_ray  # noqa: F401  (registers the ray backend)

    if args.jobs is not None and args.jobs <= 0:
        raise UserError(f"--jobs must be positive, got {args.jobs}")
    if args.fuse_max <= 0:
        raise UserError(f"--fuse_max must be positive (1: no fusion), got {args.fuse_max}")
    return sweep(
        sweep_spec(args),
        Path(args.out),
        args.backend,
        args.jobs,
        args.devices,
        args.address,
        args.cpus_per_run,
        args.gpus_per_run,
        not args.no_progress,
        args.dry_run,
        args.runs_per_device,
        fuse_max=args.fuse_max if args.fuse == "auto" else 1,
    )


def cmd_report(args) -> int:
    from debiaslab.report import make_report

    if args.max_points <= 1:
        raise UserError(f"--max_points must be at least 2, got {args.max_points}")
    path = make_report(
        args.runs,
        Path(args.output) if args.output else None,
        args.select,
        args.tsne,
        args.device,
        args.max_points,
    )
    print(f"report written to {path} (figures beside it)")
    return 0


def cmd_collect(args) -> int:
    from debiaslab.collect import collect
    from debiaslab.io import atomic_write_bytes

    if args.gaps and (args.format != "markdown" or args.rules):
        raise UserError(
            "--gaps prints its own markdown table of every rule; drop --format / --rules"
        )
    text = collect(args.dir, args.format, args.rules, gaps=args.gaps)
    if args.into:
        from debiaslab.collect import update_block

        atomic_write_bytes(Path(args.into), update_block(Path(args.into), text).encode())
        print(f"table updated in {args.into}")
    elif args.output:
        atomic_write_bytes(Path(args.output), text.encode())
        print(f"table written to {args.output}")
    else:
        sys.stdout.write(text)
    return 0


# ------------------------------------------------------------------------------------------ demo
def add_demo_args(p: argparse.ArgumentParser) -> None:
    from debiaslab.demo import DEMO_DEFAULTS

    p.add_argument(
        "--methods",
        nargs="+",
        default=["vanilla", "lff", "disent"],
        choices=["vanilla", "lff", "disent"],
        help="methods to compare",
    )
    p.add_argument(
        "--num_steps",
        type=int,
        default=DEMO_DEFAULTS["num_steps"],
        help=f"steps per method (default: {DEMO_DEFAULTS['num_steps']})",
    )
    p.add_argument(
        "--percent",
        type=float,
        default=DEMO_DEFAULTS["percent"],
        help=f"bias-conflicting percentage of the training split (default: {DEMO_DEFAULTS['percent']})",
    )
    p.add_argument(
        "--seed", type=int, default=0, help="seed of the data and of the runs (default: 0)"
    )
    p.add_argument(
        "--log_dir",
        default="log",
        help="runs go to <log_dir>/colored_digits/demo_<method> (default: log)",
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda (default: auto)")
    p.add_argument("--no_progress", action="store_true", help="no progress bars")


def cmd_demo(args) -> int:
    from debiaslab.demo import run_demo

    run_demo(
        args.methods,
        args.num_steps,
        args.percent,
        args.seed,
        args.log_dir,
        args.device,
        not args.no_progress,
    )
    return 0


# ------------------------------------------------------------------------------------------ main
def add_presets_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("patterns", nargs="*", help="shell patterns, e.g. 'cmnist-*' (default: all)")
    p.add_argument("--json", action="store_true", help="print them as JSON")


RULE_CHOICES = selection_names()


def add_report_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "runs", nargs="+", help="run directories (several: curves overlaid and a summary table)"
    )
    p.add_argument(
        "--output",
        default=None,
        help="folder for report.html and the PNGs (default: <run_dir>/report for one "
        "run, ./report for several)",
    )
    p.add_argument(
        "--select",
        default=None,
        choices=RULE_CHOICES,
        help="the checkpoint the feature and accuracy-grid figures use (default: the one each "
        "run ships, its results.json default_selection)",
    )
    p.add_argument(
        "--tsne",
        action="store_true",
        help="add a t-SNE projection of the features (slower) to the PCA one",
    )
    p.add_argument("--device", default="cpu", help="device for extracting features (default: cpu)")
    p.add_argument(
        "--max_points",
        type=int,
        default=2000,
        help="test samples per projection plot (default: 2000)",
    )


def add_collect_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("dir", help="a sweep's --out folder, or any folder holding run directories")
    p.add_argument(
        "--format",
        choices=["markdown", "csv", "latex"],
        default="markdown",
        help="output format (default: markdown)",
    )
    p.add_argument(
        "--rules",
        nargs="+",
        default=None,
        choices=RULE_CHOICES,
        metavar="RULE",
        help=f"selection rules to show, of {', '.join(RULE_CHOICES)} (default: {' '.join(TABLE_RULES)})",
    )
    p.add_argument(
        "--gaps",
        action="store_true",
        help="instead of the results tables: each selection rule's "
        "test score minus the oracle's and minus last's, per cell and over cells (runs from before a "
        "rule existed are replayed from their eval logs)",
    )
    p.add_argument("--output", default=None, help="write to this file instead of stdout")
    p.add_argument(
        "--into",
        default=None,
        metavar="DOC",
        help="replace the block between '<!-- collect:begin -->' and "
        "'<!-- collect:end -->' in DOC (e.g. docs/results/cmnist.md) with the table; the rest of DOC stays",
    )


# (name, function, argument adder, help, description) of every command; nested ones under data build / preview
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
    (
        "presets",
        cmd_presets,
        add_presets_args,
        "list the presets: one per cell of the paper's table, with its number",
        "List the presets (the paper's hyper-parameters and number for each table cell).",
    ),
    (
        "sweep",
        cmd_sweep,
        add_sweep_args,
        "run a grid of runs (methods x datasets x ratios x seeds x any flag), resumably",
        "Run every cell of a grid, locally in parallel or on Ray. Each run directory is named by "
        "the hash of its config: "
        "finished runs are skipped, unfinished ones resumed.",
    ),
    (
        "collect",
        cmd_collect,
        add_collect_args,
        "the results table of every run under a folder, beside the paper's numbers",
        "Read every run under DIR and print mean ± std over seeds per cell, one table per "
        "selection rule, with the paper's "
        "number and the difference; missing and unfinished runs are shown as such.",
    ),
    (
        "report",
        cmd_report,
        add_report_args,
        "an HTML report of one or more runs: curves, W detection, features, accuracy grid",
        "Write a self-contained report.html (images embedded) and its PNG figures for one or more run directories.",
    ),
    (
        "demo",
        cmd_demo,
        add_demo_args,
        "compare Vanilla, LfF and DisEnt on Colored Digits (no download, a few minutes on CPU)",
        "Train each method briefly on Colored Digits (scikit-learn's bundled digits, coloured by "
        "the Colored MNIST protocol) "
        "and print aligned / conflicting / unbiased test accuracy.",
    ),
]
BUILD_COMMANDS = [
    (
        "cmnist",
        cmd_build_cmnist,
        add_build_cmnist_args,
        "Colored MNIST (LfF protocol): 0.5/1/2/5 pct",
        "Build Colored MNIST by the LfF protocol: 55k train / 5k biased valid from MNIST train, "
        "10k unbiased test from MNIST "
        "test; reference layout + cache + manifest.json.",
    ),
    (
        "cifar10c",
        cmd_build_cifar10c,
        add_build_cifar10c_args,
        "Corrupted CIFAR-10 (LfF protocol): 0.5/1/2/5 pct, type 0 or 1, CIFAR-10-C severities",
        "Build Corrupted CIFAR-10 by the LfF protocol: 45k train / 5k biased valid from CIFAR-10 "
        "train, 10k unbiased test from "
        "CIFAR-10 test; reference layout + cache + manifest.json.",
    ),
]
PREVIEW_COMMANDS = [
    (
        "cifar10c",
        cmd_preview_cifar10c,
        add_preview_cifar10c_args,
        "one row per corruption, one column per class",
        "Apply each corruption of a type to a few CIFAR-10 test images and write a labelled PNG grid.",
    ),
]


def _add_commands(sub, commands) -> dict:
    parsers = {}
    for name, func, add_args, help_text, description in commands:
        parsers[name] = sub.add_parser(name, help=help_text, description=description)
        add_args(parsers[name])
        parsers[name].set_defaults(func=func)
    return parsers


def build_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="debiaslab",
        description="Train and evaluate debiased image classifiers (Vanilla, LfF, DisEnt).",
    )
    p.add_argument("--version", action="version", version=f"debiaslab {__version__}")
    p.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    parsers = _add_commands(sub, COMMANDS[:2])
    d = sub.add_parser(
        "data", help="build datasets", description="Build datasets in the reference layout."
    )
    dsub = d.add_subparsers(dest="data_command", metavar="ACTION", parser_class=Parser)
    b = dsub.add_parser(
        "build",
        help="build a dataset",
        description="Build a dataset in the reference layout, with a fast cache and a manifest.",
    )
    _add_commands(
        b.add_subparsers(dest="build_dataset", metavar="DATASET", parser_class=Parser),
        BUILD_COMMANDS,
    )
    pv = dsub.add_parser(
        "preview",
        help="write a PNG grid of a dataset's biases",
        description="Write a PNG grid to look at a builder's output.",
    )
    _add_commands(
        pv.add_subparsers(dest="preview_dataset", metavar="DATASET", parser_class=Parser),
        PREVIEW_COMMANDS,
    )
    _add_commands(sub, COMMANDS[2:])
    p._train_parser = parsers["train"]
    return p


def _one_line_warnings() -> None:
    """debiaslab's own warnings print as one line, without the source line Python adds."""
    import warnings

    package = str(Path(__file__).resolve().parent)
    default = warnings.formatwarning

    def formatwarning(message, category, filename, lineno, line=None):
        if str(filename).startswith(package):
            return f"debiaslab: warning: {message}\n"
        return default(message, category, filename, lineno, line)

    warnings.formatwarning = formatwarning


def main(argv=None) -> int:
    _one_line_warnings()
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "preset", None):
        try:
            parser._train_parser.set_defaults(**preset_defaults(args.preset))
        except UserError as e:
            print(f"debiaslab: error: {e}", file=sys.stderr)
            return 2
        args = parser.parse_args(argv)  # again: explicit flags override the preset's values
    if not hasattr(args, "func"):
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except UserError as e:
        if args.debug:
            raise
        print(f"debiaslab: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("debiaslab: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `debiaslab presets | head`: the reader left, nothing went wrong
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as e:  # the file system said no: a full disk, a permission, a path that is not what it should be
        if args.debug:
            raise
        where = f" ({e.filename})" if e.filename else ""
        print(
            f"debiaslab: error: {e.strerror or e}{where}; check the path, its permissions and the free space "
            "(--debug shows where it happened)",
            file=sys.stderr,
        )
        return 2


def reference_main(command: str, argv=None) -> int:
    """``python train.py ...`` / ``python test.py ...`` from the repo root: the paper's commands."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    return main((["--debug"] if debug else []) + [command] + argv)
