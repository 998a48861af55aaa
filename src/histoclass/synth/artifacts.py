"""Artefacts of real slides painted onto any RGB image: pen ink and an out-of-focus band.

    inked, ink = add_pen_ink(rgb, seed=1)               # a few thick marker strokes
    blurred, band = add_blur_band(rgb, seed=1, sigma=3)  # a band as a scanner out of focus gives

Both take and return uint8 (height, width, 3) and return the bool mask of the pixels they
changed, so a benchmark knows which tiles are inked or blurred. Deterministic by `seed`.

Ink is a filter over the glass and tissue under it, as a marker's dye is: each channel is
multiplied by the colour's transmittance (with a little variation along the stroke), so inked
tissue stays visible under blue or green and nearly vanishes under black.
"""
from __future__ import annotations

import cv2
import numpy as np

# Fraction of the light each ink lets through, per RGB channel (marker dyes on a slide).
INK_TRANSMITTANCE = {
    "blue": (0.12, 0.30, 0.78),
    "green": (0.16, 0.55, 0.32),
    "black": (0.13, 0.13, 0.15),
    "red": (0.85, 0.14, 0.18),
}


def add_pen_ink(rgb: np.ndarray, seed: int = 0, colors=("blue", "green", "black"), through=None,
                strength: tuple[float, float] = (0.75, 1.3)) -> tuple[np.ndarray, np.ndarray]:
    """`rgb` with one thick marker stroke per colour in `colors` (smooth curves across the
    image, about 2 % of its shorter side wide), and the bool mask of the inked pixels.

    `through`: (x, y) points, one per colour, that the strokes pass through (a pathologist's
    marks lie on the tumour), each stroke then half the image's shorter side long. `strength`:
    the range of the dye's amount along a stroke, as a power of its transmittance (1: the
    INK_TRANSMITTANCE colours; 0.3-0.6: a semi-transparent stroke, the tissue showing through)."""
    rgb = _check_rgb(rgb)
    unknown = [c for c in colors if c not in INK_TRANSMITTANCE]
    if unknown:
        raise ValueError(f"unknown ink colour(s) {unknown}; known: {sorted(INK_TRANSMITTANCE)}")
    rng = np.random.default_rng(seed)
    height, width = rgb.shape[:2]
    short = min(height, width)
    out = rgb.copy()
    inked = np.zeros((height, width), bool)
    if through is not None and len(through) < len(colors):
        raise ValueError(f"`through` needs a point per colour ({len(colors)}), got {len(through)}")
    for k, color in enumerate(colors):
        stroke = np.zeros((height, width), np.uint8)
        thickness = max(3, int(round(short * rng.uniform(0.015, 0.03))))
        curve = _curve(rng, width, height)
        if through is not None:  # half as long, its middle on the point
            middle = curve[len(curve) // 2].astype(np.float64)
            curve = np.round(np.asarray(through[k], np.float64) + (curve - middle) * 0.5 * short
                             / max(np.ptp(curve, axis=0).max(), 1.0)).astype(np.int32)
        cv2.polylines(stroke, [curve], False, 1, thickness=thickness, lineType=cv2.LINE_8)
        # A marker deposits more dye in some places than others: the transmittance's power
        # varies smoothly along the stroke (drawn at 1/8 scale: smooth anyway, and cheap).
        small = rng.uniform(*strength, (max(1, height // 8), max(1, width // 8))).astype(np.float32)
        small = cv2.GaussianBlur(small, (0, 0), max(1.0, thickness / 16))
        x, y, w, h = cv2.boundingRect(stroke)
        if w == 0 or h == 0:
            continue
        mask = stroke[y:y + h, x:x + w].astype(bool)
        density = cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR)[y:y + h, x:x + w] \
            if small.size > 1 else np.ones((h, w), np.float32)
        transmittance = np.asarray(INK_TRANSMITTANCE[color], np.float32)
        window = out[y:y + h, x:x + w]
        factor = transmittance[None, :] ** density[mask][:, None]
        window[mask] = np.clip((window[mask] * factor).round(), 0, 255).astype(np.uint8)
        inked[y:y + h, x:x + w] |= mask
    return out, inked


def add_blur_band(rgb: np.ndarray, seed: int = 0, sigma: float = 3.0,
                  fraction: float = 0.25) -> tuple[np.ndarray, np.ndarray]:
    """`rgb` with a straight band across it (horizontal or vertical by `seed`, `fraction` of
    the image) out of focus (Gaussian blur of `sigma` px), and the bool mask of the band."""
    rgb = _check_rgb(rgb)
    if not 0 < fraction <= 1 or sigma <= 0:
        raise ValueError(f"fraction must be in (0, 1] and sigma positive, got {fraction} and {sigma}")
    rng = np.random.default_rng(seed)
    height, width = rgb.shape[:2]
    blurred = cv2.GaussianBlur(rgb, (0, 0), sigma)
    band = np.zeros((height, width), bool)
    vertical = bool(rng.integers(2))
    side = width if vertical else height
    size = max(1, int(round(side * fraction)))
    start = int(rng.integers(0, side - size + 1))
    if vertical:
        band[:, start:start + size] = True
    else:
        band[start:start + size, :] = True
    out = rgb.copy()
    out[band] = blurred[band]
    return out, band


def _curve(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A smooth open curve across the image (a hand's stroke): a line between two random edge
    points bent by two low-frequency sine waves, as int32 points for cv2.polylines."""
    start = np.array([rng.uniform(0, 0.3) * width, rng.uniform(0.1, 0.9) * height])
    end = np.array([rng.uniform(0.7, 1.0) * width, rng.uniform(0.1, 0.9) * height])
    if rng.integers(2):  # top to bottom instead of left to right
        start = np.array([rng.uniform(0.1, 0.9) * width, rng.uniform(0, 0.3) * height])
        end = np.array([rng.uniform(0.1, 0.9) * width, rng.uniform(0.7, 1.0) * height])
    t = np.linspace(0, 1, 200)[:, None]
    line = start + t * (end - start)
    normal = np.array([-(end - start)[1], (end - start)[0]]) / max(np.linalg.norm(end - start), 1e-9)
    length = np.linalg.norm(end - start)
    bend = sum(rng.uniform(-0.12, 0.12) * np.sin(np.pi * k * t[:, 0] + rng.uniform(0, np.pi)) for k in (1, 2))
    points = line + (bend * length)[:, None] * normal
    return np.round(points).astype(np.int32)


def _check_rgb(rgb: np.ndarray) -> np.ndarray:
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected a uint8 (height, width, 3) image, got {rgb.dtype} {rgb.shape}")
    return rgb
