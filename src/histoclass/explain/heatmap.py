"""Slide-level maps from patch coordinates: a value per patch on the patch grid, the tissue mosaic,
and the outline of a labelled region. Pure numpy (and OpenCV for resizing); drawing is
`histoclass.plots.plot_slide_heatmap`.

Coordinates are the patches' top-left pixel positions on the slide (the x/y in IDC file names),
with any origin. The grid starts at the smallest x and y; cell (row, col) covers slide pixels
[x_min + col * step, x_min + (col + 1) * step) and the same for y, so a map and a mosaic built from
the same coordinates line up.
"""

import logging
from collections.abc import Callable

import cv2
import numpy as np

from histoclass.errors import HistoclassError

logger = logging.getLogger(__name__)

# A mosaic larger than this is almost always a mistake (coordinates in the wrong unit, two
# slides mixed) and would exhaust memory: 200 megapixels is 600 MB of RGB.
MAX_MOSAIC_PIXELS = 200_000_000


def _check_pixels(name: str, value) -> None:
    if not isinstance(value, (int, np.integer)) or value < 1:
        raise HistoclassError(f"{name} must be a positive whole number of pixels, got {value!r}")


def _check_coordinates(xs, ys) -> tuple[np.ndarray, np.ndarray]:
    xs = np.asarray(xs)
    ys = np.asarray(ys)
    if xs.ndim != 1 or xs.shape != ys.shape:
        raise HistoclassError(
            f"xs and ys must be 1-D and of equal length, got shapes {xs.shape} and {ys.shape}"
        )
    if len(xs) == 0:
        raise HistoclassError("got no patch coordinates; pass at least one patch")
    if not (np.all(np.isfinite(xs)) and np.all(np.isfinite(ys))):
        raise HistoclassError("patch coordinates must be finite numbers; check the xs and ys")
    return xs, ys


