"""How sharp an image is (pure), the same measure for a run's training patches and a slide's tiles.

    values = sharpness(batch)              # (n,) float32: NaN for an image almost all glass
    reference = focus_reference(images)    # focus.json: percentiles over a run's training patches

Sharpness is the mean square of the grey image's Laplacian (3x3, at the image's own pixels)
over its tissue pixels (grey below GLASS_GREY): glass is flat, and a tile half glass is not
blurred. A run stores the percentiles of its training patches (`focus.json`, at the model's
input size and µm/px, as `histoclass slide` reads its tiles), so a slide's tiles can be judged
against what a focused patch looks like to this model, not only against the slide itself:
a slide wholly out of focus has no sharp tiles to compare with.
"""
from __future__ import annotations

import cv2
import numpy as np

GLASS_GREY = 215  # grey level (of 255) above which a pixel is glass, for the sharpness
MIN_SHARPNESS_PIXELS = 0.05  # of an image: with less tissue its sharpness is NaN, never judged
FOCUS_PERCENTILES = (1, 2, 5, 10, 25, 50)
FOCUS_SAMPLE = 4096  # training patches measured for focus.json (seeded sample)


def sharpness(batch: np.ndarray) -> np.ndarray:
    """(n,) float32 sharpness of uint8 RGB images (n, side, side, 3); NaN where fewer than
    MIN_SHARPNESS_PIXELS of an image is tissue. Vectorised: the batch is one image for OpenCV."""
    batch = np.asarray(batch)
    if batch.ndim != 4 or batch.shape[-1] != 3 or batch.dtype != np.uint8:
        raise ValueError(f"expected uint8 RGB images (n, height, width, 3), got {batch.dtype} {batch.shape}")
    n, height, width = batch.shape[:3]
    if n == 0:
        return np.zeros(0, np.float32)
    tall = np.ascontiguousarray(batch).reshape(n * height, width, 3)
    grey = cv2.cvtColor(tall, cv2.COLOR_RGB2GRAY)
    laplacian = cv2.Laplacian(grey, cv2.CV_32F, ksize=1)
    tissue = cv2.threshold(grey, GLASS_GREY - 1, 1, cv2.THRESH_BINARY_INV)[1].reshape(n, height, width)
    tissue[:, [0, -1], :] = 0  # no seams between stacked images
    tissue[:, :, [0, -1]] = 0
    squares = cv2.multiply(cv2.multiply(laplacian, laplacian), tissue.reshape(n * height, width), dtype=cv2.CV_32F)
    count = tissue.reshape(n, -1).sum(axis=1, dtype=np.int64)
    enough = count >= MIN_SHARPNESS_PIXELS * (height - 2) * (width - 2)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(enough, squares.reshape(n, -1).sum(axis=1, dtype=np.float64) / count,
                        np.nan).astype(np.float32)


def focus_reference(images, indices=None, seed: int = 0, batch: int = 512) -> dict:
    """focus.json's content: percentiles of the sharpness of (a seeded sample of at most
    FOCUS_SAMPLE of) `images[indices]`, uint8 (N, side, side, 3), possibly memory-mapped."""
    indices = np.arange(len(images)) if indices is None else np.asarray(indices)
    if len(indices) > FOCUS_SAMPLE:
        indices = np.sort(np.random.default_rng(seed).choice(indices, FOCUS_SAMPLE, replace=False))
    values = np.concatenate([sharpness(np.asarray(images[indices[start:start + batch]]))
                             for start in range(0, len(indices), batch)] or [np.zeros(0, np.float32)])
    values = values[np.isfinite(values)]
    if not len(values):
        return {"num_patches": 0, "percentiles": {}}
    side = int(np.asarray(images[indices[:1]]).shape[1])
    return {"measure": "mean square of the grey Laplacian over tissue pixels", "image_size": side,
            "num_patches": int(len(values)),
            "percentiles": {f"p{q:02d}": round(float(np.percentile(values, q)), 4) for q in FOCUS_PERCENTILES}}
