"""Quality control of a slide and its tiles (pure): is it H&E brightfield at all, which pixels are
pen ink, and which tiles are inked or out of focus.

    check_brightfield(thumbnail, tissue)          # raises SlideError for fluorescence, IHC, ...
    ink = ink_mask(rgb)                           # bool, per pixel
    measures = measure_tiles(batch)               # (n, 2) float32: ink share, sharpness
    reasons = tile_qc(measures, read_ok)          # "" (classified), "ink" or "blur" per tile

A tile is left unclassified (its `qc` reason in tiles.csv) when at least MAX_INK_FRACTION of it
is ink (any stroke that survives a 3 px opening), or when its sharpness (the mean square of its
grey Laplacian over its tissue pixels) is below BLUR_RATIO of the median of the slide's tiles:
as HistoQC and Slideflow do, the reference is the slide itself, whose scanner, stain and
thickness set what "sharp" is. On 600 real IDC patches, 0.25 of their median flagged about 1 %
of them as they are and all of them blurred by a Gaussian of 0.75 px or more; the Laplacian's
variance over the tile's own contrast separated them less well (2 % of clean ones at 90 %
recall).
"""
from __future__ import annotations

import cv2
import numpy as np

from ..data.sharpness import sharpness
from ..stain.maths import density_table
from .reader import SlideError

MEASURES = ("ink_fraction", "sharpness")
MAX_INK_FRACTION = 0.004  # of a tile's pixels (at half resolution, after opening)
BLUR_RATIO = 0.25  # of the slide's median sharpness
MIN_TILES_FOR_BLUR = 8  # fewer: no reference to compare with, blur is not judged
QC_WARNING_FRACTION = 0.25  # of a slide's tiles on tissue failing QC: the page warns
OUT_OF_FOCUS_FRACTION = 0.5  # of a slide's tiles on tissue blurred: the slide is out of focus
FOCUS_PERCENTILE = "p02"  # of the run's training patches' sharpness (focus.json) ...
FOCUS_FACTOR = 0.5  # ... times this: below it a tile is blurred, whatever its slide

# Brightfield: glass lets the light through. Fluorescence shows a dark field.
MAX_DARK_FRACTION = 0.5  # of the thumbnail darker than DARK_LUMINANCE
DARK_LUMINANCE = 60
MIN_HE_FRACTION = 0.5  # of the tissue pixels in the pink-purple-blue hues of haematoxylin and eosin


