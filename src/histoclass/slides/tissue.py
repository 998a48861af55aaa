"""Tissue detection on a slide thumbnail (pure): what pathologists call tissue, never glass or ink.

Optical density (OD, the light a pixel absorbs against the glass's own brightness) with
hysteresis: pixels clearly stained (OD above STRONG_OD) seed the tissue, and any faintly
non-white pixel (OD above WEAK_OD: fat cell walls, pale stroma) connected to them joins it.
Holes inside tissue (fat cells, small lumina) are filled up to a quarter of a tile
(`plan_tiles` says how large that is); a whole tile of glass that tissue surrounds stays glass
(on the IDC patients' rebuilt slides, filling those put 2.4 % of the classified tiles on
glass). Saturation alone would take fat for glass. Pen ink (`qc.ink_mask`) is never tissue, and debris smaller than MIN_REGION_FRACTION
is dropped.
"""
from __future__ import annotations

import cv2
import numpy as np

from .qc import ink_mask

WEAK_OD = 0.06  # summed over R, G, B: just off the glass (fat cell walls at thumbnail scale)
STRONG_OD = 0.25  # clearly stained: eosin-pale stroma and above
OD_SCALE = 80  # uint8 units per unit of optical density (0.0125 OD a step)
GLASS_PERCENTILE = 99  # the glass's brightness: this percentile of each channel (200 at least)
MIN_REGION_FRACTION = 2e-4  # of the thumbnail's pixels: dust and debris below this are dropped
MAX_HOLE_FRACTION = 5e-5  # of the thumbnail's pixels, unless the caller says (plan_tiles: a quarter tile)


def optical_density(rgb: np.ndarray) -> np.ndarray:
    """Summed optical density over R, G, B against the glass's brightness (the image's bright
    percentile per channel, so a grey or tinted glass reads 0), as uint8 in OD_SCALE units
    (saturating at 255, far above any threshold): a per-channel lookup table, no logarithms
    per pixel."""
    pixels = rgb.reshape(-1, 3)
    step = max(1, len(pixels) // 200_000)  # a sample is enough for a percentile
    glass = np.clip(np.percentile(pixels[::step], GLASS_PERCENTILE, axis=0), 200, 255)
    levels = np.maximum(np.arange(256, dtype=np.float64), 1.0)[:, None] / glass[None, :]
    table = np.clip(-np.log10(np.minimum(levels, 1.0)) * OD_SCALE, 0, 255).round().astype(np.uint8)
    per_channel = cv2.LUT(np.ascontiguousarray(rgb), table.reshape(256, 1, 3))
    return cv2.transform(per_channel, np.ones((1, 3), np.float32))  # saturating sum, uint8


def tissue_mask(thumbnail: np.ndarray, max_hole_pixels: float | None = None) -> np.ndarray:
    """Boolean mask (same height and width as the RGB uint8 `thumbnail`), True on tissue.
    Holes in tissue of at most `max_hole_pixels` (default MAX_HOLE_FRACTION of the thumbnail)
    are tissue."""
    thumbnail = np.ascontiguousarray(thumbnail)
    density = cv2.GaussianBlur(optical_density(thumbnail), (3, 3), 0)
    # Ink at half resolution (strokes are wide), back to full size and widened by a pixel.
    ink = ink_mask(thumbnail[::2, ::2]).view(np.uint8)
    ink = cv2.resize(ink, thumbnail.shape[1::-1], interpolation=cv2.INTER_NEAREST)
    ink = cv2.dilate(ink, np.ones((3, 3), np.uint8))
    weak = ((density > round(WEAK_OD * OD_SCALE)) & (ink == 0)).view(np.uint8)
    weak = cv2.morphologyEx(weak, cv2.MORPH_CLOSE, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3)))
    strong = (density > round(STRONG_OD * OD_SCALE)) & (ink == 0) & (weak > 0)
    count, labels = cv2.connectedComponents(weak, connectivity=8)
    seeded = np.bincount(labels[strong], minlength=count) > 0
    seeded[0] = False
    mask = seeded[labels]
    if max_hole_pixels is None:
        max_hole_pixels = MAX_HOLE_FRACTION * mask.size
    mask = _fill_holes(mask, max_hole_pixels) & (ink == 0)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.view(np.uint8), connectivity=8)
    keep = stats[:, cv2.CC_STAT_AREA] >= max(4, MIN_REGION_FRACTION * mask.size)
    keep[0] = False
    return keep[labels]


def _fill_holes(mask: np.ndarray, max_area: float) -> np.ndarray:
    """`mask` with its holes (regions of False not reaching the border) of at most `max_area`
    pixels set True."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats((~mask).astype(np.uint8), connectivity=4)
    height, width = mask.shape
    left, top = stats[:, cv2.CC_STAT_LEFT], stats[:, cv2.CC_STAT_TOP]
    right, bottom = left + stats[:, cv2.CC_STAT_WIDTH], top + stats[:, cv2.CC_STAT_HEIGHT]
    inside = (left > 0) & (top > 0) & (right < width) & (bottom < height)
    hole = inside & (stats[:, cv2.CC_STAT_AREA] <= max_area)
    hole[0] = False  # label 0 is the mask itself
    return mask | hole[labels]


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
