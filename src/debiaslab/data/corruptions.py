"""The 20 CIFAR-10-C corruptions (Hendrycks & Dietterich, 2019), vectorised over a batch of 32x32 images.

Parameters are those of ``ImageNet-C/create_c/make_cifar_c.py`` in github.com/hendrycks/robustness
(the 32x32 CIFAR version, not the ImageNet one); they sit in one named tuple of 5 severities per
corruption below. Only numpy, scipy and OpenCV are used. Every function takes uint8 [N, 32, 32, 3]
RGB images, a severity 1..5 and a ``np.random.Generator`` (the only source of randomness) and
returns uint8 images of the same shape. The reference draws its random numbers in another order,
so outputs match it in distribution, not bit for bit.

Deviations from the reference:
- uint8 conversion: the reference ends with ``np.uint8(clip(x, 0, 1) * 255)``, which truncates; so do
  we, after adding 1e-3 so that float32 round-off of an exact level (e.g. 28.99998) keeps its level.
  Where the reference's last step is an 8-bit encoder (motion blur via ImageMagick, JPEG, PIL
  resizes) we round or use the encoder's own output.
- motion_blur, and the snow layer of snow: ImageMagick's MotionBlurImage is re-implemented: a
  one-sided line of 2*radius+1 taps with Gaussian weights exp(-i^2 / 2 sigma^2), tap i at offset
  (round(i cos a), round(i sin a)), edge pixels replicated, output rounded to 8 bits.
- frost: the reference blends crops of frost photographs (frost1..5, resized by 0.2). We have none,
  so five frost textures are *generated* (smooth icy film + needle crystals with side branches,
  bluish white) from fixed seeds on first use, at about the size of the resized photographs; the
  blend and the random 32x32 crop follow the reference.
- glass_blur: the reference's "swap" ``x[h, w], x[h', w'] = x[h', w'], x[h, w]`` acts on numpy views,
  so it only copies the neighbour into (h, w); and since its offsets are in {-1, 0} and it scans h
  and w downwards, every source pixel is still unmodified when read. One iteration is therefore
  exactly a parallel gather, which is what we do (same semantics, no pixel loop).
- zoom_blur / snow zoom: scipy.ndimage.zoom(order=1) of the centre crop is done with
  cv2.warpAffine (bilinear, same sample positions, but OpenCV rounds them to 1/32 pixel: values
  differ by at most 1/64 of the local pixel step, ~1e-4 on average).
- gaussian / defocus blur: scipy's Gaussian kernel (same radius rule) applied with cv2 filters.
- brightness / saturate: the HSV round trip is done in closed form on RGB (same result as
  skimage's rgb2hsv -> hsv2rgb, including grey pixels taking hue 0 when saturated).
- impulse_noise: every value is flipped with probability ``amount``, half to 0 and half to 255
  (skimage's ``random_noise(mode='s&p')`` of today; the 2019 one drew a fixed count of positions).
- spatter: the liquid layer is clipped to [0, 1] before its uint8 cast (the reference could wrap
  around), and the normalisation by the layer's maximum is guarded (the reference gave NaN for an
  empty layer).
- jpeg_compression: OpenCV's libjpeg (4:2:0 chroma, like PIL's default) instead of PIL.
- pixelate: PIL's BOX resampling (down to int(32 c), back up to 32) re-implemented as separable
  weight matrices, rounding to 8 bits after each pass like PIL.
"""

from __future__ import annotations

import cv2
import numpy as np

from debiaslab.errors import UserError

SIZE = 32

# ---------------------------------------------------------------------------------------------
# parameters: one entry per severity 1..5, as in make_cifar_c.py

