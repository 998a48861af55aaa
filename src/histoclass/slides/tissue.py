"""Tissue detection on a slide thumbnail (pure): what pathologists call tissue, never glass, dust,
a coverslip edge or ink.

    background = glass_background(thumbnail)   # (H, W, 3) float32: the glass's brightness there
    mask = tissue_mask(thumbnail, max_hole_pixels=...)

The glass is not one brightness: scanners light a slide unevenly (a gradient of ten grey levels
across it and darker corners are common), so a pixel is compared with the glass around it, not
with the slide's brightest pixels. `glass_background` fits a smooth surface (a quadratic in x
and y, per channel) to the blocks of the thumbnail that look like glass (flat, grey, bright),
dropping outliers (tissue, dust, the brighter bare glass beyond a coverslip edge) until the fit
settles, and extrapolates it under the tissue.

Optical density (OD, `stain.maths`) against that background, with hysteresis: pixels clearly
stained (OD summed over R, G, B above STRONG_OD) seed the tissue, and any faintly non-white pixel
(above WEAK_OD: fat cell walls, pale stroma) connected to them joins it. Holes inside tissue
(fat cells, small lumina) are filled up to a quarter of a tile (`plan_tiles` says how large that
is); larger holes stay glass, and the mask never reaches past the pixels that are off the glass
themselves (no blur or dilation that would spill a share of a tile into a hole). Thin structures
(a coverslip edge, a hair, a slide's edge: nothing thicker than THIN_PIXELS that is not near a
thicker body) and debris smaller than MIN_REGION_FRACTION are dropped. Pen ink (`qc.ink_mask`)
neither seeds nor joins tissue, but ink lying over tissue (within INK_REACH of it) is kept in the
mask, so its tiles are planned and the tile QC leaves them unclassified, counted ("ink").
"""
from __future__ import annotations

import cv2
import numpy as np

from ..stain.maths import density_table, optical_density
from .qc import ink_mask

WEAK_OD = 0.14  # summed over R, G, B (natural log, `stain.maths`): just off the glass (fat cell walls)
STRONG_OD = 0.58  # clearly stained: eosin-pale stroma and above
MIN_REGION_FRACTION = 2e-5  # of the thumbnail's pixels: debris below this (or MIN_REGION_PIXELS) is dropped
MIN_REGION_PIXELS = 4
MAX_HOLE_FRACTION = 5e-5  # of the thumbnail's pixels, unless the caller says (plan_tiles: a quarter tile)
STAIN_RATIO = 0.08  # (OD green - OD blue) / OD: above this, the colour of H&E (see `stained`)
INK_REACH = 3  # px: ink this close to tissue lies over it (a stroke's half width at thumbnail scale)
THIN_PIXELS = 2  # structures at most this thick (px), away from thicker tissue, are lines, not tissue

# The glass surface: blocks of about 1/GLASS_BLOCKS of the longer side, glass-like when their
# grey level varies by at most GLASS_MAX_STD and their channels differ by at most GLASS_MAX_CHROMA.
GLASS_BLOCKS = 64
GLASS_MAX_STD = 6.0
GLASS_MAX_CHROMA = 18.0
GLASS_MIN_GREY = 150.0
GLASS_MIN_BLOCKS = 12  # fewer glass-like blocks: one brightness for the whole slide
GLASS_FLAT_PERCENTILE = 99  # ... its brightest pixels' (the earlier, global reference)