def assemble_slide(xs, ys, values, patch_size: int, step: int | None = None) -> np.ndarray:
    """A 2-D float map with one cell per patch (row = y, column = x), NaN where there is no patch.

    `step` is the spacing of the patch grid in slide pixels, `patch_size` by default (patches
    that tile the slide, as in IDC). Patches whose top-left corners fall in the same cell, e.g.
    overlapping patches with `step` left at its default, are averaged.
    """
    xs, ys = _check_coordinates(xs, ys)
    step = patch_size if step is None else step
    _check_pixels("patch_size", patch_size)
    _check_pixels("step", step)
    columns = ((xs - xs.min()) // step).astype(np.int64)
    rows = ((ys - ys.min()) // step).astype(np.int64)
    values = np.asarray(values, dtype=np.float64)
    if values.shape != rows.shape:
        raise HistoclassError(
            f"got {len(rows)} patch coordinates but values of shape {values.shape}; "
            "pass one value per patch"
        )
    shape = (int(rows.max()) + 1, int(columns.max()) + 1)
    cell = np.ravel_multi_index((rows, columns), shape)
    counts = np.bincount(cell, minlength=shape[0] * shape[1])
    sums = np.bincount(cell, weights=values, minlength=shape[0] * shape[1])
    with np.errstate(invalid="ignore", divide="ignore"):
        slide_map = np.where(counts > 0, sums / counts, np.nan)
    if counts.max() > 1:
        logger.debug("%d cells hold more than one patch; their values were averaged",
                     int(np.sum(counts > 1)))
    return slide_map.reshape(shape)


def _read_patch(patches, index: int) -> np.ndarray:
    patch = np.asarray(patches(index) if callable(patches) else patches[index])
    if patch.ndim == 2:
        patch = np.repeat(patch[:, :, None], 3, axis=2)
    if patch.ndim != 3 or patch.shape[2] != 3:
        raise HistoclassError(
            f"patch {index} has shape {patch.shape}; expected an RGB image of shape (h, w, 3)"
        )
    if patch.dtype != np.uint8:
        raise HistoclassError(f"patch {index} has dtype {patch.dtype}; expected uint8 RGB")
    return patch


def assemble_mosaic(
    xs,
    ys,
    patches: np.ndarray | Callable[[int], np.ndarray],
    patch_size: int,
    scale: float = 1.0,
    indices=None,
) -> np.ndarray:
    """The slide's tissue as one uint8 RGB image on a white background, `scale` times its size.

    `patches` is an (M, h, w, 3) uint8 array (a np.memmap works: only the patches used are read)
    or a function giving patch `i` as an (h, w, 3) uint8 array. Patch k is `patches[indices[k]]`
    placed at (xs[k], ys[k]); `indices` defaults to 0..len(xs)-1, so a memory map of a whole data
    set can be shown one slide at a time. Patches smaller than `patch_size` (slide edges) keep
    their size; where patches overlap, later ones are drawn on top.
    """
    xs, ys = _check_coordinates(xs, ys)
    _check_pixels("patch_size", patch_size)
    if not np.isfinite(scale) or scale <= 0:
        raise HistoclassError(f"scale must be a positive number, got {scale!r}; e.g. 0.25")
    indices = np.arange(len(xs)) if indices is None else np.asarray(indices)
    if indices.shape != xs.shape:
        raise HistoclassError(
            f"got {len(xs)} patch coordinates but indices of shape {indices.shape}; "
            "pass one patch index per coordinate"
        )
    left = xs - xs.min()
    top = ys - ys.min()
    width = round((left.max() + patch_size) * scale)
    height = round((top.max() + patch_size) * scale)
    if width * height > MAX_MOSAIC_PIXELS:
        raise HistoclassError(
            f"the mosaic would be {width} x {height} pixels at scale {scale}; pass a smaller "
            "scale, or check that the coordinates are in pixels and come from one slide"
        )
    mosaic = np.full((height, width, 3), 255, dtype=np.uint8)
    for k in range(len(xs)):
        patch = _read_patch(patches, int(indices[k]))
        # Both edges are rounded from slide pixels, so neighbouring patches meet without gaps.
        x0, y0 = round(left[k] * scale), round(top[k] * scale)
        x1 = min(round((left[k] + patch.shape[1]) * scale), width)
        y1 = min(round((top[k] + patch.shape[0]) * scale), height)
        if x1 <= x0 or y1 <= y0:
            continue
        if (y1 - y0, x1 - x0) != patch.shape[:2]:
            shrinking = (x1 - x0) < patch.shape[1]
            patch = cv2.resize(patch, (x1 - x0, y1 - y0),
                               interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_NEAREST)
        mosaic[y0:y1, x0:x1] = patch
    return mosaic


def region_outline(label_grid: np.ndarray, level: float = 0.5) -> np.ndarray:
    """Line segments around the cells of `label_grid` that are >= `level` (NaN counts as outside).

    With a grid of 0/1 labels from `assemble_slide`, this outlines the true malignant (class 1)
    region. Returns an (K, 2, 2) array of segments ((x0, y0), (x1, y1)) in cell units, where cell
    (row, col) spans x in [col, col + 1] and y in [row, row + 1]: ready for a matplotlib
    LineCollection once scaled to pixels.
    """
    grid = np.asarray(label_grid, dtype=np.float64)
    if grid.ndim != 2:
        raise HistoclassError(f"label_grid must be a 2-D map, got shape {grid.shape}")
    with np.errstate(invalid="ignore"):
        inside = np.pad(np.nan_to_num(grid, nan=-np.inf) >= level, 1)
    # An edge lies between two neighbouring cells where one is inside and the other is not.
    horizontal = np.argwhere(inside[1:, 1:-1] != inside[:-1, 1:-1])  # (row of edge line, col)
    vertical = np.argwhere(inside[1:-1, 1:] != inside[1:-1, :-1])  # (row, col of edge line)
    segments = np.empty((len(horizontal) + len(vertical), 2, 2))
    h_rows, h_columns = horizontal[:, 0], horizontal[:, 1]
    segments[: len(horizontal)] = np.stack(
        [np.stack([h_columns, h_rows], -1), np.stack([h_columns + 1, h_rows], -1)], 1)
    v_rows, v_columns = vertical[:, 0], vertical[:, 1]
    segments[len(horizontal):] = np.stack(
        [np.stack([v_columns, v_rows], -1), np.stack([v_columns, v_rows + 1], -1)], 1)
    return segments