def ink_rule(r: np.ndarray, g: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Whether colours (int arrays of R, G, B) are dense marker ink (blue, green, black, red). H&E
    absorbs green most (both stains are pink to purple), so green is the darkest channel of
    stained tissue and red stays at half its blue or more; inks break that: blue and green inks
    pass green more than red, red ink absorbs blue nearly as much as green, black ink is near
    black and grey."""
    high = np.maximum(np.maximum(r, g), b)
    chroma = high - np.minimum(np.minimum(r, g), b)
    blue = (b - r > 45) & (r < 0.28 * b) & (g > 1.1 * r)  # haematoxylin keeps red at half its blue
    green = (g - r > 15) & (r < 0.6 * g) & (g >= 0.8 * b)
    black = (high < 60) & (chroma < 0.35 * high + 5)  # grey-black; dense nuclei stay purple
    red = (r > 60) & (g < 0.18 * r) & (b < 0.35 * r)  # red blood cells keep more green and blue
    return blue | green | black | red


def ink_floor_rule(r: np.ndarray, g: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Whether the floor of a neighbourhood (the brightest level of each channel in it: what its
    lightest parts let through) is semi-transparent ink (`ink_mask`). Tissue always has light
    parts (stroma, cytoplasm, gaps between nuclei) whose colour is H&E's; under a stroke even
    those carry the dye. In optical density (`stain.maths`), as shares of its sum: blue ink has
    more than FLOOR_BLUE_RED of it in red, green ink less than FLOOR_GREEN_GREEN in green, black
    ink is grey and dense. Chosen on 750 real IDC patches (and them re-stained three ways) against
    the same patches under ink at 0.3-0.45 of its full strength: about 1e-4 of the real pixels
    pass, and 73 % (blue), 97 % (green) and 96 % (black) of the inked ones. Semi-transparent red
    ink: `red_floor_rule`."""
    density = density_table()[np.clip(np.rint(np.stack([r, g, b], axis=-1)), 0, 255).astype(np.uint8)]
    total = density.sum(axis=-1)
    share = density / np.maximum(total, 1e-6)[..., None]
    blue = (total >= 1.0) & (share[..., 0] >= FLOOR_BLUE_RED) & (share[..., 2] <= 0.3)
    green = (total >= 1.0) & (share[..., 1] <= FLOOR_GREEN_GREEN) & (share[..., 2] >= 0.2)
    black = (total >= FLOOR_BLACK_DENSITY) & (share.min(axis=-1) >= 0.28) & (share.max(axis=-1) <= 0.39)
    return blue | green | black


def red_floor_rule(r: np.ndarray, g: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Whether a neighbourhood's floor is semi-transparent red ink: dense (OD >= 1.2), at most
    10 % of it in red and at least 40 % in blue. That is also the colour of blood lakes in real
    IDC tiles (OD 1.6-2.8, 6-10 % red, 40-44 % blue), which must stay classified; they differ in
    their holes (lumina, glass) that stay white, where a stroke dyes everything under it. So this
    floor is taken over a wider neighbourhood (RED_WINDOW) and counts only where it covers
    RED_MIN_FRACTION of a tile (a stroke is wide). On 3,100 real IDC patches: 0.03 % of tiles
    flagged by it, 0.16 % re-stained, none of the 57 pinkest (haemorrhage included); 52-82 % of
    tiles with a red stroke over 30 % of them at 0.3-0.6 of full strength."""
    density = density_table()[np.clip(np.rint(np.stack([r, g, b], axis=-1)), 0, 255).astype(np.uint8)]
    total = density.sum(axis=-1)
    share = density / np.maximum(total, 1e-6)[..., None]
    return (total >= 1.2) & (share[..., 0] <= 0.10) & (share[..., 2] >= 0.40)


RED_WINDOW = 10  # px of a tile at the model's resolution: about 40 µm
RED_MIN_FRACTION = 0.1  # of a tile (at half resolution, after opening)
FLOOR_BLUE_RED = 0.45
FLOOR_GREEN_GREEN = 0.35
FLOOR_BLACK_DENSITY = 1.8
FLOOR_WINDOW = 5  # px of a tile at the model's resolution: about 20 µm, wider than a nucleus


def _table(rule) -> np.ndarray:
    """`rule` over all colours at 5 bits a channel (the centre of each bin), looked up by
    `ink_mask`: one gather per pixel instead of a dozen array passes."""
    centres = np.arange(32) * 8 + 3.5
    r, g, b = np.meshgrid(centres, centres, centres, indexing="ij")
    return rule(r, g, b).ravel()


INK_TABLE = _table(ink_rule)
INK_FLOOR_TABLE = _table(ink_floor_rule)
RED_FLOOR_TABLE = _table(red_floor_rule)
_INK_INDEX = np.array([[1024, 32, 1]], np.float32)  # (R, G, B) at 5 bits -> index into the tables


def _lookup(table: np.ndarray, rgb: np.ndarray) -> np.ndarray:
    flat = (rgb.reshape(-1, 1, 3) >> 3).astype(np.uint16)
    index = cv2.transform(flat, _INK_INDEX)  # uint16: at most 32767
    return table[index.reshape(rgb.shape[:-1])]


def ink_mask(rgb: np.ndarray, window: int = 1) -> np.ndarray:
    """Pixels of marker ink in an RGB uint8 image (..., 3): dense ink (`ink_rule`) and, for a 2-D
    image and a `window` over 1, semi-transparent ink whose neighbourhood's floor (the
    brightest level per channel in `window` x `window`) is ink (`ink_floor_rule`)."""
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    ink = _lookup(INK_TABLE, rgb)
    if window > 1 and rgb.ndim == 3:
        floor = cv2.dilate(rgb, np.ones((window, window), np.uint8))
        ink |= _lookup(INK_FLOOR_TABLE, floor)
    return ink


def measure_tiles(batch: np.ndarray) -> np.ndarray:
    """(n, 2) float32 of uint8 tiles (n, side, side, 3): the share of ink pixels, and the
    sharpness (`data.sharpness`: the mean square of the grey tile's Laplacian over its tissue
    pixels; NaN for a tile almost all glass).
    Vectorised over the batch: the whole chunk is one image for OpenCV."""
    n, side = batch.shape[0], batch.shape[1]
    out = np.zeros((n, len(MEASURES)), np.float32)
    if n == 0:
        return out
    tall = np.ascontiguousarray(batch).reshape(n * side, side, 3)
    # Ink at half resolution (strokes are wide; a quarter of the cost). A stroke is a solid
    # band; scattered dark nuclei are single pixels: opened away.
    half = tall[::2, ::2] if side % 2 == 0 else tall
    halved = side % 2 == 0
    window = max(1, FLOOR_WINDOW // 2) | 1 if halved else FLOOR_WINDOW
    red_window = max(1, RED_WINDOW // 2) | 1 if halved else RED_WINDOW | 1
    opening = np.ones((3, 3), np.uint8)
    ink = cv2.morphologyEx(ink_mask(half, window).view(np.uint8), cv2.MORPH_OPEN, opening).reshape(n, -1)
    red_floor = cv2.dilate(half, np.ones((red_window, red_window), np.uint8))
    red = cv2.morphologyEx(_lookup(RED_FLOOR_TABLE, red_floor).view(np.uint8), cv2.MORPH_OPEN, opening).reshape(n, -1)
    wide = red.mean(axis=1) >= RED_MIN_FRACTION  # red ink only as a wide stroke
    out[:, 0] = np.where(wide, (ink | red).mean(axis=1), ink.mean(axis=1))
    out[:, 1] = sharpness(batch)
    return out


def focus_threshold(focus: dict | None) -> float | None:
    """The sharpness below which a tile is blurred whatever its slide: FOCUS_FACTOR times the
    FOCUS_PERCENTILE of the run's training patches (focus.json); None without a reference."""
    value = (focus or {}).get("percentiles", {}).get(FOCUS_PERCENTILE)
    return None if value is None or not np.isfinite(value) or value <= 0 else FOCUS_FACTOR * float(value)


def tile_qc(measures: np.ndarray, read_ok: np.ndarray | None = None, focus: dict | None = None) -> np.ndarray:
    """Per tile "" (passes), "ink" or "blur" (pure). `read_ok`: tiles that were read (the
    others are neither judged nor part of the slide's reference). `focus`: the run's focus.json
    (`data.sharpness.focus_reference`); a tile below `focus_threshold` is blurred too, so a
    slide wholly out of focus is flagged."""
    measures = np.asarray(measures, np.float32)
    n = len(measures)
    read_ok = np.ones(n, bool) if read_ok is None else np.asarray(read_ok, bool)
    reasons = np.full(n, "", dtype=object)
    ink = read_ok & (measures[:, 0] >= MAX_INK_FRACTION)
    reasons[ink] = "ink"
    judged = read_ok & ~ink & np.isfinite(measures[:, 1])
    if judged.sum() >= MIN_TILES_FOR_BLUR:
        reference = float(np.median(measures[judged, 1]))
        reasons[judged & (measures[:, 1] < BLUR_RATIO * reference)] = "blur"
    absolute = focus_threshold(focus)
    if absolute is not None:
        reasons[judged & (measures[:, 1] < absolute)] = "blur"
    return reasons


def check_brightfield(thumbnail: np.ndarray, tissue: np.ndarray | None = None) -> None:
    """Raises SlideError when the thumbnail is not of an H&E brightfield slide: a dark field
    (fluorescence), or tissue (where `tissue` is True) mostly outside H&E's hues."""
    step = max(1, int(np.sqrt(thumbnail.shape[0] * thumbnail.shape[1] / 250_000)))  # a sample is enough
    thumbnail = np.ascontiguousarray(thumbnail[::step, ::step])
    tissue = None if tissue is None else tissue[::step, ::step]
    grey = cv2.cvtColor(thumbnail, cv2.COLOR_RGB2GRAY)
    dark = float((grey < DARK_LUMINANCE).mean())
    if dark > MAX_DARK_FRACTION:
        raise SlideError(f"not an H&E brightfield slide: {100 * dark:.0f} % of it is dark, as a fluorescence "
                         "image is; the model is for H&E-stained brightfield slides only")
    if tissue is None or not tissue.any():
        return
    hsv = cv2.cvtColor(thumbnail, cv2.COLOR_RGB2HSV)[tissue]
    hue, saturation = hsv[:, 0].astype(np.int16), hsv[:, 1]
    coloured = saturation >= 25
    if coloured.sum() < 50:
        return  # too pale to judge its stain
    he = (hue[coloured] >= 100) | (hue[coloured] <= 12)  # OpenCV hue 0-180: blue, purple, pink, red
    share = float(he.mean())
    if share < MIN_HE_FRACTION:
        raise SlideError(f"not an H&E brightfield slide: only {100 * share:.0f} % of its tissue has the "
                         "pink-to-purple colours of haematoxylin and eosin (another stain, IHC or "
                         "fluorescence?); the model is for H&E slides only")
