"""Stain normalization inside the model: Reinhard and Macenko, fitted to a reference.

Another lab's stain (more or bluer haematoxylin, paler eosin) moves images away from the
training data's colours. A normalization layer maps every image, per image, onto the colours of
a reference (the training data's own, or an image the user gives) before the network sees it.
It is part of the saved model, so `predict`, `slide`, `serve` and the ONNX / SavedModel exports
run the same maths; written with `keras.ops` only (no eigen-solver or quantile op that an
exporter lacks).

- Reinhard et al. 2001 ("Color transfer between images"): per-channel mean and standard
  deviation in the decorrelated l-alpha-beta space are matched to the reference's. Here the
  statistics are taken over tissue pixels only (optical density above about 0.1), and glass is
  left as it is, so a tile's share of glass does not shift its colours.
- Macenko et al. 2009 ("A method for normalizing histology slides for quantitative analysis"):
  optical density OD = -ln((I + 1) / 256); pixels with OD >= 0.15 in every channel; the plane
  of the two largest eigenvectors of their OD covariance; the 1st and 99th percentiles of the
  angle in that plane are the two stain vectors (haematoxylin: the one with more red OD);
  concentrations by least squares, scaled so their 99th percentiles (over tissue pixels) match
  the reference's, and recomposed with the reference's stain vectors.

Both leave an image with under 1 % tissue unchanged and fully normalize one with over 5 %
(a linear blend between), so white or empty tiles stay as they are and never give NaN.
"""
from __future__ import annotations

import math

import keras
import numpy as np
from keras import layers, ops

from ..errors import HistoclassError

METHODS = ("none", "reinhard", "macenko")
BACKGROUND = 256.0  # OD = -ln((I + 1) / 256): white (255) is exactly 0
MACENKO_BETA = 0.15  # Macenko's OD threshold for a tissue pixel
MACENKO_PERCENTILE = 1.0  # alpha: angles at the 1st and 99th percentiles
MAX_CONCENTRATION_PERCENTILE = 99.0
TISSUE_SHARE = (0.01, 0.05)  # below the first: left unchanged; above the second: normalized
REINHARD_TISSUE_OD = (0.1, 0.2)  # mean OD: weight 0 (glass) to 1 (tissue), linear between
REINHARD_SCALE_LIMITS = (0.2, 5.0)  # a flat tile's tiny deviation is not blown up
EPS = 1e-6

# Reinhard et al. 2001: RGB -> LMS, log10, then the decorrelating l-alpha-beta rotation.
LMS_FROM_RGB = np.array([[0.3811, 0.5783, 0.0402], [0.1967, 0.7244, 0.0782], [0.0241, 0.1288, 0.8444]])
# The paper prints its inverse to 4 digits (4.4679, -3.5873, ...); the exact one round-trips.
RGB_FROM_LMS = np.linalg.inv(LMS_FROM_RGB)
LAB_FROM_LOG_LMS = np.diag([1 / math.sqrt(3), 1 / math.sqrt(6), 1 / math.sqrt(2)]) @ np.array(
    [[1, 1, 1], [1, 1, -2], [1, -1, 0]], dtype=np.float64)
LOG_LMS_FROM_LAB = np.linalg.inv(LAB_FROM_LOG_LMS)


def check_method(method: str) -> str:
    if method not in METHODS:
        raise HistoclassError(f"stain normalization {method!r} is not one of: {', '.join(METHODS)}")
    return method


# --------------------------------------------------------------------------------------------
# Fitting a reference, in numpy (published formulations; the layer below reproduces them)

def optical_density(rgb: np.ndarray) -> np.ndarray:
    """OD per channel of uint8 (or 0-255 float) pixels, float64, white = 0."""
    return -np.log((np.asarray(rgb, dtype=np.float64) + 1.0) / BACKGROUND)


def rgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """Reinhard's l-alpha-beta of 0-255 pixels (..., 3)."""
    unit = np.maximum(np.asarray(rgb, dtype=np.float64) / 255.0, 1.0 / 255.0)
    log_lms = np.log10(np.maximum(unit @ LMS_FROM_RGB.T, EPS))
    return log_lms @ LAB_FROM_LOG_LMS.T


def reinhard_tissue_weight(rgb: np.ndarray) -> np.ndarray:
    low, high = REINHARD_TISSUE_OD
    return np.clip((optical_density(rgb).mean(axis=-1) - low) / (high - low), 0.0, 1.0)


def fit_reinhard(images: np.ndarray) -> dict:
    """Weighted mean and standard deviation of the tissue pixels in l-alpha-beta."""
    pixels = np.asarray(images).reshape(-1, 3)
    weight = reinhard_tissue_weight(pixels)
    if weight.sum() < 10:
        raise HistoclassError("the stain reference holds almost no tissue (it is glass or white); "
                              "give an image of stained tissue")
    lab = rgb_to_lab(pixels)
    mean = (weight[:, None] * lab).sum(0) / weight.sum()
    std = np.sqrt((weight[:, None] * (lab - mean) ** 2).sum(0) / weight.sum())
    return {"mean": mean.tolist(), "std": std.tolist()}


def macenko_stains(density: np.ndarray) -> np.ndarray:
    """Macenko's two stain vectors (rows: haematoxylin, eosin) of tissue OD pixels (n, 3)."""
    _, vectors = np.linalg.eigh(np.cov(density, rowvar=False))
    plane = vectors[:, [2, 1]]  # the two largest eigenvalues, largest first
    plane[:, 0] *= np.sign(plane[:, 0].sum()) or 1.0  # OD is positive: point the first axis there
    projected = density @ plane
    angle = np.arctan2(projected[:, 1], projected[:, 0])
    low, high = (np.percentile(angle, q) for q in (MACENKO_PERCENTILE, 100 - MACENKO_PERCENTILE))
    first = plane @ np.array([np.cos(low), np.sin(low)])
    second = plane @ np.array([np.cos(high), np.sin(high)])
    return np.stack([first, second] if first[0] > second[0] else [second, first])


def macenko_concentrations(density: np.ndarray, stains: np.ndarray) -> np.ndarray:
    """Least-squares H and E concentrations (n, 2) of OD pixels (n, 3)."""
    return np.linalg.lstsq(stains.T, density.T, rcond=None)[0].T


def fit_macenko(images: np.ndarray) -> dict:
    """The reference's stain vectors and 99th-percentile concentrations, its pixels pooled."""
    density = optical_density(np.asarray(images).reshape(-1, 3))
    tissue = density[(density >= MACENKO_BETA).all(axis=1)]
    if len(tissue) < 10:
        raise HistoclassError("the stain reference holds almost no tissue (it is glass or white); "
                              "give an image of stained tissue")
    stains = macenko_stains(tissue)
    maximum = np.percentile(macenko_concentrations(tissue, stains), MAX_CONCENTRATION_PERCENTILE, axis=0)
    return {"stain_vectors": stains.tolist(), "max_concentrations": maximum.tolist()}


def fit_stain_target(method: str, images: np.ndarray) -> dict:
    """The reference statistics of `method` for uint8 images (N, H, W, 3) or one (H, W, 3)."""
    check_method(method)
    if method == "reinhard":
        return fit_reinhard(images)
    if method == "macenko":
        return fit_macenko(images)
    raise HistoclassError("stain normalization 'none' has no reference to fit")


# --------------------------------------------------------------------------------------------
# The layer

def _tissue_blend(share):
    """Per image: 0 (left unchanged) below 1 % tissue, 1 (normalized) above 5 %."""
    low, high = TISSUE_SHARE
    return ops.clip((share - low) / (high - low), 0.0, 1.0)


