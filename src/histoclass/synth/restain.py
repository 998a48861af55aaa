"""Re-staining H&E images as another lab would: the stand-in for a slide stained elsewhere.

Colour deconvolution (Ruifrok & Johnston 2001, the haematoxylin-eosin-DAB matrix that
scikit-image's `rgb2hed` uses) splits each pixel's optical density into stain concentrations;
another lab's protocol is then more haematoxylin, of a bluer shade (its stain vector absorbs
more red and less blue), and paler eosin. The DAB channel (the residual of H&E) is kept as is,
so the decomposition loses nothing. Beer-Lambert is linear in optical density, so glass (zero
density) stays exactly white and near-white stays near-white.

    od = -ln((rgb + 1) / 256)      (per channel: `stain.maths`, the project's one convention)
    c  = od @ HED_FROM_RGB         (H, E, D concentrations)
    od' = (c * gains) @ rgb_from_hed'   (gains: H up, E down; H's vector turned bluer)
    rgb' = 256 * exp(-od') - 1
"""
from __future__ import annotations

import numpy as np

from histoclass.errors import HistoclassError
from histoclass.stain.maths import HED_FROM_RGB, RGB_FROM_HED, density_table, intensity

# Per seed, the lab's protocol is drawn from these ranges (at strength 1): haematoxylin gain,
# eosin gain, and how far haematoxylin's stain vector moves towards absorbing red over blue.
HAEMATOXYLIN_GAIN = (1.25, 1.45)
EOSIN_GAIN = (0.60, 0.75)
BLUER_SHIFT = (0.15, 0.25)
ROWS_PER_CHUNK = 1024  # a whole slide's pixels in float32 would take several GB at once


def restain_matrix(seed: int = 0, strength: float = 1.0) -> np.ndarray:
    """The 3x3 matrix M with od' = od @ M for the lab of `seed`; identity at strength 0."""
    rng = np.random.default_rng(seed)
    h_gain, e_gain, shift = (rng.uniform(*HAEMATOXYLIN_GAIN), rng.uniform(*EOSIN_GAIN),
                             rng.uniform(*BLUER_SHIFT))
    gains = np.array([1.0 + strength * (h_gain - 1.0), 1.0 + strength * (e_gain - 1.0), 1.0])
    haematoxylin = RGB_FROM_HED[0].astype(np.float64) + strength * shift * np.array([1.0, 0.0, -1.0])
    haematoxylin = np.clip(haematoxylin, 0.01, None)
    rgb_from_hed = RGB_FROM_HED.astype(np.float64).copy()
    rgb_from_hed[0] = haematoxylin / np.linalg.norm(haematoxylin)
    return HED_FROM_RGB.astype(np.float64) @ np.diag(gains) @ rgb_from_hed


def restain_like_another_lab(rgb: np.ndarray, seed: int = 0, strength: float = 1.0) -> np.ndarray:
    """`rgb` (H, W, 3) uint8 as another lab would stain it: more and bluer haematoxylin, paler
    eosin; glass stays white. Deterministic: one `seed` is one lab. `strength` 0 leaves the image
    unchanged, 1 is a marked but realistic difference, between is a milder one."""
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise HistoclassError(f"restain_like_another_lab needs a uint8 (H, W, 3) RGB image "
                              f"(got {rgb.dtype} {rgb.shape}); convert it first")
    if not np.isfinite(strength) or strength < 0:
        raise HistoclassError(f"strength must be a number >= 0 (got {strength})")
    if strength == 0:
        return rgb.copy()
    matrix = restain_matrix(seed, strength).astype(np.float32)
    # Optical density of every uint8 value, looked up instead of taking 3 logs per pixel.
    density_of = density_table().astype(np.float32)
    out = np.empty_like(rgb)
    for start in range(0, rgb.shape[0], ROWS_PER_CHUNK):
        density = density_of[rgb[start:start + ROWS_PER_CHUNK]] @ matrix
        restained = intensity(np.maximum(density, np.float32(0.0)))
        out[start:start + ROWS_PER_CHUNK] = np.clip(np.rint(restained), 0, 255).astype(np.uint8)
    return out