GAUSSIAN_NOISE = (0.04, 0.06, 0.08, 0.09, 0.10)  # std
SHOT_NOISE = (500, 250, 100, 75, 50)  # photons per unit intensity
IMPULSE_NOISE = (0.01, 0.02, 0.03, 0.05, 0.07)  # fraction of values flipped
SPECKLE_NOISE = (0.06, 0.10, 0.12, 0.16, 0.20)  # std of the multiplicative noise
GAUSSIAN_BLUR = (0.4, 0.6, 0.7, 0.8, 1.0)  # sigma
GLASS_BLUR = (
    (0.05, 1, 1),
    (0.25, 1, 1),
    (0.4, 1, 1),
    (0.25, 1, 2),
    (0.4, 1, 2),
)  # sigma, max_delta, iterations
DEFOCUS_BLUR = ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1))  # disk radius, alias blur
MOTION_BLUR = ((6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5))  # radius, sigma
ZOOM_BLUR = tuple(np.arange(1, top, 0.01) for top in (1.06, 1.11, 1.16, 1.21, 1.26))  # zoom factors
SNOW = (  # mean, std, zoom, threshold, blur radius, blur sigma, image weight
    (0.1, 0.2, 1, 0.6, 8, 3, 0.95),
    (0.1, 0.2, 1, 0.5, 10, 4, 0.9),
    (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
    (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85),
    (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8),
)
FROST = ((1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45))  # image weight, frost weight
FOG = ((0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75))  # strength, wibble decay
BRIGHTNESS = (0.05, 0.1, 0.15, 0.2, 0.3)  # added to V
CONTRAST = (0.75, 0.5, 0.4, 0.3, 0.15)  # contrast factor
SATURATE = ((0.3, 0), (0.1, 0), (1.5, 0), (2, 0.1), (2.5, 0.2))  # S -> S * a + b
SPATTER = (  # mean, std, sigma, threshold, strength (water) / mud sigma, mud?
    (0.62, 0.1, 0.7, 0.7, 0.5, 0),
    (0.65, 0.1, 0.8, 0.7, 0.5, 0),
    (0.65, 0.3, 1, 0.69, 0.5, 0),
    (0.65, 0.1, 0.7, 0.69, 0.6, 1),
    (0.65, 0.1, 0.5, 0.68, 0.6, 1),
)
ELASTIC_TRANSFORM = tuple(
    (SIZE * a, SIZE * s, SIZE * f)
    for a, s, f in (  # alpha, sigma, affine jitter (pixels)
        (0, 0, 0.08),
        (0.05, 0.2, 0.07),
        (0.08, 0.06, 0.06),
        (0.1, 0.04, 0.05),
        (0.1, 0.03, 0.03),
    )
)
JPEG_COMPRESSION = (80, 65, 58, 50, 40)  # quality
PIXELATE = (0.95, 0.9, 0.85, 0.75, 0.65)  # downscale factor

WATER_RGB = np.float32([175, 238, 238]) / 255  # pale turquoise
MUD_RGB = np.float32([63, 42, 20]) / 255
FROST_SEEDS = (1, 2, 3, 4, 5)
FROST_SHAPE = (160, 224)  # ~ the frost photographs after the reference's 0.2x resize

# ---------------------------------------------------------------------------------------------
# helpers


def _to_float(images):
    return images.astype(np.float32) / 255


def _to_uint8(x):
    """[0, 1] floats -> uint8 by truncation, as the reference's np.uint8(clip(x, 0, 1) * 255)."""
    return np.clip(x * 255 + 1e-3, 0, 255).astype(np.uint8)


def _per_channel(fn, x):
    """Apply a 2-D cv2 op to every channel of every image of x [N, H, W, C], 128 channels per call."""
    n, h, w, c = x.shape
    stacked = x.transpose(1, 2, 0, 3).reshape(h, w, n * c)
    chunks = [fn(np.ascontiguousarray(stacked[:, :, i : i + 128])) for i in range(0, n * c, 128)]
    out = np.concatenate([ch.reshape(ch.shape[0], ch.shape[1], -1) for ch in chunks], axis=2)
    return out.reshape(out.shape[0], out.shape[1], n, c).transpose(2, 0, 1, 3)


def _gaussian(x, sigma, border=cv2.BORDER_REPLICATE, truncate=4.0):
    """skimage.filters.gaussian / scipy.ndimage.gaussian_filter over H and W of x [N, H, W, C] float32.
    Border: 'nearest' = BORDER_REPLICATE, 'reflect' = BORDER_REFLECT."""
    if sigma == 0:
        return x
    r = int(truncate * sigma + 0.5)
    t = np.arange(-r, r + 1)
    k = np.exp(-0.5 * t**2 / sigma**2)
    k = (k / k.sum()).astype(np.float32)
    return _per_channel(lambda a: cv2.sepFilter2D(a, -1, k, k, borderType=border), x)


def _zoom_matrix(factor):
    """Affine (inverse) map of the reference's clipped_zoom: scipy zoom (order=1) of the centre crop,
    trimmed back to SIZE. scipy maps output o to input o * (in - 1) / (out - 1)."""
    crop = int(np.ceil(SIZE / factor))
    top = (SIZE - crop) // 2
    zoomed = int(round(crop * factor))
    trim = (zoomed - SIZE) // 2
    scale = (crop - 1) / (zoomed - 1)
    shift = top + trim * scale
    return np.float32([[scale, 0, shift], [0, scale, shift]])


def _zoom_sum(x, factors):
    """Sum over factors of clipped_zoom(x, factor) for x [N, H, W, C] float32."""
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    mats = [_zoom_matrix(f) for f in factors]
    return _per_channel(
        lambda a: sum(
            cv2.warpAffine(a, m, (SIZE, SIZE), flags=flags, borderMode=cv2.BORDER_REPLICATE)
            for m in mats
        ),
        x,
    )


def _motion_blur(x, radius, sigma, angles):
    """ImageMagick's MotionBlurImage on x [N, H, W, C] with one angle (degrees) per image; float32 out."""
    n, h, w, c = x.shape
    taps = np.arange(2 * radius + 1)
    weights = np.exp(-(taps**2) / (2 * sigma**2))
    weights = (weights / weights.sum()).astype(np.float32)
    a = np.deg2rad(angles)[:, None]
    dx = np.ceil(taps * np.cos(a) - 0.5).astype(np.int64)  # [N, taps]
    dy = np.ceil(taps * np.sin(a) - 0.5).astype(np.int64)
    cols = np.clip(np.arange(w) + dx[..., None], 0, w - 1)  # [N, taps, W], edge pixels replicated
    rows = np.clip(np.arange(h) + dy[..., None], 0, h - 1)
    base = np.arange(n)[:, None, None] * (h * w)
    flat = x.reshape(n * h * w, c)
    out = np.zeros((n, h, w, c), np.float32)
    for i, wt in enumerate(weights):
        index = base + rows[:, i, :, None] * w + cols[:, i, None, :]
        out += wt * flat[index]
    return out


def _plasma_fractal(rng, n, mapsize=SIZE, wibbledecay=3.0):
    """Diamond-square height maps [N, mapsize, mapsize] in [0, 1] (the reference's plasma_fractal)."""
    m = np.zeros((n, mapsize, mapsize))
    step, wibble = mapsize, 100.0

    def wibbled_mean(a):
        return a / 4 + wibble * rng.uniform(-wibble, wibble, a.shape)

    while step >= 2:
        half = step // 2
        corners = m[:, ::step, ::step]
        squares = corners + np.roll(corners, -1, axis=1)
        squares = squares + np.roll(squares, -1, axis=2)
        m[:, half::step, half::step] = wibbled_mean(squares)
        dr, ul = m[:, half::step, half::step], m[:, ::step, ::step]
        m[:, ::step, half::step] = wibbled_mean(
            dr + np.roll(dr, 1, axis=1) + ul + np.roll(ul, -1, axis=2)
        )
        m[:, half::step, ::step] = wibbled_mean(
            dr + np.roll(dr, 1, axis=2) + ul + np.roll(ul, -1, axis=1)
        )
        step //= 2
        wibble /= wibbledecay
    m -= m.min(axis=(1, 2), keepdims=True)
    return m / np.maximum(m.max(axis=(1, 2), keepdims=True), 1e-12)


def _frost_texture(seed):
    """A procedural frost image [H, W, 3] uint8: a patchy icy film plus needle crystals with side branches."""
    rng = np.random.default_rng(seed)
    h, w = FROST_SHAPE
    film = np.zeros((h, w), np.float32)
    for amp, sigma in ((0.6, 10), (0.3, 3), (0.1, 0.7)):
        noise = cv2.GaussianBlur(rng.standard_normal((h, w), dtype=np.float32), (0, 0), sigma)
        film += amp * (noise - noise.min()) / (noise.max() - noise.min())
    crystals = np.zeros((h, w), np.float32)
    for _ in range(h * w // 25):
        x0, y0 = rng.uniform(0, w), rng.uniform(0, h)
        angle, length, value = (
            rng.uniform(0, 2 * np.pi),
            1 + rng.exponential(4),
            rng.uniform(0.3, 1.0),
        )
        segments = [(x0, y0, angle, length, value)]
        for t in rng.uniform(0.2, 1.0, size=int(length // 2)):  # side branches at +-60 degrees
            side = angle + rng.choice((-1, 1)) * np.pi / 3
            segments.append(
                (
                    x0 + t * length * np.cos(angle),
                    y0 + t * length * np.sin(angle),
                    side,
                    0.4 * length,
                    0.7 * value,
                )
            )
        for sx, sy, a, ln, v in segments:
            p0 = (int(sx * 16), int(sy * 16))
            p1 = (int((sx + ln * np.cos(a)) * 16), int((sy + ln * np.sin(a)) * 16))
            cv2.line(crystals, p0, p1, float(v), 1, cv2.LINE_AA, shift=4)
    crystals = cv2.GaussianBlur(crystals, (0, 0), 0.6)
    ice = film**1.5 * (0.5 + crystals)
    ice = np.clip(ice / np.percentile(ice, 99.5), 0, 1)
    tint = np.float32([0.85, 0.92, 1.0])  # bluish white, RGB
    return np.uint8(255 * ice[..., None] * tint)


_FROST_TEXTURES = None


def _frost_textures():
    global _FROST_TEXTURES
    if _FROST_TEXTURES is None:
        _FROST_TEXTURES = np.stack([_frost_texture(s) for s in FROST_SEEDS])
    return _FROST_TEXTURES


def _box_resize_matrix(n_in, n_out):
    """PIL's Image.BOX resampling weights [n_out, n_in] (ImagingResample's precompute_coeffs)."""
    scale = n_in / n_out
    filterscale = max(scale, 1.0)
    support = 0.5 * filterscale
    m = np.zeros((n_out, n_in))
    for o in range(n_out):
        center = (o + 0.5) * scale
        lo, hi = max(int(center - support + 0.5), 0), min(int(center + support + 0.5), n_in)
        i = np.arange(lo, hi)
        t = (i - center + 0.5) / filterscale
        m[o, lo:hi] = (t > -0.5) & (t <= 0.5)
        m[o] /= m[o].sum()
    return m.astype(np.float32)


def _box_resize(x, size):
    """PIL BOX resize of uint8 x [N, H, W, C] to size x size: width pass then height pass, 8-bit rounding."""
    mw = _box_resize_matrix(x.shape[2], size)
    mh = _box_resize_matrix(x.shape[1], size)
    x = np.floor(np.tensordot(x.astype(np.float32), mw, axes=([2], [1])) + 0.5)  # [N, H, C, W']
    x = np.floor(np.tensordot(x, mh, axes=([1], [1])) + 0.5)  # [N, C, W', H']
    return x.transpose(0, 3, 2, 1).astype(np.uint8)


def _hsv_value_and_saturation(x):
    v = x.max(axis=-1, keepdims=True)
    s = np.where(v > 0, (v - x.min(axis=-1, keepdims=True)) / np.maximum(v, 1e-12), 0)
    return v, s


# ---------------------------------------------------------------------------------------------
# corruptions: uint8 [N, 32, 32, 3] RGB, severity 1..5, rng -> uint8 [N, 32, 32, 3]


def gaussian_noise(images, severity, rng):
    x = _to_float(images)
    return _to_uint8(
        x + GAUSSIAN_NOISE[severity - 1] * rng.standard_normal(x.shape, dtype=np.float32)
    )


def shot_noise(images, severity, rng):
    c = SHOT_NOISE[severity - 1]
    return _to_uint8(rng.poisson(_to_float(images) * c).astype(np.float32) / c)


def impulse_noise(images, severity, rng):
    amount = IMPULSE_NOISE[severity - 1]
    u = rng.random(images.shape, dtype=np.float32)
    out = images.copy()
    out[u < amount / 2] = 0
    out[(u >= amount / 2) & (u < amount)] = 255
    return out


def speckle_noise(images, severity, rng):
    x = _to_float(images)
    return _to_uint8(
        x + x * SPECKLE_NOISE[severity - 1] * rng.standard_normal(x.shape, dtype=np.float32)
    )


def gaussian_blur(images, severity, rng):
    return _to_uint8(_gaussian(_to_float(images), GAUSSIAN_BLUR[severity - 1]))


def glass_blur(images, severity, rng):
    sigma, delta, iterations = GLASS_BLUR[severity - 1]
    x = _to_uint8(_gaussian(_to_float(images), sigma))
    n = len(x)
    inner = np.arange(delta + 1, SIZE - delta + 1)  # the rows / columns the reference visits
    for _ in range(iterations):
        d = rng.integers(
            -delta, delta, size=(2, n, len(inner), len(inner))
        )  # dx, dy in [-delta, delta)
        rows = inner[:, None] + d[1]
        cols = inner[None, :] + d[0]
        x[:, inner[0] : inner[-1] + 1, inner[0] : inner[-1] + 1] = x[
            np.arange(n)[:, None, None], rows, cols
        ]
    return _to_uint8(_gaussian(_to_float(x), sigma))


def defocus_blur(images, severity, rng):
    radius, alias_blur = DEFOCUS_BLUR[severity - 1]
    t = np.arange(-8, 9)  # the reference's disk(): 17x17 aliased disk, 3x3 Gaussian antialias
    disk = ((t[:, None] ** 2 + t[None, :] ** 2) <= radius**2).astype(np.float32)
    kernel = cv2.GaussianBlur(disk / disk.sum(), (3, 3), alias_blur)
    r = int(np.abs(t[np.any(kernel != 0, axis=0)]).max())  # drop the all-zero rim (same result)
    kernel = np.ascontiguousarray(kernel[8 - r : 9 + r, 8 - r : 9 + r])
    return _to_uint8(_per_channel(lambda a: cv2.filter2D(a, -1, kernel), _to_float(images)))


def motion_blur(images, severity, rng):
    radius, sigma = MOTION_BLUR[severity - 1]
    out = _motion_blur(images, radius, sigma, rng.uniform(-45, 45, size=len(images)))
    return np.clip(np.floor(out + 0.5), 0, 255).astype(np.uint8)


def zoom_blur(images, severity, rng):
    x = _to_float(images)
    factors = ZOOM_BLUR[severity - 1]
    return _to_uint8((x + _zoom_sum(x, factors)) / (len(factors) + 1))


def snow(images, severity, rng):
    mean, std, zoom, threshold, radius, sigma, weight = SNOW[severity - 1]
    x = _to_float(images)
    n = len(x)
    layer = rng.normal(mean, std, size=(n, SIZE, SIZE, 1)).astype(np.float32)
    layer = _zoom_sum(layer, [zoom])
    layer[layer < threshold] = 0
    layer = np.uint8(np.clip(layer, 0, 1) * 255)
    layer = _motion_blur(layer, radius, sigma, rng.uniform(-135, -45, size=n))
    layer = np.floor(layer + 0.5) / 255
    grey = x @ np.float32([0.299, 0.587, 0.114])
    x = weight * x + (1 - weight) * np.maximum(x, grey[..., None] * 1.5 + 0.5)
    return _to_uint8(x + layer + layer[:, ::-1, ::-1])


def frost(images, severity, rng):
    a, b = FROST[severity - 1]
    textures = _frost_textures()
    n = len(images)
    idx = rng.integers(len(textures), size=n)
    top = rng.integers(0, textures.shape[1] - SIZE, size=n)
    left = rng.integers(0, textures.shape[2] - SIZE, size=n)
    ar = np.arange(SIZE)
    crops = textures[
        idx[:, None, None],
        top[:, None, None] + ar[None, :, None],
        left[:, None, None] + ar[None, None, :],
    ]
    return _to_uint8((a * images.astype(np.float32) + b * crops.astype(np.float32)) / 255)


def fog(images, severity, rng):
    strength, decay = FOG[severity - 1]
    x = _to_float(images)
    max_val = x.max(axis=(1, 2, 3), keepdims=True)
    x += strength * _plasma_fractal(rng, len(x), wibbledecay=decay)[..., None].astype(np.float32)
    return _to_uint8(x * max_val / (max_val + strength))


def brightness(images, severity, rng):
    # V = max(R, G, B) -> min(V + c, 1) with H, S fixed scales RGB by V' / V (black becomes grey V')
    x = _to_float(images)
    v = x.max(axis=-1, keepdims=True)
    v_new = np.minimum(v + BRIGHTNESS[severity - 1], 1)
    return _to_uint8(np.where(v > 0, x * v_new / np.maximum(v, 1e-12), v_new))


def contrast(images, severity, rng):
    x = _to_float(images)
    means = x.mean(axis=(1, 2), keepdims=True)
    return _to_uint8((x - means) * CONTRAST[severity - 1] + means)


def saturate(images, severity, rng):
    # with V fixed, each channel is V - V * S * g(H); so S -> S' moves it to V - (V - x) * S' / S.
    # skimage gives grey pixels (S = 0) hue 0, so there R = V and G = B = V * (1 - S').
    a, b = SATURATE[severity - 1]
    x = _to_float(images)
    v, s = _hsv_value_and_saturation(x)
    s_new = np.clip(s * a + b, 0, 1)
    coloured = v - (v - x) * s_new / np.maximum(s, 1e-12)
    grey = v * (1 - s_new * np.float32([0, 1, 1]))
    return _to_uint8(np.where(s > 0, coloured, grey))


def spatter(images, severity, rng):
    mean, std, sigma, threshold, strength, mud = SPATTER[severity - 1]
    x = _to_float(images)
    n = len(x)
    liquid = rng.normal(mean, std, size=(n, SIZE, SIZE, 1)).astype(np.float32)
    liquid = _gaussian(liquid, sigma)[..., 0]
    liquid[liquid < threshold] = 0
    if mud:
        m = _gaussian((liquid > threshold).astype(np.float32)[..., None], strength)
        m[m < 0.8] = 0
        return _to_uint8(x * (1 - m) + MUD_RGB * m)
    ker = np.float32([[-2, -1, 0], [-1, 1, 1], [0, 1, 2]])
    liquid = np.uint8(np.clip(liquid, 0, 1) * 255)
    m = np.empty((n, SIZE, SIZE), np.float32)
    for i in range(n):
        dist = cv2.distanceTransform(255 - cv2.Canny(liquid[i], 50, 150), cv2.DIST_L2, 5)
        _, dist = cv2.threshold(dist, 20, 20, cv2.THRESH_TRUNC)
        dist = cv2.equalizeHist(cv2.blur(dist, (3, 3)).astype(np.uint8))
        dist = cv2.blur(cv2.filter2D(dist, cv2.CV_8U, ker), (3, 3)).astype(np.float32)
        m[i] = liquid[i] * dist
    m /= np.maximum(m.max(axis=(1, 2), keepdims=True), 1e-12)
    return _to_uint8(x + strength * m[..., None] * WATER_RGB)


def elastic_transform(images, severity, rng):
    alpha, sigma, jitter = ELASTIC_TRANSFORM[severity - 1]
    x = _to_float(images)
    n = len(x)
    c, s = SIZE // 2, SIZE // 3
    src = np.float32([[c + s, c + s], [c + s, c - s], [c - s, c - s]])
    dst = src + rng.uniform(-jitter, jitter, size=(n, 3, 2)).astype(np.float32)
    noise = rng.uniform(-1, 1, size=(n, SIZE, SIZE, 2)).astype(np.float32)
    shift = alpha * _gaussian(
        noise, sigma, border=cv2.BORDER_REFLECT, truncate=3.0
    )  # [..., 0] = dx, [..., 1] = dy
    grid = np.arange(SIZE, dtype=np.float32)
    out = np.empty_like(x)
    for i in range(n):
        warped = cv2.warpAffine(
            x[i],
            cv2.getAffineTransform(src, dst[i]),
            (SIZE, SIZE),
            borderMode=cv2.BORDER_REFLECT_101,
        )
        out[i] = cv2.remap(
            warped,
            grid[None, :] + shift[i, ..., 0],
            grid[:, None] + shift[i, ..., 1],
            cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_REFLECT,
        )
    return _to_uint8(out)


def jpeg_compression(images, severity, rng):
    params = [cv2.IMWRITE_JPEG_QUALITY, JPEG_COMPRESSION[severity - 1]]
    out = np.empty_like(images)
    for i, img in enumerate(images):
        _, buf = cv2.imencode(".jpg", np.ascontiguousarray(img[..., ::-1]), params)  # cv2 wants BGR
        out[i] = cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1]
    return out


def pixelate(images, severity, rng):
    return _box_resize(_box_resize(images, int(SIZE * PIXELATE[severity - 1])), SIZE)


def original(images, severity, rng):
    return images.copy()


TYPE0 = (
    "snow",
    "frost",
    "fog",
    "brightness",
    "contrast",
    "spatter",
    "elastic_transform",
    "jpeg_compression",
    "pixelate",
    "saturate",
)
TYPE1 = (
    "gaussian_noise",
    "shot_noise",
    "impulse_noise",
    "speckle_noise",
    "gaussian_blur",
    "defocus_blur",
    "glass_blur",
    "motion_blur",
    "zoom_blur",
    "original",
)
CORRUPTION_TYPES = {0: TYPE0, 1: TYPE1}
CORRUPTIONS = {name: globals()[name] for name in TYPE0 + TYPE1}


def corrupt(images: np.ndarray, name: str, severity: int, rng: np.random.Generator) -> np.ndarray:
    """images uint8 [N, 32, 32, 3] RGB -> uint8 [N, 32, 32, 3]; deterministic given the rng's state."""
    if name not in CORRUPTIONS:
        raise UserError(f"unknown corruption {name!r}; choose one of: {', '.join(CORRUPTIONS)}")
    if (
        not isinstance(severity, (int, np.integer))
        or isinstance(severity, bool)
        or not 1 <= severity <= 5
    ):
        raise UserError(f"corruption severity must be an integer 1..5, got {severity!r}")
    if (
        not isinstance(images, np.ndarray)
        or images.dtype != np.uint8
        or images.ndim != 4
        or images.shape[1:] != (SIZE, SIZE, 3)
    ):
        got = (
            f"{images.dtype} {images.shape}"
            if isinstance(images, np.ndarray)
            else type(images).__name__
        )
        raise ValueError(f"corrupt expects uint8 images [N, {SIZE}, {SIZE}, 3], got {got}")
    if len(images) == 0:
        return images.copy()
    return CORRUPTIONS[name](np.ascontiguousarray(images), int(severity), rng)