def masked_percentile(values, mask, q: float | tuple[float, ...]):
    """numpy's linear-interpolation percentile(s) `q` of `values` (B, P) where `mask` (B, P) is
    1, per row, with one sort and gathers (a row with no true entry gives its smallest value).
    One q: (B,); a tuple of them: a list of (B,), one sort for all."""
    count = ops.sum(mask, axis=1)
    largest = ops.max(values, axis=1, keepdims=True)
    ordered = ops.sort(ops.where(mask > 0, values, largest + 1.0), axis=1)
    last = ops.maximum(count - 1.0, 0.0)
    found = []
    for each in (q if isinstance(q, tuple) else (q,)):
        position = last * (each / 100.0)
        below = ops.floor(position)
        fraction = (position - below)[:, None]
        below = ops.cast(below, "int32")[:, None]
        above = ops.minimum(below + 1, ops.cast(last, "int32")[:, None])
        low_value = ops.take_along_axis(ordered, below, axis=1)
        high_value = ops.take_along_axis(ordered, above, axis=1)
        found.append((low_value + fraction * (high_value - low_value))[:, 0])
    return found if isinstance(q, tuple) else found[0]


def _cross(a, b):
    """Cross products of (..., 3) vectors."""
    return ops.stack([a[..., 1] * b[..., 2] - a[..., 2] * b[..., 1],
                      a[..., 2] * b[..., 0] - a[..., 0] * b[..., 2],
                      a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0]], axis=-1)


def _in_float32(function, *tensors):
    """`function` of float64 tensors computed in float32: ONNX Runtime has trigonometric
    functions for float32 only."""
    result = function(*(ops.cast(t, "float32") for t in tensors))
    return ops.cast(result, tensors[0].dtype)


def _normalized(v):
    return v / ops.maximum(ops.sqrt(ops.sum(v * v, axis=-1, keepdims=True)), 1e-12)


def _eigenvector(matrix, eigenvalue):
    """Unit eigenvector of symmetric (B, 3, 3) `matrix` for `eigenvalue` (B,): the largest cross
    product of two rows of (matrix - eigenvalue I), which is orthogonal to both."""
    shifted = matrix - eigenvalue[:, None, None] * ops.eye(3, dtype=matrix.dtype)[None]
    rows = [shifted[:, i, :] for i in range(3)]
    crosses = [_cross(rows[0], rows[1]), _cross(rows[0], rows[2]), _cross(rows[1], rows[2])]
    lengths = [ops.sum(c * c, axis=-1, keepdims=True) for c in crosses]
    # Comparisons, not argmax: Keras' TensorFlow argmax uses bit casts that ONNX lacks.
    longest = ops.where((lengths[0] >= lengths[1]) & (lengths[0] >= lengths[2]), crosses[0],
                        ops.where(lengths[1] >= lengths[2], crosses[1], crosses[2]))
    return _normalized(longest)


def top_two_eigenvectors(matrix):
    """Eigenvectors of the largest two eigenvalues of symmetric (B, 3, 3) matrices, by the
    closed form (trigonometric solution of the characteristic cubic; Smith 1961)."""
    m = lambda i, j: matrix[:, i, j]  # noqa: E731
    off = m(0, 1) ** 2 + m(0, 2) ** 2 + m(1, 2) ** 2
    mean = (m(0, 0) + m(1, 1) + m(2, 2)) / 3.0
    spread = ops.sqrt(ops.maximum(((m(0, 0) - mean) ** 2 + (m(1, 1) - mean) ** 2 + (m(2, 2) - mean) ** 2
                                   + 2.0 * off) / 6.0, 1e-30))
    b = (matrix - mean[:, None, None] * ops.eye(3, dtype=matrix.dtype)[None]) / spread[:, None, None]
    det = (b[:, 0, 0] * (b[:, 1, 1] * b[:, 2, 2] - b[:, 1, 2] * b[:, 2, 1])
           - b[:, 0, 1] * (b[:, 1, 0] * b[:, 2, 2] - b[:, 1, 2] * b[:, 2, 0])
           + b[:, 0, 2] * (b[:, 1, 0] * b[:, 2, 1] - b[:, 1, 1] * b[:, 2, 0]))
    phi = _in_float32(ops.arccos, ops.clip(det / 2.0, -1.0, 1.0)) / 3.0
    largest = mean + 2.0 * spread * _in_float32(ops.cos, phi)
    smallest = mean + 2.0 * spread * _in_float32(ops.cos, phi + 2.0 * math.pi / 3.0)
    first = _eigenvector(matrix, largest)
    first = ops.where(ops.sum(first, axis=-1, keepdims=True) < 0, -first, first)
    third = _eigenvector(matrix, smallest)
    # The second is orthogonal to both; its sign does not matter to Macenko's pair of angles.
    second = _normalized(_cross(third, first))
    return first, second


