"""A fitted stain transform: fixed parameters that map uint8 RGB pixels to normalized ones.

A transform is estimated once (from a patient's or a slide's pooled tissue pixels, or, with no
context, from one tile) and then applied, unchanged, to every tile of its group, so a tile's
own stain amount (its cellularity) survives: a dense tile stays denser than a pale one of the
same patient. Each method module (`macenko`, `reinhard`) makes its own transform class.
"""
from __future__ import annotations

import numpy as np

from .maths import density_table

# A pixel this dark in every channel is saturated (black, ink, a fold): neither method's model
# of stained tissue holds there, so it is left as it is (blended out between these mean ODs).
SATURATED_OD = (2.5, 3.0)  # mean intensity about 20 and 12
DENSITY = density_table().astype(np.float32)  # OD of each uint8 level


def clip_scale(scale, limits: tuple[float, float]) -> np.ndarray:
    return np.clip(np.asarray(scale, dtype=np.float64), *limits)


def ramp(value, low: float, high: float) -> np.ndarray:
    """0 at or below `low`, 1 at or above `high`, linear between."""
    value = np.asarray(value)
    value = value if value.dtype == np.float32 else value.astype(np.float64)
    return np.clip((value - low) / (high - low), 0.0, 1.0)


def unsaturated_weight(density: np.ndarray) -> np.ndarray:
    """Per pixel of OD (..., 3): 1 for stained tissue and glass, 0 for black (see SATURATED_OD)."""
    low, high = SATURATED_OD
    return np.clip((high - density.mean(axis=-1)) / (high - low), 0.0, 1.0)


class StainTransform:
    """Fixed parameters; `apply` maps uint8 images (..., 3) to uint8 images of the same shape."""

    method = "none"
    confidence = 1.0  # how far the estimate was trusted (1: wholly; 0: left as identity)

    def apply(self, images: np.ndarray) -> np.ndarray:
        return np.array(images, dtype=np.uint8, copy=True)

    def record(self) -> dict:
        """The fitted parameters as JSON-able numbers (summary.json's `stain`)."""
        return {"method": self.method}


def to_uint8(values: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


MAX_FIT_PIXELS = 50_000  # pixels a fit looks at: every k-th of a larger pool (the statistics settle well before)


def pixels_of(images, limit: int | None = MAX_FIT_PIXELS) -> np.ndarray:
    """uint8 pixels (N, 3) of an image (H, W, 3), a batch (N, H, W, 3) or pixels (N, 3); at most
    about `limit` of them, evenly spaced (deterministic)."""
    array = np.asarray(images)
    if array.dtype != np.uint8 or array.shape[-1] != 3:
        raise ValueError(f"stain normalization takes uint8 RGB pixels (..., 3), got {array.dtype} {array.shape}")
    pixels = array.reshape(-1, 3)
    if limit and len(pixels) > limit:
        pixels = pixels[::-(-len(pixels) // limit)]
    return pixels
