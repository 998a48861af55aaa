"""The neighbourhood of a tile (pure): its probability smoothed with its neighbours' over the grid
of a slide or of a patient's patches, and the threshold for the smoothed probabilities.

    smoothed = smooth_grid(grid, sigma=1.0)                      # NaN cells are missing, not zero
    smoothed = smooth_tiles(columns, rows, prob, sigma=1.0)      # the same, per tile
    fitted = fit_neighbourhood(labels, prob, groups, xs, ys, tile_threshold)   # calibration.json

A tile of 50 px at 4 µm/px sees 200 µm, little of the tissue's architecture; tumour comes in
regions, so a tile whose neighbours are malignant is more likely malignant. The smoothing is a
Gaussian of `sigma` tiles by normalised convolution: the weighted mean of the tile and its
classified neighbours only (glass, unclassified and missing tiles carry no weight, so a border
tile is not pulled towards zero). Smoothing shrinks the probabilities towards their local mean,
so the tile threshold no longer fits: the smoothed ones get their own, chosen on the
validation patients' patches, which lie on their slide's grid (IDC names carry x and y), as
the one of maximum F1 there (on a slide's tiles F1 is Dice).
"""
from __future__ import annotations

import math

import numpy as np

from .metrics import has_both_classes
from .threshold import choose_threshold

DEFAULT_SIGMA = 1.0  # tiles
# The smoothed probabilities' threshold: maximum F1 (Dice) on the validation patients' grids.
# Against Youden's, on all held-out patients of the 153-patient CV (5 recipes, 2 folds, 3
# seeds) it raised balanced accuracy (+0.001 to +0.035) and F1 (+0.010 to +0.049) in every row
# (docs/recipe.md, "The threshold"; benchmarks/threshold_rules.py).
NEIGHBOURHOOD_THRESHOLD = "f1"
TRUNCATE = 3.0  # sigmas: the kernel's half-width


def smooth_grid(grid: np.ndarray, sigma: float = DEFAULT_SIGMA) -> np.ndarray:
    """`grid` (rows, columns) of probabilities, NaN where there is no tile, smoothed by a
    Gaussian of `sigma` cells over the cells that have one; NaN cells stay NaN."""
    from scipy.ndimage import gaussian_filter
    grid = np.asarray(grid, np.float64)
    present = np.isfinite(grid)
    if sigma <= 0 or not present.any():
        return grid.copy()
    weight = gaussian_filter(present.astype(np.float64), sigma, mode="constant", truncate=TRUNCATE)
    total = gaussian_filter(np.where(present, grid, 0.0), sigma, mode="constant", truncate=TRUNCATE)
    out = np.full(grid.shape, np.nan)
    out[present] = total[present] / weight[present]  # a present cell weighs itself: never 0
    return out


def smooth_tiles(columns, rows, prob, sigma: float = DEFAULT_SIGMA) -> np.ndarray:
    """Per tile at grid cell (columns[i], rows[i]) (whole numbers from 0) its probability
    smoothed over the tiles present (NaN: not present, stays NaN). Tiles sharing a cell are
    averaged there."""
    columns, rows = np.asarray(columns, np.int64), np.asarray(rows, np.int64)
    prob = np.asarray(prob, np.float64)
    if not len(prob):
        return prob.copy()
    ok = np.isfinite(prob)
    shape = (int(rows.max()) + 1, int(columns.max()) + 1)
    total, count = np.zeros(shape), np.zeros(shape)
    np.add.at(total, (rows[ok], columns[ok]), prob[ok])
    np.add.at(count, (rows[ok], columns[ok]), 1)
    with np.errstate(invalid="ignore"):
        grid = np.where(count > 0, total / count, np.nan)
    out = smooth_grid(grid, sigma)[rows, columns]
    out[~ok] = np.nan
    return out


def grid_cells(xs, ys) -> tuple[np.ndarray, np.ndarray]:
    """Grid columns and rows of patches at pixel corners (xs, ys) of one slide: the cell is the
    greatest common divisor of the corners' offsets (50 for IDC's patches), so patches side by
    side are neighbouring cells."""
    xs, ys = np.asarray(xs, np.int64), np.asarray(ys, np.int64)
    offsets = np.concatenate([xs - xs.min(), ys - ys.min()])
    cell = int(np.gcd.reduce(offsets)) if offsets.any() else 1
    return (xs - xs.min()) // cell, (ys - ys.min()) // cell


def smooth_patients(prob, groups, xs, ys, sigma: float = DEFAULT_SIGMA) -> tuple[np.ndarray, int]:
    """Each patch's probability smoothed over its patient's patches (those with x and y; the
    others keep their own), and the number of patients whose patches have coordinates."""
    prob = np.asarray(prob, np.float64)
    groups = np.asarray(groups, dtype=object)
    out = prob.copy()
    with_grid = 0
    placed = np.array([x is not None and y is not None for x, y in zip(xs, ys)], dtype=bool)
    for group in dict.fromkeys(groups.tolist()):
        mine = np.flatnonzero((groups == group) & placed)
        if len(mine) < 2:
            continue
        columns, rows = grid_cells([xs[i] for i in mine], [ys[i] for i in mine])
        out[mine] = smooth_tiles(columns, rows, prob[mine], sigma)
        with_grid += 1
    return out, with_grid


def dice(labels, prob, threshold: float) -> float | None:
    labels, predicted = np.asarray(labels) == 1, np.asarray(prob) >= threshold
    tp = int((labels & predicted).sum())
    denominator = 2 * tp + int((predicted & ~labels).sum()) + int((labels & ~predicted).sum())
    return round(2 * tp / denominator, 6) if denominator else None


def fit_neighbourhood(labels, prob, groups, xs, ys, tile_threshold: float,
                      sigma: float = DEFAULT_SIGMA, method: str = NEIGHBOURHOOD_THRESHOLD) -> dict | None:
    """calibration.json's `neighbourhood` from the validation patches' calibrated probabilities
    (pure): `sigma` and the threshold of the smoothed probabilities (by `method`: the one of
    maximum F1, which on the tiles of a slide is Dice), with the validation Dice of the tiles
    alone (at `tile_threshold`) and smoothed. None where no validation patient has a grid of
    patches or validation lacks a class."""
    labels = np.asarray(labels)
    smoothed, with_grid = smooth_patients(prob, groups, xs, ys, sigma)
    if not with_grid or not has_both_classes(labels):
        return None
    threshold = float(choose_threshold(labels, smoothed, method)["threshold"])
    if not math.isfinite(threshold):
        return None
    return {"sigma": float(sigma), "threshold": threshold, "threshold_method": method, "fitted_on": "val",
            "num_patients_with_grid": with_grid, "num_val": int(len(labels)),
            "val_dice_tiles": dice(labels, prob, tile_threshold), "val_dice_smoothed": dice(labels, smoothed, threshold)}