@keras.saving.register_keras_serializable(package="histoclass")
class StainNormalization(layers.Layer):
    """Normalizes [0, 1] RGB images (B, H, W, 3) to a fitted reference, per image, at training
    and at inference alike. `target` is what `fit_stain_target(method, ...)` returns."""

    def __init__(self, method: str, target: dict, **kwargs):
        super().__init__(**kwargs)
        self.method = check_method(method)
        if method == "none":
            raise HistoclassError("StainNormalization needs 'reinhard' or 'macenko'")
        self.target = {key: [list(map(float, v)) if isinstance(v, (list, tuple)) else float(v) for v in values]
                       for key, values in target.items()}

    def call(self, images):
        shape = ops.shape(images)
        pixels = ops.reshape(ops.cast(images, "float32"), (shape[0], -1, 3))
        normalize = self._reinhard if self.method == "reinhard" else self._macenko
        return ops.reshape(normalize(pixels), shape)

    def _reinhard(self, pixels):
        rgb = pixels * 255.0
        low, high = REINHARD_TISSUE_OD
        density = -ops.log((rgb + 1.0) / BACKGROUND)
        weight = ops.clip((ops.mean(density, axis=-1) - low) / (high - low), 0.0, 1.0)  # (B, P)
        lms = ops.matmul(ops.maximum(pixels, 1.0 / 255.0), ops.convert_to_tensor(LMS_FROM_RGB.T, "float32"))
        lab = ops.matmul(ops.log(ops.maximum(lms, EPS)) / math.log(10.0),
                         ops.convert_to_tensor(LAB_FROM_LOG_LMS.T, "float32"))
        total = ops.sum(weight, axis=1)
        mean = ops.sum(weight[..., None] * lab, axis=1) / ops.maximum(total, EPS)[:, None]
        variance = ops.sum(weight[..., None] * (lab - mean[:, None, :]) ** 2, axis=1) / ops.maximum(total, EPS)[:, None]
        std = ops.sqrt(ops.maximum(variance, 0.0))
        target_mean = ops.convert_to_tensor(np.array(self.target["mean"]), "float32")
        target_std = ops.convert_to_tensor(np.array(self.target["std"]), "float32")
        scale = ops.clip(target_std / ops.maximum(std, EPS), *REINHARD_SCALE_LIMITS)
        lab = (lab - mean[:, None, :]) * scale[:, None, :] + target_mean
        log_lms = ops.matmul(lab, ops.convert_to_tensor(LOG_LMS_FROM_LAB.T, "float32"))
        lms = ops.exp(ops.minimum(log_lms, 1.0) * math.log(10.0))
        normalized = ops.clip(ops.matmul(lms, ops.convert_to_tensor(RGB_FROM_LMS.T, "float32")), 0.0, 1.0)
        blend = _tissue_blend(total / ops.cast(ops.shape(pixels)[1], "float32"))[:, None, None] * weight[..., None]
        return pixels + blend * (normalized - pixels)

    def _macenko(self, pixels):
        density = ops.maximum(-ops.log((pixels * 255.0 + 1.0) / BACKGROUND), 0.0)  # (B, P, 3)
        tissue = ops.cast(ops.min(density, axis=-1) >= MACENKO_BETA, "float32")  # (B, P)
        count = ops.sum(tissue, axis=1)
        # The covariance and eigenvectors in float64: a 3x3 per image, where float32 loses digits.
        density64, tissue64 = ops.cast(density, "float64"), ops.cast(tissue, "float64")
        count64 = ops.cast(count, "float64")
        mean = ops.sum(density64 * tissue64[..., None], axis=1) / ops.maximum(count64, 1.0)[:, None]
        centred = (density64 - mean[:, None, :]) * tissue64[..., None]
        covariance = ops.einsum("bpi,bpj->bij", centred, centred) / ops.maximum(count64 - 1.0, 1.0)[:, None, None]
        first, second = top_two_eigenvectors(covariance)
        along = ops.sum(density64 * first[:, None, :], axis=-1)
        across = ops.sum(density64 * second[:, None, :], axis=-1)
        angle = _in_float32(ops.arctan2, ops.where(tissue64 > 0, across, 0.0), ops.where(tissue64 > 0, along, 1.0))
        low, high = (p[:, None] for p in masked_percentile(
            angle, tissue64, (MACENKO_PERCENTILE, 100.0 - MACENKO_PERCENTILE)))
        vector_low = _in_float32(ops.cos, low) * first + _in_float32(ops.sin, low) * second
        vector_high = _in_float32(ops.cos, high) * first + _in_float32(ops.sin, high) * second
        low_is_haematoxylin = vector_low[:, :1] > vector_high[:, :1]
        haematoxylin = ops.where(low_is_haematoxylin, vector_low, vector_high)
        eosin = ops.where(low_is_haematoxylin, vector_high, vector_low)
        # Least squares: C = OD S^T (S S^T)^-1 with S the (2, 3) stain vectors.
        hh, he, ee = (ops.sum(haematoxylin * haematoxylin, -1), ops.sum(haematoxylin * eosin, -1),
                      ops.sum(eosin * eosin, -1))
        det = hh * ee - he * he
        safe_det = ops.where(det > 1e-9, det, 1.0)
        on_h = ops.sum(density64 * haematoxylin[:, None, :], axis=-1)
        on_e = ops.sum(density64 * eosin[:, None, :], axis=-1)
        conc_h = (ee[:, None] * on_h - he[:, None] * on_e) / safe_det[:, None]
        conc_e = (hh[:, None] * on_e - he[:, None] * on_h) / safe_det[:, None]
        max_h = masked_percentile(conc_h, tissue64, MAX_CONCENTRATION_PERCENTILE)
        max_e = masked_percentile(conc_e, tissue64, MAX_CONCENTRATION_PERCENTILE)
        target_max = np.array(self.target["max_concentrations"], dtype=np.float64)
        target_stains = np.array(self.target["stain_vectors"], dtype=np.float64)
        conc_h = conc_h * (target_max[0] / ops.maximum(max_h, 1e-3))[:, None]
        conc_e = conc_e * (target_max[1] / ops.maximum(max_e, 1e-3))[:, None]
        new_density = (conc_h[..., None] * ops.convert_to_tensor(target_stains[0])
                       + conc_e[..., None] * ops.convert_to_tensor(target_stains[1]))
        normalized = ops.cast((BACKGROUND * ops.exp(-ops.minimum(new_density, 30.0)) - 1.0) / 255.0, "float32")
        normalized = ops.clip(normalized, 0.0, 1.0)
        usable = ops.cast(det > 1e-9, "float32")
        blend = (_tissue_blend(count / ops.cast(ops.shape(pixels)[1], "float32")) * usable)[:, None, None]
        return pixels + blend * (normalized - pixels)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "method": self.method, "target": self.target}
