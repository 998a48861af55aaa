"""Reinhard et al. 2001 ("Color transfer between images"), on tissue pixels.

Fitted on pooled pixels: the mean and standard deviation of each channel of the decorrelated
l-alpha-beta space (RGB -> LMS, log10, rotation), over tissue pixels only (mean optical density
above about 0.1, from `stain.maths`; black pixels excluded). The transform from a source to the
reference is affine per l-alpha-beta channel, (lab - source mean) * scale + reference mean, with
the scale clipped; it moves tissue only (glass and black pixels are left as they are, blended
by their optical density), so a tile's share of glass does not shift its colours. A one-tile
estimate is trusted by its tissue share, its texture against the reference's (a flat tile has
none to match) and whether it holds two stains (an eosin-only tile is not moved to the
reference's purple mean); an untrusted one is blended toward identity.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .transform import DENSITY, StainTransform, clip_scale, pixels_of, ramp, to_uint8, unsaturated_weight

TISSUE_OD = (0.1, 0.2)  # mean OD: weight 0 (glass) to 1 (tissue), linear between
MIN_WEIGHT = 50.0  # fewer tissue pixels than this: nothing to estimate
TRUST_TISSUE_SHARE = (0.05, 0.25)
TRUST_TEXTURE = (0.25, 0.5)  # the source's l deviation over the reference's
TRUST_ANGLE_DEGREES = (5.0, 15.0)  # the angle between Macenko's two vectors of the source
# One tile alone: its brightness is mostly its cellularity, not its stain, so its mean moves by
# at most these many of the reference's deviations (l, alpha, beta).
TILE_SHIFT_LIMITS = np.array([0.5, 1.0, 1.0])
EPS = 1e-6

# Reinhard et al. 2001: RGB -> LMS, log10, then the decorrelating l-alpha-beta rotation.
LMS_FROM_RGB = np.array([[0.3811, 0.5783, 0.0402], [0.1967, 0.7244, 0.0782], [0.0241, 0.1288, 0.8444]])
# The paper prints its inverse to 4 digits (4.4679, -3.5873, ...); the exact one round-trips.
RGB_FROM_LMS = np.linalg.inv(LMS_FROM_RGB)
LAB_FROM_LOG_LMS = np.diag([1 / math.sqrt(3), 1 / math.sqrt(6), 1 / math.sqrt(2)]) @ np.array(
    [[1, 1, 1], [1, 1, -2], [1, -1, 0]], dtype=np.float64)
LOG_LMS_FROM_LAB = np.linalg.inv(LAB_FROM_LOG_LMS)


@dataclass(frozen=True)
class ReinhardStats:
    """What pooled pixels are fitted to: l-alpha-beta mean and deviation over tissue."""

    mean: np.ndarray  # (3,)
    std: np.ndarray  # (3,)
    tissue_share: float = 1.0
    num_pixels: int = 0
    two_stains: float = 1.0  # 0 (one stain) to 1 (two), from Macenko's vectors

    def to_dict(self) -> dict:
        return {"mean": np.round(self.mean, 6).tolist(), "std": np.round(self.std, 6).tolist(),
                "tissue_share": round(float(self.tissue_share), 4), "num_pixels": int(self.num_pixels)}

    @classmethod
    def from_dict(cls, values: dict) -> "ReinhardStats":
        mean = np.asarray(values["mean"], dtype=np.float64)
        std = np.asarray(values["std"], dtype=np.float64)
        if mean.shape != (3,) or std.shape != (3,) or not np.isfinite(mean).all() or (std <= 0).any():
            raise ValueError(f"not a Reinhard stain record: {values}")
        return cls(mean, std, float(values.get("tissue_share", 1.0)), int(values.get("num_pixels", 0)))


def rgb_to_lab(rgb: np.ndarray, dtype=np.float64) -> np.ndarray:
    """Reinhard's l-alpha-beta of 0-255 pixels (..., 3), in `dtype`."""
    unit = np.maximum(np.asarray(rgb, dtype=dtype) / dtype(255.0), dtype(1.0 / 255.0))
    lms = np.maximum(unit @ LMS_FROM_RGB.T.astype(dtype), dtype(EPS))
    return np.log10(lms) @ LAB_FROM_LOG_LMS.T.astype(dtype)


