"""From tile probabilities to a slide map and malignant regions (pure computation, no files).

    grid = probability_map(plan, prob)               # mean probability per grid cell, NaN off tissue
    features = region_features(grid, threshold, plan.stride, slide_mpp)   # GeoJSON polygons with holes

The map's cell is the stride (level-0 px); a tile covers tile_side / stride cells a side, and a
cell covered by several tiles (overlapping strides) gets their mean.
"""
from __future__ import annotations

import cv2
import numpy as np

from .tiling import TilePlan

MALIGNANT_COLOR = [200, 0, 0]  # QuPath's classification colour, RGB
UPSCALE = 2  # mask pixels per map cell while tracing outlines (see `ring`)


def probability_map(plan: TilePlan, prob: np.ndarray) -> np.ndarray:
    """float32 (rows, columns) over the slide in cells of `plan.stride` level-0 px: the mean
    probability of the tiles covering each cell, NaN where no tile (or only failed ones) lies."""
    prob = np.asarray(prob, dtype=np.float64)
    span = max(1, round(plan.tile_side / plan.stride))
    rows = plan.grid_shape[0] - 1 + span
    columns = plan.grid_shape[1] - 1 + span
    total = np.zeros((rows, columns))
    count = np.zeros((rows, columns))
    ok = np.isfinite(prob)
    r0, c0 = plan.ys[ok] // plan.stride, plan.xs[ok] // plan.stride
    for dr in range(span):
        for dc in range(span):
            np.add.at(total, (r0 + dr, c0 + dc), prob[ok])
            np.add.at(count, (r0 + dr, c0 + dc), 1)
    with np.errstate(invalid="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan).astype(np.float32)


def region_features(grid: np.ndarray, threshold: float, cell: int, slide_mpp: float) -> list[dict]:
    """One GeoJSON Feature per connected malignant region (cells with mean probability at or above
    `threshold`): a Polygon in level-0 pixels with its holes, classified "Malignant" for QuPath,
    with its area in mm² and its mean probability. Largest region first."""
    malignant = np.nan_to_num(grid, nan=-1.0) >= threshold
    if not malignant.any():
        return []
    _, labels = cv2.connectedComponents(malignant.astype(np.uint8), connectivity=8)
    big = np.kron(malignant.astype(np.uint8), np.ones((UPSCALE, UPSCALE), np.uint8))
    big = np.pad(big, 1)
    contours, hierarchy = cv2.findContours(big, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    hierarchy = hierarchy[0] if hierarchy is not None else np.zeros((0, 4), int)
    cell_area_mm2 = (cell * slide_mpp / 1000.0) ** 2

    def ring(contour) -> list[list[float]]:
        # OpenCV traces the centres of boundary pixels. With each cell drawn as 2 x 2 pixels, a
        # boundary pixel's centre lies next to exactly one cell corner: pixel p (after undoing
        # the padding) maps to corner ceil(p / 2), for outer rings and holes alike.
        points = np.ceil((contour[:, 0, :].astype(np.float64) - 1) / UPSCALE) * cell
        corners: list[list[float]] = []
        for x, y in points.tolist():
            if not corners or corners[-1] != [x, y]:
                corners.append([x, y])
        if len(corners) > 1 and corners[-1] == corners[0]:
            corners.pop()
        return corners + corners[:1]

    features = []
    for i, (_, _, first_child, parent) in enumerate(hierarchy):
        if parent != -1:
            continue
        x, y = contours[i][0, 0] - 1
        label = labels[y // UPSCALE, x // UPSCALE]
        cells = labels == label
        outer = ring(contours[i])
        if len(outer) < 4:  # a closed ring needs three corners and the first again
            continue
        holes, child = [], first_child
        while child != -1:
            hole = ring(contours[child])
            if len(hole) >= 4:
                holes.append(hole)
            child = hierarchy[child][0]
        rings = [outer, *holes]
        area = float(cells.sum() * cell_area_mm2)
        mean_prob = float(grid[cells].mean())
        features.append({
            "type": "Feature",
            "geometry": {"type": "Polygon", "coordinates": rings},
            "properties": {
                "objectType": "annotation",
                "name": "Malignant",
                "classification": {"name": "Malignant", "color": MALIGNANT_COLOR},
                "isLocked": False,
                "area_mm2": round(area, 6),
                "mean_prob_malignant": round(mean_prob, 6),
                "measurements": {"Area mm^2": round(area, 6), "Mean prob_malignant": round(mean_prob, 6)},
            },
        })
    features.sort(key=lambda f: -f["properties"]["area_mm2"])
    return features


def feature_collection(features: list[dict]) -> dict:
    return {"type": "FeatureCollection", "features": features}


def areas_mm2(grid: np.ndarray, threshold: float, cell: int, slide_mpp: float) -> tuple[float, float]:
    """(tissue area, malignant area) in mm²: cells with a probability, and those at or above the
    threshold."""
    cell_area = (cell * slide_mpp / 1000.0) ** 2
    finite = np.isfinite(grid)
    return float(finite.sum() * cell_area), float((np.nan_to_num(grid, nan=-1.0) >= threshold).sum() * cell_area)


def malignant_mask(grid: np.ndarray, threshold: float, cell: int, dimensions: tuple[int, int],
                   scale: int = 1) -> np.ndarray:
    """The predicted malignant region as a bool mask of the slide at 1/`scale` of level 0."""
    width, height = dimensions
    malignant = (np.nan_to_num(grid, nan=-1.0) >= threshold).astype(np.uint8)
    full = cv2.resize(malignant, (round(grid.shape[1] * cell / scale), round(grid.shape[0] * cell / scale)),
                      interpolation=cv2.INTER_NEAREST)
    out = np.zeros((height // scale, width // scale), dtype=bool)
    h, w = min(out.shape[0], full.shape[0]), min(out.shape[1], full.shape[1])
    out[:h, :w] = full[:h, :w].astype(bool)
    return out
