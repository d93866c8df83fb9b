"""ResNet18 Corrupted CIFAR-10 training step: debiaslab's in-memory pipeline vs a PIL DataLoader.

Both pipelines train the same model (torchvision ResNet18, batch 256, Adam 1e-3) with the same
augmentation (RandomCrop(32, padding=4), RandomHorizontalFlip, Normalize), on the same
reference-layout dataset (``debiaslab data build cifar10c``):

- debiaslab: the split is decoded once into a uint8 tensor on the device; each step gathers a batch
  with ``index_select`` and augments the whole batch on the device (``BatchTransform``), as ``train`` does;
- PIL: the usual research-code pipeline (the reference's), a ``Dataset`` that opens one PNG per
  sample with PIL and applies torchvision transforms per image, behind a ``DataLoader`` with workers.

It prints, for each, the input pipeline alone (batches/s) and whole training steps (steps/s).
Not a test: it prints numbers.

    python benchmarks/cifar10c_pipeline.py --data_dir dataset --steps 30
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from debiaslab.config import CIFAR_MEAN, CIFAR_STD, TrainConfig  # noqa: E402
from debiaslab.data.reference import load_reference, parse_labels, scan_folders, split_folders  # noqa: E402
from debiaslab.models import build_model  # noqa: E402
from debiaslab.prepare import make_transform, prepare_split, resolve_device, uses_cuda_extras  # noqa: E402


class PILFolder(torch.utils.data.Dataset):
    def __init__(self, paths, transform):
        self.paths, self.transform = paths, transform
        self.targets = [parse_labels(os.path.basename(p))[0] for p in paths]

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        from PIL import Image

        with Image.open(self.paths[i]) as im:
            return self.transform(im.convert("RGB")), self.targets[i]


def pil_batches(args, device):
    import torchvision.transforms as T

    folders = split_folders(Path(args.data_dir), "cifar10c", args.percent)["train"]
    paths = [p for p, _ in scan_folders(folders)]
    tf = T.Compose(
        [
            T.RandomCrop(32, padding=4),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize(CIFAR_MEAN, CIFAR_STD),
        ]
    )
    loader = torch.utils.data.DataLoader(
        PILFolder(paths, tf),
        batch_size=args.batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=args.workers,
        pin_memory=device.type == "cuda",
        persistent_workers=args.workers > 0,
    )
    while True:
        for x, y in loader:
            yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)


def debiaslab_batches(args, device, cfg):
    bundle = load_reference(args.data_dir, "cifar10c", args.percent)
    split = prepare_split(bundle.train, cfg, device)
    transform = make_transform(cfg, torch.Generator(device=device).manual_seed(0), device)
    g = torch.Generator().manual_seed(0)
    while True:
        perm = torch.randperm(len(split), generator=g).to(device)
        for i in range(0, len(perm) - args.batch_size + 1, args.batch_size):
            idx = perm[i : i + args.batch_size]
            yield (
                transform(torch.index_select(split.images, 0, idx), train=True),
                torch.index_select(split.targets, 0, idx),
            )


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def rate(batches, n: int, device, step=None) -> float:
    for _ in range(3):  # warm-up: workers start, kernels compile
        x, y = next(batches)
        if step:
            step(x, y)
    sync(device)
    t0 = time.perf_counter()
    for _ in range(n):
        x, y = next(batches)
        if step:
            step(x, y)
    sync(device)
    return n / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--data_dir", default="dataset", help="folder holding cifar10c/ (default: dataset)"
    )
    p.add_argument("--percent", default="1pct")
    p.add_argument(
        "--steps", type=int, default=30, help="timed training steps per pipeline (default: 30)"
    )
    p.add_argument(
        "--batches", type=int, default=100, help="timed input batches per pipeline (default: 100)"
    )
    p.add_argument("--batch_size", type=int, default=256)
    p.add_argument(
        "--workers",
        type=int,
        default=min(4, os.cpu_count() or 1),
        help="DataLoader workers of the PIL pipeline",
    )
    p.add_argument("--device", default="auto")
    p.add_argument("--no_amp", action="store_true", help="CUDA: no bf16 autocast")
    p.add_argument("--no_channels_last", action="store_true", help="CUDA: no channels_last")
    args = p.parse_args()
    device = resolve_device(args.device)
    cfg = TrainConfig(
        dataset="cifar10c",
        model="resnet18",
        amp=not args.no_amp,
        channels_last=not args.no_channels_last,
    ).resolved()
    amp, channels_last = uses_cuda_extras(cfg, device)
    model = build_model("resnet18", 10, 1, (3, 32, 32)).to(
        device, memory_format=torch.channels_last if channels_last else torch.contiguous_format
    )
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step(x, y):
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    print(
        f"torch {torch.__version__}, device {device}, {torch.get_num_threads()} threads, batch {args.batch_size}, "
        f"ResNet18, amp {amp}, channels_last {channels_last}, PIL DataLoader workers {args.workers}"
    )
    print(f"{'pipeline':12s} {'input batches/s':>16s} {'train steps/s':>14s}")
    for name, make in (
        ("debiaslab", lambda: debiaslab_batches(args, device, cfg)),
        ("PIL loader", lambda: pil_batches(args, device)),
    ):
        data_rate = rate(make(), args.batches, device)
        step_rate = rate(make(), args.steps, device, step)
        print(f"{name:12s} {data_rate:16.1f} {step_rate:14.2f}", flush=True)


if __name__ == "__main__":
    main()
