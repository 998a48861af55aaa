"""From tile probabilities to a slide map and malignant regions (pure computation, no files).

    grid = probability_map(plan, prob)               # mean probability per grid cell, NaN off tissue
    features = region_features(grid, threshold, plan.stride, slide_mpp)   # valid GeoJSON polygons (shapely)

The map's cell is the stride (level-0 px); a tile covers tile_side / stride cells a side, and a
cell covered by several tiles (overlapping strides) gets their mean.
"""
from __future__ import annotations

import json

import cv2
import numpy as np

from .tiling import TilePlan

MALIGNANT_COLOR = [200, 0, 0]  # QuPath's classification colour, RGB


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


def cell_polygons(mask: np.ndarray, cell: float) -> tuple[list, np.ndarray]:
    """The True cells of `mask` as valid polygons in level-0 pixels (cells of `cell` px): one
    Polygon, with its holes, per group of cells that share edges (cells that meet only at a
    corner are separate polygons: one ring through a corner twice is invalid by OGC rules).
    Returns (polygons, labels): labels[r, c] is 1 + the index of the cell's polygon, 0 off."""
    import shapely
    count, labels = cv2.connectedComponents(mask.astype(np.uint8), connectivity=4)
    if count <= 1:
        return [], labels
    # Each row's runs of cells are boxes; a group's polygon is the union of its boxes.
    padded = np.pad(mask.astype(np.int8), ((0, 0), (1, 1)))
    edges = np.diff(padded, axis=1)
    rows, starts = np.nonzero(edges == 1)
    _, stops = np.nonzero(edges == -1)
    boxes = shapely.box(starts * cell, rows * cell, stops * cell, (rows + 1) * cell)
    group = labels[rows, starts]
    order = np.argsort(group, kind="stable")
    bounds = np.searchsorted(group[order], np.arange(1, count + 1))  # label k's boxes: bounds[k-1]:bounds[k]
    polygons = [union_polygons(boxes[order[a:b]])[0] for a, b in zip(bounds[:-1], bounds[1:])]
    return polygons, labels


def union_polygons(geometries) -> list:
    """The union of shapely geometries as a list of valid Polygons (largest first), with no
    vertex in the middle of a straight edge."""
    import shapely
    union = shapely.union_all(geometries)
    union = shapely.make_valid(union).simplify(0)
    parts = [g for g in getattr(union, "geoms", [union]) if g.geom_type == "Polygon" and not g.is_empty]
    return sorted(parts, key=lambda g: -g.area)


def polygon_geometry(geometry) -> dict:
    """A shapely Polygon or MultiPolygon as a GeoJSON geometry: outer rings counter-clockwise
    and holes clockwise (RFC 7946), each ring closed."""
    import shapely
    from shapely.geometry.polygon import orient
    if geometry.geom_type == "MultiPolygon":
        geometry = shapely.MultiPolygon([orient(g) for g in geometry.geoms])
    else:
        geometry = orient(geometry)
    return json.loads(shapely.to_geojson(geometry))


def annotation_feature(geometry, classification: str, color: list[int], properties: dict | None = None) -> dict:
    """A GeoJSON Feature as QuPath imports it: an annotation with its classification."""
    return {"type": "Feature", "geometry": polygon_geometry(geometry),
            "properties": {"objectType": "annotation", "name": classification,
                           "classification": {"name": classification, "color": color},
                           "isLocked": False, **(properties or {})}}


def region_features(grid: np.ndarray, threshold: float, cell: int, slide_mpp: float) -> list[dict]:
    """One GeoJSON Feature per malignant region (edge-connected cells with mean probability at
    or above `threshold`): a valid Polygon in level-0 pixels with its holes, classified
    "Malignant" for QuPath, with its area in mm² and its mean probability. Largest region first."""
    malignant = np.nan_to_num(grid, nan=-1.0) >= threshold
    polygons, labels = cell_polygons(malignant, cell)
    if not polygons:
        return []
    cell_area_mm2 = (cell * slide_mpp / 1000.0) ** 2
    cells = np.bincount(labels.ravel(), minlength=len(polygons) + 1)[1:]
    sums = np.bincount(labels.ravel(), weights=np.nan_to_num(grid, nan=0.0).ravel().astype(np.float64),
                       minlength=len(polygons) + 1)[1:]
    features = []
    for polygon, num_cells, total in zip(polygons, cells, sums):
        area, mean_prob = round(float(num_cells * cell_area_mm2), 6), round(float(total / num_cells), 6)
        features.append(annotation_feature(polygon, "Malignant", MALIGNANT_COLOR, {
            "area_mm2": area, "mean_prob_malignant": mean_prob,
            "measurements": {"Area mm^2": area, "Mean prob_malignant": mean_prob}}))
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
