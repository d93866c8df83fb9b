"""What a run needs before its first step, and to evaluate: the device (and the processor it
records), the seeds, the data, the batch transform and the metrics of a model on a split. The
training loop, ``test``, ``report`` and the Python API all set a run up through this module."""

from __future__ import annotations

import platform
import random
from pathlib import Path

import numpy as np
import torch

from debiaslab.config import CIFAR_MEAN, CIFAR_STD, INPUT_SCALES, TrainConfig
from debiaslab.data.reference import load_reference
from debiaslab.data.splits import DatasetBundle, Split
from debiaslab.data.transforms import BatchTransform, resize_uint8
from debiaslab.errors import UserError
from debiaslab.metrics import compute_metrics, predict_split


def resolve_device(name: str) -> torch.device:
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(
            f"--device {name!r} is not a device; use auto, cpu, cuda or cuda:N"
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(
            f"--device {name} asked for, but this machine has no usable CUDA GPU; use --device cpu (or auto)"
        )
    count = torch.cuda.device_count() if device.type == "cuda" else 0
    if device.type == "cuda" and device.index is not None and device.index >= count:
        raise UserError(
            f"--device {name}: this machine has {count} CUDA GPU(s), cuda:0 to cuda:{count - 1}; "
            "pick one of them (or --device cuda)"
        )
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def uses_cuda_extras(cfg: TrainConfig, device: torch.device) -> tuple[bool, bool]:
    """(bf16 autocast, channels_last): autocast where ``amp`` (CUDA) or ``cpu_amp`` (CPU) is on;
    channels_last where its flag is on, the device is CUDA and the model convolves."""
    device_type = torch.device(device).type
    cuda = device_type == "cuda"
    return cfg.bf16(device_type), cfg.channels_last and cuda and cfg.model != "mlp"


def make_transform(
    cfg: TrainConfig, generator: torch.Generator | None, device="cpu"
) -> BatchTransform:
    return BatchTransform(
        mean=CIFAR_MEAN if cfg.normalize else None,
        std=CIFAR_STD if cfg.normalize else None,
        crop_padding=4 if cfg.augment else 0,
        flip=bool(cfg.augment),
        generator=generator,
        scale=INPUT_SCALES[cfg.input_scale],
        channels_last=uses_cuda_extras(cfg, device)[1],
        dtype=torch.bfloat16
        if torch.device(device).type == "cpu" and cfg.bf16("cpu")
        else torch.float32,
    )


def prepare_split(split: Split, cfg: TrainConfig, device) -> Split:
    """Move a split to the device, then resize it there once (never per step)."""
    split = split.to(device)
    if cfg.image_size is not None:
        split = Split(resize_uint8(split.images, cfg.image_size), split.targets, split.biases)
    return split


# The settings ``load_data`` reads: configs equal in them read the same data.
DATA_SOURCE_FIELDS = (
    "dataset", "percent", "data_dir", "corruption_type", "palette", "manifest", "image_folder",
    "image_size",
)  # fmt: skip


def cached_loader():
    """``load_data`` that reads each data source (``DATA_SOURCE_FIELDS``) once, for the runs of
    a group or a sweep; a source refused once (UserError) is refused again without rereading."""
    bundles: dict = {}

    def load(cfg: TrainConfig) -> DatasetBundle:
        key = tuple(getattr(cfg, f) for f in DATA_SOURCE_FIELDS)
        if key not in bundles:
            try:
                bundles[key] = load_data(cfg)
            except UserError as e:
                bundles[key] = e
        if isinstance(bundles[key], UserError):
            raise bundles[key]
        return bundles[key]

    return load


def load_data(cfg: TrainConfig) -> DatasetBundle:
    """The dataset a config names: a user manifest or image folder, BAR, or a reference-layout folder."""
    from debiaslab.data.folders import DATA_SEED, load_bar, load_image_folder, load_manifest
    from debiaslab.data.reference import cifar10c_folder, dataset_root

    if cfg.manifest:
        return load_manifest(cfg.manifest, cfg.image_size, seed=DATA_SEED)
    if cfg.image_folder:
        return load_image_folder(cfg.image_folder, cfg.image_size, seed=DATA_SEED)
    if cfg.dataset == "bar":
        return load_bar(dataset_root(cfg.data_dir, "bar"), cfg.image_size or 224, seed=DATA_SEED)
    folder = cifar10c_folder(cfg.corruption_type) if cfg.dataset == "cifar10c" else cfg.dataset
    bundle = load_reference(cfg.data_dir, folder, cfg.percent)
    if cfg.dataset == "cmnist":
        from debiaslab.data.cmnist import check_palette

        bundle.info.update(check_palette(bundle, cfg.resolved().palette, Path(cfg.data_dir)))
    return bundle


def evaluate(
    logits_of,
    split: Split,
    transform: BatchTransform,
    num_classes: int,
    batch_size: int,
    amp: bool = False,
    pseudo_biases: torch.Tensor | None = None,
) -> dict:
    """Every metric of ``logits_of`` (prepared inputs -> logits) on ``split`` (``pseudo_unbiased``
    too where ``pseudo_biases`` are given)."""
    preds = predict_split(autocast_logits(logits_of, amp), split.images, transform.eval, batch_size)
    return compute_metrics(preds, split.targets, split.biases, num_classes, pseudo_biases)


def autocast_logits(logits_of, amp: bool):
    """``logits_of`` under bf16 autocast (on the inputs' device) where ``amp`` is on."""

    def predict(x):
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
            return logits_of(x)

    return predict


def hardware(device: torch.device) -> dict:
    """The processor a run's numbers came from: CPU kernels (ATen's vector width, oneDNN's bf16
    path) differ between machines, so the same seed and config give different bits on another
    CPU, though not different results beyond seed noise."""
    info = {"cpu": _cpu_model(), "cpu_capability": torch.backends.cpu.get_cpu_capability()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
