"""Tissue detection on a slide thumbnail (pure): Otsu on saturation, then morphological clean-up.

Glass is bright and grey (low saturation), stained tissue is coloured; Otsu's threshold on the
saturation channel splits the two. A floor on the threshold keeps an empty slide empty (Otsu
always finds a split, even in the noise of bare glass).
"""
from __future__ import annotations

import cv2
import numpy as np

MIN_SATURATION = 20  # of 255: glass and its tint stay below, the palest eosin lies above
MIN_REGION_FRACTION = 2e-4  # of the thumbnail's pixels: dust and debris below this are dropped


def tissue_mask(thumbnail: np.ndarray, min_saturation: int = MIN_SATURATION) -> np.ndarray:
    """Boolean mask (same height and width as the RGB uint8 `thumbnail`), True on tissue."""
    saturation = cv2.cvtColor(np.ascontiguousarray(thumbnail), cv2.COLOR_RGB2HSV)[..., 1]
    saturation = cv2.medianBlur(saturation, 3)
    otsu, _ = cv2.threshold(saturation, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    mask = (saturation > max(otsu, min_saturation)).astype(np.uint8)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))
    mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, kernel)  # fat and lumina inside tissue
    mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3)))
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    keep = stats[:, cv2.CC_STAT_AREA] >= max(4, MIN_REGION_FRACTION * mask.size)
    keep[0] = False
    return keep[labels]


def region_fractions(mask: np.ndarray, scale: tuple[float, float], xs: np.ndarray, ys: np.ndarray,
                     side: int) -> np.ndarray:
    """Fraction of each square (level-0 top-left `xs`, `ys`, `side` px) that `mask` covers.

    `scale` is level-0 pixels per mask pixel (x, y). Uses a summed-area table, so it costs the
    same for any number of squares.
    """
    integral = cv2.integral(mask.astype(np.uint8), sdepth=cv2.CV_64F)
    height, width = mask.shape

    def to_mask(values, factor, limit):
        return np.clip(np.round(np.asarray(values, dtype=np.float64) / factor), 0, limit).astype(np.int64)

    x0, x1 = to_mask(xs, scale[0], width), to_mask(np.asarray(xs) + side, scale[0], width)
    y0, y1 = to_mask(ys, scale[1], height), to_mask(np.asarray(ys) + side, scale[1], height)
    x1, y1 = np.maximum(x1, x0 + 1).clip(max=width), np.maximum(y1, y0 + 1).clip(max=height)
    x0, y0 = np.minimum(x0, x1 - 1), np.minimum(y0, y1 - 1)
    area = (x1 - x0) * (y1 - y0)
    covered = integral[y1, x1] - integral[y0, x1] - integral[y1, x0] + integral[y0, x0]
    return (covered / np.maximum(area, 1)).astype(np.float32)
