"""Glass as slide scanners show it, painted over a slide: uneven light, a tint, noise, dust and a
coverslip edge.

    scanned = add_scanner_glass(rgb, seed=3)

A flat white background is what a rebuilt or painted slide has and what no scanner gives; a
tissue mask tuned on it fails on real slides. This adds, deterministically by `seed`:
- an illumination gradient of about GRADIENT_LEVELS grey levels across the slide, over the tissue
  too (a plane at a random angle), and vignetting (darker corners, a few levels);
- a faint tint (the light source and the glass are not neutral) and sensor noise;
- dust specks: small soft blobs of grey-brown, semi-transparent, on glass and tissue alike;
- a coverslip edge: a thin dark line in the glass beyond the tissue, the bare glass beyond it a
  few levels brighter (no coverslip and mounting medium to pass through).

Input and output are RGB uint8 (height, width, 3); the light is a multiplication (Beer-Lambert:
the tissue under the darker side is darker by the same share).
"""
from __future__ import annotations

import cv2
import numpy as np

GRADIENT_LEVELS = 10.0  # grey levels from the brightest to the darkest side of the slide
VIGNETTING_LEVELS = 4.0  # grey levels darker in the corners than in the middle
TINT = 0.012  # at most, relative per channel
NOISE_LEVELS = 1.2  # standard deviation of the sensor noise, grey levels
DUST_PER_MEGAPIXEL = 60.0
DUST_RADIUS = (1.0, 5.0)  # px, at the slide's own scale
COVERSLIP_BRIGHTER = 6.0  # grey levels brighter beyond the coverslip edge
COVERSLIP_LINE_LEVELS = (45.0, 80.0)  # how much darker the edge's line is
GLASS_LEVEL = 200  # a column or row brighter than this throughout is glass (for the edge)


def add_scanner_glass(rgb: np.ndarray, seed: int = 0, gradient_levels: float = GRADIENT_LEVELS,
                      dust: bool = True, coverslip: bool = True) -> np.ndarray:
    """`rgb` (uint8, H x W x 3) as a scanner shows it (see the module's docstring); the same
    seed gives the same glass."""
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"add_scanner_glass needs a uint8 (height, width, 3) RGB image, got {rgb.dtype} {rgb.shape}")
    rng = np.random.default_rng(seed)
    height, width = rgb.shape[:2]
    light = illumination(rng, height, width, gradient_levels)  # (H, W) float32, 1 at the brightest
    tint = (1.0 - rng.uniform(0, TINT, 3)).astype(np.float32)
    edge = _coverslip_edge(rng, rgb) if coverslip else None
    out = np.empty_like(rgb)
    rows = 512  # float32 over a whole slide at once would take gigabytes
    for top in range(0, height, rows):
        part = rgb[top:top + rows].astype(np.float32)
        part *= light[top:top + rows, :, None] * tint
        if edge is not None:
            beyond, line = edge
            part += COVERSLIP_BRIGHTER * beyond[top:top + rows, :, None]
            part *= 1.0 - line[top:top + rows, :, None]
        part += rng.normal(0, NOISE_LEVELS, part.shape).astype(np.float32)
        out[top:top + rows] = np.clip(np.rint(part), 0, 255).astype(np.uint8)
    if dust:
        _add_dust(rng, out)
    return out


def illumination(rng: np.random.Generator, height: int, width: int,
                 gradient_levels: float = GRADIENT_LEVELS) -> np.ndarray:
    """(height, width) float32 light field, at most 1: a linear gradient of `gradient_levels`
    grey levels (of 245) at a random angle, times a quadratic vignetting."""
    angle = rng.uniform(0, 2 * np.pi)
    y = np.linspace(-1, 1, height, dtype=np.float32)[:, None]
    x = np.linspace(-1, 1, width, dtype=np.float32)[None, :]
    ramp = (np.cos(angle) * x + np.sin(angle) * y) / np.sqrt(2) + 0.5  # 0-1 across the slide
    ramp = (ramp - ramp.min()) / max(float(ramp.max() - ramp.min()), 1e-6)
    radius = (x ** 2 + y ** 2) / 2  # 0 in the middle, 1 in the corners
    vignetting = VIGNETTING_LEVELS * rng.uniform(0.6, 1.0)
    return (1.0 - (gradient_levels * ramp + vignetting * radius) / 245.0).astype(np.float32)


def _coverslip_edge(rng: np.random.Generator, rgb: np.ndarray):
    """(beyond, line): float32 (H, W) maps of the bare glass beyond the coverslip (0-1) and of
    the edge's darkening (0-1), or None when no side of the slide has glass to put it in. The
    edge runs along the right or bottom side, in the band of glass beyond the tissue, slightly
    tilted, as a coverslip laid by hand."""
    height, width = rgb.shape[:2]
    grey = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY)
    sides = []
    for axis, size in ((0, width), (1, height)):  # axis 0: columns (right side), 1: rows (bottom)
        bright = grey.min(axis=axis) > GLASS_LEVEL
        band = int(np.argmin(bright[::-1])) if not bright.all() else size
        if band >= 12:
            sides.append((axis, band))
    if not sides:
        return None
    axis, band = sides[int(rng.integers(len(sides)))]
    size, across = (width, height) if axis == 0 else (height, width)
    position = size - band * rng.uniform(0.35, 0.65)  # in the middle of the glass band
    tilt = rng.uniform(-0.3, 0.3) * band / max(across, 1)  # stays inside the band
    along = np.arange(across, dtype=np.float32)
    where = position + tilt * (along - across / 2)  # the edge's coordinate at each row/column
    coordinate = np.arange(size, dtype=np.float32)
    distance = coordinate[None, :] - where[:, None]  # (across, size): > 0 beyond the edge
    beyond = np.clip(distance + 0.5, 0, 1)
    thickness = rng.uniform(1.0, 2.0)
    darkness = rng.uniform(*COVERSLIP_LINE_LEVELS) / 245.0
    line = darkness * np.exp(-0.5 * (distance / thickness) ** 2)
    if axis == 1:
        beyond, line = beyond.T, line.T
    return beyond.astype(np.float32), line.astype(np.float32)


def _add_dust(rng: np.random.Generator, rgb: np.ndarray) -> None:
    """Dust specks (soft grey-brown blobs, semi-transparent) painted in place."""
    height, width = rgb.shape[:2]
    count = rng.poisson(DUST_PER_MEGAPIXEL * height * width / 1e6)
    for _ in range(count):
        radius = rng.uniform(*DUST_RADIUS)
        half = int(np.ceil(3 * radius))
        cx, cy = int(rng.integers(0, width)), int(rng.integers(0, height))
        x0, x1, y0, y1 = max(0, cx - half), min(width, cx + half + 1), max(0, cy - half), min(height, cy + half + 1)
        yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
        aspect = rng.uniform(0.5, 1.0)
        angle = rng.uniform(0, np.pi)
        u = (xx - cx) * np.cos(angle) + (yy - cy) * np.sin(angle)
        v = (-(xx - cx) * np.sin(angle) + (yy - cy) * np.cos(angle)) / aspect
        opacity = rng.uniform(0.3, 0.8) * np.exp(-0.5 * ((u ** 2 + v ** 2) / radius ** 2) ** 2)
        colour = np.array([110, 100, 90], np.float32) * rng.uniform(0.6, 1.2)
        window = rgb[y0:y1, x0:x1].astype(np.float32)
        window = window * (1 - opacity[..., None]) + colour * opacity[..., None]
        rgb[y0:y1, x0:x1] = np.clip(np.rint(window), 0, 255).astype(np.uint8)
