"""Batch transforms on uint8 image tensors, run on the training device (no PIL per step).

The paper's augmentation (RandomCrop with zero padding, RandomHorizontalFlip, Normalize) applied to
a whole batch at once, with a crop offset and a flip drawn for every image, as the per-image
torchvision pipeline does. (torchvision's transforms v2 on a batched tensor draw one set of
parameters for the whole batch, which is a different augmentation.) Random draws come from the
transform's own generator, on the batch's device, so a seed gives the same batches.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class BatchTransform:
    """uint8 [B, C, H, W] -> float: scale to [0, 1], optional random crop / flip, normalise.

    ``scale`` is 1/255 by default; the reference CMNIST checkpoints were trained on pixels divided
    by 255 twice, so evaluating them uses ``scale=1/255**2``.
    """

    def __init__(
        self,
        mean=None,
        std=None,
        crop_padding: int = 0,
        flip: bool = False,
        scale: float = 1.0 / 255.0,
        generator: torch.Generator | None = None,
        channels_last: bool = False,
        dtype: torch.dtype = torch.float32,
    ):
        self.mean = None if mean is None else torch.tensor(mean).view(1, -1, 1, 1)
        self.std = None if std is None else torch.tensor(std).view(1, -1, 1, 1)
        self.crop_padding = crop_padding
        self.flip = flip
        self.scale = scale
        self.generator = generator
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        # training batches in bf16 where the step computes in it (bf16 autocast on the CPU): the
        # models would cast a float batch anyway, once per model; bf16 is half the traffic
        self.dtype = dtype

    def __call__(self, images: torch.Tensor, train: bool = False) -> torch.Tensor:
        dtype = self.dtype if train else torch.float32  # evaluation casts under its own autocast
        direct = dtype != torch.float32 and self.mean is None
        # uint8 -> bf16 is exact; the product then rounds once, as fp32's product cast to bf16
        x = images.to(dtype if direct else torch.float32).mul_(self.scale)
        if train and self.crop_padding:
            x = random_crop(x, self.crop_padding, self.generator)
        if train and self.flip:
            x = random_hflip(x, self.generator)
        if self.mean is not None:
            x = (x - self.mean.to(x.device)) / self.std.to(x.device)
        return x.to(dtype).contiguous(memory_format=self.memory_format)

    def eval(self, images: torch.Tensor) -> torch.Tensor:
        return self(images, train=False)

    @property
    def only_scales(self) -> bool:
        """Whether a training batch is only scaled (no crop, flip or normalisation)."""
        plain = self.memory_format == torch.contiguous_format
        return not (self.crop_padding or self.flip) and self.mean is None and plain

    def scale_into(self, images: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """The training batch of a transform that ``only_scales``, written into ``out`` (of the
        training dtype): the numbers ``self(images, train=True)`` makes, without allocating a
        batch per step (a fused group's batch is tens of MB, and a fresh one costs page faults)."""
        return torch.mul(images, self.scale, out=out)


def _rand(n: int, high: int, generator, device) -> torch.Tensor:
    gdev = generator.device if generator is not None else device
    return torch.randint(0, high, (n,), generator=generator, device=gdev).to(device)


def random_crop(x: torch.Tensor, padding: int, generator=None) -> torch.Tensor:
    """RandomCrop(size=(H, W), padding) with zero padding, a different offset per image."""
    b, c, h, w = x.shape
    padded = F.pad(x, (padding,) * 4)
    dy = _rand(b, 2 * padding + 1, generator, x.device)
    dx = _rand(b, 2 * padding + 1, generator, x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
    bi = torch.arange(b, device=x.device)[:, None, None, None]
    ci = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[bi, ci, rows, cols]


def random_hflip(x: torch.Tensor, generator=None) -> torch.Tensor:
    flip = _rand(len(x), 2, generator, x.device).bool()
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def resize_uint8(images: torch.Tensor, size: int) -> torch.Tensor:
    """Resize a whole uint8 split once, at load time (antialiased bilinear)."""
    if images.shape[-2:] == (size, size):
        return images
    out = []
    for i in range(0, len(images), 512):
        chunk = F.interpolate(
            images[i : i + 512].float(),
            size=(size, size),
            mode="bilinear",
            antialias=True,
            align_corners=False,
        )
        out.append(chunk.round_().clamp_(0, 255).to(torch.uint8))
    return torch.cat(out)