def glass_background(rgb: np.ndarray) -> np.ndarray:
    """The brightness (0-255, per channel, float32 (H, W, 3)) of the glass at every pixel of
    the RGB uint8 `rgb`: a quadratic surface fitted to its glass-like blocks, robustly."""
    height, width = rgb.shape[:2]
    block = max(1, max(height, width) // GLASS_BLOCKS)
    rows, columns = max(1, height // block), max(1, width // block)
    cropped = np.ascontiguousarray(rgb[:rows * block, :columns * block]).astype(np.float32)
    means = cv2.resize(cropped, (columns, rows), interpolation=cv2.INTER_AREA).reshape(rows, columns, 3)
    grey = cropped.mean(axis=2)
    spread = np.sqrt(np.maximum(cv2.resize(grey * grey, (columns, rows), interpolation=cv2.INTER_AREA)
                                - cv2.resize(grey, (columns, rows), interpolation=cv2.INTER_AREA) ** 2, 0))
    flat = spread.reshape(rows, columns) <= GLASS_MAX_STD
    chroma = means.max(axis=2) - means.min(axis=2)
    candidate = flat & (chroma <= GLASS_MAX_CHROMA) & (means.mean(axis=2) >= GLASS_MIN_GREY)
    if candidate.sum() >= GLASS_MIN_BLOCKS:
        # The brightest of the flat grey blocks are glass; the rest may be fat or pale tissue.
        level = means.mean(axis=2)
        candidate &= level >= np.percentile(level[candidate], 25) - 2 * GLASS_MAX_STD
    if candidate.sum() < GLASS_MIN_BLOCKS:
        return _flat_background(rgb)
    ys, xs = np.nonzero(candidate)
    basis = _quadratic_basis((xs + 0.5) / columns, (ys + 0.5) / rows)
    values = means[ys, xs].astype(np.float64)  # (n, 3)
    keep = np.ones(len(xs), bool)
    for _ in range(6):  # drop outliers (tissue darker, bare glass beyond a coverslip brighter) until it settles
        coefficients, *_ = np.linalg.lstsq(basis[keep], values[keep], rcond=None)
        residual = (values - basis @ coefficients).mean(axis=1)
        scale = max(1.4826 * float(np.median(np.abs(residual[keep] - np.median(residual[keep])))), 0.75)
        new_keep = np.abs(residual) <= 2.5 * scale
        if new_keep.sum() < GLASS_MIN_BLOCKS or np.array_equal(new_keep, keep):
            break
        keep = new_keep
    y = (np.arange(height, dtype=np.float32) + 0.5) / (rows * block)
    x = (np.arange(width, dtype=np.float32) + 0.5) / (columns * block)
    surface = np.empty((height, width, 3), np.float32)
    terms = _quadratic_terms(x[None, :], y[:, None])
    for channel in range(3):
        surface[..., channel] = sum(c * t for c, t in zip(coefficients[:, channel].astype(np.float32), terms))
    return np.clip(surface, 1.0, 255.0)


def _quadratic_terms(x, y):
    return (np.ones_like(x * y), x + 0 * y, y + 0 * x, x * x + 0 * y, x * y, y * y + 0 * x)


def _quadratic_basis(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.stack([t.astype(np.float64) for t in _quadratic_terms(x, y)], axis=1)


def _flat_background(rgb: np.ndarray) -> np.ndarray:
    """One brightness per channel (its GLASS_FLAT_PERCENTILE, at least 200): for a thumbnail
    with too little glass to fit a surface to."""
    pixels = rgb.reshape(-1, 3)
    step = max(1, len(pixels) // 200_000)
    glass = np.clip(np.percentile(pixels[::step], GLASS_FLAT_PERCENTILE, axis=0), 200, 255)
    return np.broadcast_to(glass.astype(np.float32), rgb.shape).copy()


def channel_density(rgb: np.ndarray, background: np.ndarray | None = None) -> np.ndarray:
    """Optical density per channel (float32, (H, W, 3)) of the RGB uint8 `rgb` against the glass
    `background` (per pixel and channel; default `glass_background(rgb)`):
    OD(I; glass) = OD(I; white) - OD(glass; white), by `stain.maths`."""
    background = glass_background(rgb) if background is None else background
    density = density_table().astype(np.float32)[rgb]
    density -= optical_density(background).astype(np.float32)
    return density


def stained(density: np.ndarray) -> np.ndarray:
    """Whether OD per channel (..., 3) has the colour of H&E: both stains absorb green more
    than blue (haematoxylin by a quarter of its density, eosin by three quarters), where dust,
    hairs, a coverslip or slide edge are grey or brown (blue absorbed as much or more)."""
    total = np.maximum(density.sum(axis=-1), 1e-6)
    return (density[..., 1] - density[..., 2]) >= STAIN_RATIO * total


def tissue_mask(thumbnail: np.ndarray, max_hole_pixels: float | None = None) -> np.ndarray:
    """Boolean mask (same height and width as the RGB uint8 `thumbnail`), True on tissue.
    Holes in tissue of at most `max_hole_pixels` (default MAX_HOLE_FRACTION of the thumbnail)
    are tissue."""
    thumbnail = np.ascontiguousarray(thumbnail)
    channels = channel_density(thumbnail)
    density = channels.sum(axis=2)
    # Ink at half resolution (strokes are wide), back to full size and widened by a pixel.
    ink = ink_mask(thumbnail[::2, ::2]).view(np.uint8)
    ink = cv2.resize(ink, thumbnail.shape[1::-1], interpolation=cv2.INTER_NEAREST)
    ink = cv2.dilate(ink, np.ones((3, 3), np.uint8)) > 0
    # Hysteresis on a lightly smoothed density (noise does not break tissue apart), but the mask
    # keeps only pixels that are off the glass themselves.
    smooth = cv2.GaussianBlur(density, (3, 3), 0)
    weak = ((smooth > WEAK_OD) & ~ink).view(np.uint8)
    weak = cv2.morphologyEx(weak, cv2.MORPH_CLOSE, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3)))
    strong = (smooth > STRONG_OD) & ~ink & (weak > 0)
    count, labels = cv2.connectedComponents(weak, connectivity=8)
    seeded = np.bincount(labels[strong], minlength=count) > 0
    seeded[0] = False
    mask = seeded[labels] & (density > WEAK_OD)
    mask = _drop_thin(mask, stained(channels))
    if max_hole_pixels is None:
        max_hole_pixels = MAX_HOLE_FRACTION * mask.size
    # Ink over tissue is kept (its tiles are planned, then left unclassified by the tile QC and
    # counted there); ink on the glass beyond INK_REACH of the tissue is not tissue.
    near = cv2.dilate(mask.view(np.uint8), cv2.getStructuringElement(
        cv2.MORPH_ELLIPSE, (2 * INK_REACH + 1, 2 * INK_REACH + 1))) > 0
    mask = _fill_holes(mask | (ink & near), max_hole_pixels)
    # Debris too small to matter, and whole regions not coloured as H&E (dust specks, hairs).
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.view(np.uint8), connectivity=8)
    weights = channels[mask]
    sums = np.stack([np.bincount(labels[mask], weights=weights[:, c], minlength=count) for c in range(3)], axis=1)
    keep = (stats[:, cv2.CC_STAT_AREA] >= max(MIN_REGION_PIXELS, MIN_REGION_FRACTION * mask.size)) & stained(sums)
    keep[0] = False
    return keep[labels]


def _drop_thin(mask: np.ndarray, coloured: np.ndarray) -> np.ndarray:
    """`mask` without its thin grey structures: pixels not `coloured` as H&E that lie farther than
    THIN_PIXELS from any part of the mask thicker than THIN_PIXELS (a coverslip edge, a hair, the
    slide's edge) are dropped; thin tissue stays."""
    size = THIN_PIXELS + 1
    element = cv2.getStructuringElement(cv2.MORPH_RECT, (size, size))
    body = cv2.morphologyEx(mask.view(np.uint8), cv2.MORPH_OPEN, element)
    near = cv2.dilate(body, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * size + 1, 2 * size + 1)))
    return mask & ((near > 0) | coloured)


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
