"""CIFAR-10-C corruptions: contract (shape, dtype, determinism, validation), strength, and a few
pieces checked against the reference implementations they replace (scipy zoom, skimage HSV, PIL)."""

import cv2
import numpy as np
import pytest
from scipy.ndimage import zoom as scipy_zoom

from debiaslab import UserError
from debiaslab.data import corruptions as C
from debiaslab.data.corruptions import CORRUPTIONS, TYPE0, TYPE1, corrupt

ALL = TYPE0 + TYPE1
DETERMINISTIC = {
    "brightness",
    "contrast",
    "saturate",
    "jpeg_compression",
    "pixelate",
    "gaussian_blur",
    "defocus_blur",
    "zoom_blur",
    "original",
}
# pixel distance is not graded by severity in the reference by design: frost lowers the image weight
# while raising the frost weight (1, .2) -> (.75, .45), and elastic_transform's affine jitter is largest
# at severity 1 (2.56 px) and smallest at 5 (0.96 px)
NOT_GRADED = {"frost", "elastic_transform", "original"}


def natural_images(n=8, seed=0):
    """Smooth colour gradients + filled shapes + mild noise, like small photos."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:32, 0:32] / 31.0
    out = np.empty((n, 32, 32, 3), np.uint8)
    for i in range(n):
        c0, c1, c2 = rng.uniform(30, 220, size=(3, 3))
        img = (
            c0
            + (c1 - c0) * xx[..., None] * rng.uniform(0.3, 1)
            + (c2 - c0) * yy[..., None] * rng.uniform(0.3, 1)
        )
        for _ in range(3):
            cx, cy, r = (int(v) for v in rng.integers(4, 28, size=3))
            cv2.circle(img, (cx, cy), r // 3 + 2, rng.uniform(0, 255, size=3).tolist(), -1)
        x0, y0 = (int(v) for v in rng.integers(0, 20, size=2))
        cv2.rectangle(img, (x0, y0), (x0 + 10, y0 + 6), rng.uniform(0, 255, size=3).tolist(), -1)
        out[i] = np.clip(img + rng.normal(0, 6, size=img.shape), 0, 255).astype(np.uint8)
    return out


IMAGES = natural_images()


def distance(name, severity, images=IMAGES):
    out = corrupt(images, name, severity, np.random.default_rng(0))
    return np.abs(out.astype(np.float64) - images).mean()


def test_names_and_types():
    assert set(CORRUPTIONS) == set(ALL) and len(ALL) == 20
    assert C.CORRUPTION_TYPES == {0: TYPE0, 1: TYPE1}


@pytest.mark.parametrize("name", ALL)
def test_deterministic_under_seed(name):
    before = IMAGES.copy()
    a = corrupt(IMAGES, name, 3, np.random.default_rng(0))
    assert np.array_equal(IMAGES, before)  # the input is never modified
    b = corrupt(IMAGES, name, 3, np.random.default_rng(0))
    assert a.tobytes() == b.tobytes()
    c = corrupt(IMAGES, name, 3, np.random.default_rng(1))
    assert (a.tobytes() == c.tobytes()) == (name in DETERMINISTIC)


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("severity", [1, 5])
def test_uint8_same_shape_on_extremes(name, severity):
    # black / white / grey images hit the guarded divisions (fog, brightness, saturate, spatter)
    images = np.concatenate(
        [IMAGES, np.zeros((1, 32, 32, 3), np.uint8), np.full((2, 32, 32, 3), 255, np.uint8)]
    )
    images[-1] = 128
    with np.errstate(all="raise"):
        out = corrupt(images, name, severity, np.random.default_rng(0))
    assert out.dtype == np.uint8 and out.shape == images.shape


@pytest.mark.parametrize("name", [n for n in ALL if n != "original"])
def test_changes_the_image(name):
    assert distance(name, 1) > 0.5
    assert distance(name, 5) > 2.0


@pytest.mark.parametrize("name", [n for n in ALL if n not in NOT_GRADED])
def test_stronger_at_higher_severity(name):
    # 5 vs 1 only: some are not monotone in between, e.g. saturate ((.3, 0), (.1, 0), (1.5, 0), ...)
    # and spatter, which switches from water (1-3) to mud (4-5)
    assert distance(name, 5) > distance(name, 1)


@pytest.mark.parametrize("severity", range(1, 6))
def test_original_is_identity(severity):
    out = corrupt(IMAGES, "original", severity, np.random.default_rng(0))
    assert np.array_equal(out, IMAGES) and out is not IMAGES


def test_validation():
    rng = np.random.default_rng(0)
    with pytest.raises(UserError, match="gaussian_noise"):
        corrupt(IMAGES, "fisheye", 1, rng)
    for bad in (0, 6, 2.0, True):
        with pytest.raises(UserError):
            corrupt(IMAGES, "fog", bad, rng)
    for bad in (IMAGES.astype(np.float32), IMAGES[..., :1], IMAGES[0]):
        with pytest.raises(ValueError):
            corrupt(bad, "fog", 1, rng)


@pytest.mark.parametrize("name", ALL)
def test_empty_and_single_batches(name):
    assert corrupt(IMAGES[:0], name, 5, np.random.default_rng(0)).shape == (0, 32, 32, 3)
    assert corrupt(IMAGES[:1], name, 5, np.random.default_rng(0)).shape == (1, 32, 32, 3)


# --- pieces against the reference implementations ------------------------------------------


def reference_clipped_zoom(img, factor):  # make_cifar_c.py
    crop = int(np.ceil(32 / factor))
    top = (32 - crop) // 2
    img = scipy_zoom(img[top : top + crop, top : top + crop], (factor, factor, 1), order=1)
    trim = (img.shape[0] - 32) // 2
    return img[trim : trim + 32, trim : trim + 32]


@pytest.mark.parametrize("factor", [1.0, 1.06, 1.13, 1.25, 1.75, 2.25])
def test_zoom_matches_scipy(factor):
    x = IMAGES.astype(np.float32) / 255
    ref = np.stack([reference_clipped_zoom(im, factor) for im in x])
    err = np.abs(C._zoom_sum(x, [factor]) - ref)
    assert (
        err.max() < 1 / 64 + 1e-4 and err.mean() < 1e-3
    )  # OpenCV rounds sample positions to 1/32 pixel


def test_glass_blur_matches_reference_loop():
    sigma, delta, iterations = C.GLASS_BLUR[4]
    ours = C.glass_blur(IMAGES, 5, np.random.default_rng(7))
    rng = np.random.default_rng(7)  # replay the same offsets through the reference's pixel loop
    x = C._to_uint8(C._gaussian(C._to_float(IMAGES), sigma))
    for _ in range(iterations):
        d = rng.integers(-delta, delta, size=(2, len(x), 30, 30))
        for n in range(len(x)):
            for h in range(32 - delta, delta, -1):
                for w in range(32 - delta, delta, -1):
                    hp, wp = h + d[1, n, h - 2, w - 2], w + d[0, n, h - 2, w - 2]
                    x[n, h, w], x[n, hp, wp] = x[n, hp, wp], x[n, h, w]
    assert np.array_equal(ours, C._to_uint8(C._gaussian(C._to_float(x), sigma)))


@pytest.mark.parametrize("severity", range(1, 6))
def test_hsv_corruptions_match_skimage(severity):
    from skimage.color import hsv2rgb, rgb2hsv

    x = IMAGES / 255.0
    for name, channel, f in (
        ("brightness", 2, lambda v: v + C.BRIGHTNESS[severity - 1]),
        ("saturate", 1, lambda s: s * C.SATURATE[severity - 1][0] + C.SATURATE[severity - 1][1]),
    ):
        hsv = rgb2hsv(x)
        hsv[..., channel] = np.clip(f(hsv[..., channel]), 0, 1)
        ref = np.uint8(np.clip(hsv2rgb(hsv), 0, 1) * 255)
        assert (
            np.abs(
                corrupt(IMAGES, name, severity, np.random.default_rng(0)).astype(int) - ref
            ).max()
            <= 1
        )


@pytest.mark.parametrize("severity", range(1, 6))
def test_pixelate_matches_pil(severity):
    Image = pytest.importorskip("PIL.Image")
    size = int(32 * C.PIXELATE[severity - 1])
    ref = np.stack(
        [
            np.array(
                Image.fromarray(im).resize((size, size), Image.BOX).resize((32, 32), Image.BOX)
            )
            for im in IMAGES
        ]
    )
    assert np.array_equal(corrupt(IMAGES, "pixelate", severity, np.random.default_rng(0)), ref)
