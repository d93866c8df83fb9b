"""Batch augmentation on the training device: whole uint8 batches, per-image random crop / flip."""

import pytest
import torch
import torch.nn.functional as F

from debiaslab.config import CIFAR_MEAN, CIFAR_STD
from debiaslab.data.transforms import BatchTransform, resize_uint8


def batch(n=64, size=12, seed=0):
    return torch.randint(
        0, 256, (n, 3, size, size), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8
    )


def seeded(**kw):
    return BatchTransform(generator=torch.Generator().manual_seed(kw.pop("seed", 0)), **kw)


def test_eval_scales_and_normalises_exactly():
    x = batch()
    out = BatchTransform(mean=CIFAR_MEAN, std=CIFAR_STD, crop_padding=4, flip=True).eval(x)
    want = (x.float() / 255 - torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1)) / torch.tensor(
        CIFAR_STD
    ).view(1, 3, 1, 1)
    assert out.dtype == torch.float32 and out.shape == x.shape
    torch.testing.assert_close(out, want)  # no augmentation at evaluation


def test_value_range_and_reference_scaling():
    x = batch()
    out = seeded(crop_padding=4, flip=True)(x, train=True)
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
    ref = BatchTransform(scale=1 / 255**2).eval(x)
    assert ref.max() <= 1 / 255 + 1e-9


def test_flip_is_applied_per_image():
    x = batch()
    out = seeded(flip=True)(x, train=True)
    plain = x.float() * (1 / 255)
    mirrored = plain.flip(-1)
    is_plain = (out == plain).flatten(1).all(1)
    is_mirror = (out == mirrored).flatten(1).all(1)
    assert (is_plain | is_mirror).all()
    assert 10 < int(is_mirror.sum()) < 54  # a fair coin per image, not one for the whole batch


def test_crop_is_a_shifted_window_of_the_zero_padded_image():
    x, pad = batch(n=32), 4
    out = seeded(crop_padding=pad)(x, train=True)
    padded = F.pad(x.float() * (1 / 255), (pad,) * 4)
    offsets = []
    for i in range(len(x)):
        hits = [
            (dy, dx)
            for dy in range(2 * pad + 1)
            for dx in range(2 * pad + 1)
            if torch.equal(padded[i, :, dy : dy + 12, dx : dx + 12], out[i])
        ]
        assert hits, f"image {i} is not a crop of its padded input"
        offsets.append(hits[0])
    assert len(set(offsets)) > 5 and any(o != (pad, pad) for o in offsets)


def test_identical_under_a_seed_and_different_across_seeds():
    x = batch()
    a = seeded(crop_padding=4, flip=True, seed=3)(x, train=True)
    b = seeded(crop_padding=4, flip=True, seed=3)(x, train=True)
    c = seeded(crop_padding=4, flip=True, seed=4)(x, train=True)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_channels_last_output():
    out = BatchTransform(channels_last=True).eval(batch())
    assert out.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("size", [6, 24])
def test_resize_uint8(size):
    x = batch(n=3)
    out = resize_uint8(x, size)
    assert out.dtype == torch.uint8 and out.shape == (3, 3, size, size)
    flat = torch.full((2, 3, 12, 12), 77, dtype=torch.uint8)
    assert (resize_uint8(flat, size) == 77).all()  # a constant image stays constant


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_batch_scaled_into_a_kept_buffer_is_the_batch_the_transform_makes(dtype):
    """A fused group writes its scaled batch into one buffer (``scale_into``): the same bits."""
    images = torch.randint(0, 256, (4, 6, 3, 5, 5), dtype=torch.uint8)
    transform = BatchTransform(dtype=dtype)
    assert transform.only_scales
    out = torch.empty(images.shape, dtype=dtype)
    made = transform(images.flatten(0, 1), train=True).unflatten(0, (4, 6))
    assert transform.scale_into(images, out) is out and torch.equal(out, made)
    assert not BatchTransform(flip=True).only_scales
    assert not BatchTransform(mean=(0.5,), std=(0.5,)).only_scales