def lab_to_rgb(lab: np.ndarray) -> np.ndarray:
    """0-255 pixels (unclipped) of l-alpha-beta values, in their dtype."""
    dtype = lab.dtype.type
    log_lms = np.minimum(lab @ LOG_LMS_FROM_LAB.T.astype(dtype), dtype(1.0))
    return dtype(255.0) * np.power(dtype(10.0), log_lms) @ RGB_FROM_LMS.T.astype(dtype)


def tissue_weight(density: np.ndarray) -> np.ndarray:
    """Per pixel of OD (..., 3): 0 for glass and black, 1 for stained tissue."""
    return ramp(density.mean(axis=-1), *TISSUE_OD) * unsaturated_weight(density)


def fit(images) -> ReinhardStats | None:
    """The statistics of pooled uint8 pixels; None with too little tissue."""
    from . import macenko
    pixels = pixels_of(images)
    weight = tissue_weight(DENSITY[pixels])
    if weight.sum() < MIN_WEIGHT:
        return None
    lab = rgb_to_lab(pixels)
    mean = (weight[:, None] * lab).sum(0) / weight.sum()
    std = np.sqrt((weight[:, None] * (lab - mean) ** 2).sum(0) / weight.sum())
    density = macenko.tissue_density(pixels)
    two_stains = 0.0
    if len(density) >= macenko.MIN_PIXELS:
        vectors = macenko.stain_vectors(density)
        angle = np.degrees(np.arccos(np.clip(np.dot(*vectors), -1.0, 1.0)))
        two_stains = float(ramp(angle, *TRUST_ANGLE_DEGREES))
    return ReinhardStats(mean, np.maximum(std, EPS), float(weight.sum() / len(pixels)), int((weight > 0).sum()),
                         two_stains)


def trust(source: ReinhardStats, target: ReinhardStats) -> float:
    return float(ramp(source.tissue_share, *TRUST_TISSUE_SHARE)
                 * ramp(source.std[0] / target.std[0], *TRUST_TEXTURE) * source.two_stains)


class ReinhardTransform(StainTransform):
    """lab' = lab + confidence * ((lab - source mean) * scale + target mean - lab) on tissue;
    `alone` (one tile, no context): the target mean is within TILE_SHIFT_LIMITS of the source's."""

    method = "reinhard"

    def __init__(self, source: ReinhardStats | None, target: ReinhardStats,
                 scale_limits: tuple[float, float], confidence: float = 1.0, alone: bool = False):
        self.source, self.target = source, target
        self.confidence = float(confidence) if source is not None else 0.0
        self.scale = np.ones(3)
        self.target_mean = target.mean
        if source is not None:
            self.scale = clip_scale(target.std / source.std, scale_limits)
            if alone:
                limit = TILE_SHIFT_LIMITS * target.std
                self.target_mean = source.mean + np.clip(target.mean - source.mean, -limit, limit)

    def apply(self, images: np.ndarray) -> np.ndarray:
        images = np.asarray(images)
        if self.confidence == 0.0:
            return np.array(images, dtype=np.uint8, copy=True)
        lab = rgb_to_lab(images, np.float32)
        # lab + confidence * ((lab - source mean) * scale + target mean - lab), as one affine map
        gain = (1.0 + self.confidence * (self.scale - 1.0)).astype(np.float32)
        offset = (self.confidence * (self.target_mean - self.source.mean * self.scale)).astype(np.float32)
        normalized = lab_to_rgb(lab * gain + offset)
        weight = tissue_weight(DENSITY[images]).astype(np.float32)[..., None]
        return to_uint8(images + weight * (normalized - images))

    def record(self) -> dict:
        return {"method": self.method, "confidence": round(self.confidence, 4),
                "scale": np.round(self.scale, 4).tolist(), "target_mean": np.round(self.target_mean, 6).tolist(),
                "source": None if self.source is None else self.source.to_dict()}
