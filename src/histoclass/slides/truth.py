"""Scoring a slide's tiles against a pathologist's annotation (`histoclass slide --truth`).

    option = truth_option("annotations/", truth_class=None, slides=paths)  # checks what it can up front
    truth = option.for_slide(slide_path)        # the tumour geometry of that slide; raises TruthError
    numbers = truth_scores(plan, prob, threshold, truth)                  # dice, iou, tp, fp, ...

The annotation is GeoJSON as QuPath exports it (File > Export objects: a FeatureCollection, a
list of Features, one Feature or a bare geometry), in level-0 pixels of the slide: a file for
one slide, or a folder of `<slide file stem>.geojson`. The tumour is the union of the polygons
classified as tumour (`Tumor`, `Malignant`, ... or the class named by `--truth-class`); when no
feature is classified at all, every polygon is tumour. A tile is truly malignant when at least
half of it lies inside the tumour. `dice`, `sensitivity`, ... count the classified tiles only;
`coverage` (the share of the tumour's area under classified tiles), `dice_all` and
`sensitivity_all` (unclassified tumour tiles, on tissue or not, counted as missed) say what QC
and the tissue mask set aside.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import HistoclassError
from ..fileio import printable
from .tiling import TilePlan

log = logging.getLogger(__name__)

TUMOR_CLASSES = frozenset({"tumor", "tumour", "malignant", "carcinoma", "cancer", "idc", "invasive carcinoma",
                           "invasive ductal carcinoma", "invasive tumor", "invasive tumour", "metastasis",
                           "metastases", "malignancy"})
INSIDE_SHARE = 0.5  # of a tile inside the tumour for the tile to be truly malignant
MAX_TRUTH_BYTES = 256 * 2**20
ANNOTATION_SUFFIXES = (".geojson", ".json")


class TruthError(HistoclassError):
    """An annotation that cannot be used for one slide; the message says why."""


@dataclass(frozen=True, eq=False)
class Truth:
    """One slide's true tumour, in level-0 pixels."""

    source: str
    tumor: object = field(repr=False)  # shapely Polygon/MultiPolygon, empty when no tumour
    classes: tuple[str, ...]  # the classifications counted as tumour
    num_features: int  # features counted as tumour
    note: str | None = None  # what the user should know (other classes found, parts skipped)


@dataclass(frozen=True)
class TruthOption:
    """What `--truth PATH [--truth-class NAME]` gives."""

    path: Path
    truth_class: str | None = None

    def file_for(self, slide_path: str | os.PathLike) -> Path:
        if not self.path.is_dir():
            return self.path
        name = Path(slide_path).name
        stem = Path(slide_path).stem
        for base in (stem, name):  # case.geojson, or case.svs.geojson
            for suffix in ANNOTATION_SUFFIXES:
                candidate = self.path / f"{base}{suffix}"
                if candidate.is_file():
                    return candidate
        raise TruthError(f"no annotation {stem}.geojson in the --truth folder {printable(self.path)}")

    def for_slide(self, slide_path: str | os.PathLike) -> Truth:
        return read_truth(self.file_for(slide_path), self.truth_class)


def truth_option(path: str | os.PathLike | None, truth_class: str | None = None,
                 slides: list[Path] | None = None) -> TruthOption | None:
    """Checks `--truth` before any slide is read: the path exists, a file is used for one slide
    only, and a file is readable (so a bad single annotation stops the job at once)."""
    if path is None:
        if truth_class is not None:
            raise HistoclassError("--truth-class names the tumour class of a --truth annotation; give --truth too")
        return None
    option = TruthOption(Path(path).expanduser(), truth_class.strip() if truth_class else None)
    if truth_class is not None and not option.truth_class:
        raise HistoclassError("--truth-class must name a class, e.g. --truth-class Tumor")
    if not option.path.exists():
        raise HistoclassError(f"--truth {printable(path)} does not exist; give a GeoJSON file (one slide) or a "
                              "folder of <slide file stem>.geojson")
    if not option.path.is_dir():
        if slides is not None and len(slides) > 1:
            raise HistoclassError(f"--truth {printable(path)} is one file but {len(slides)} slides were given; give "
                                  "a folder of <slide file stem>.geojson, one per slide")
        option.for_slide(option.path)  # raises TruthError (a HistoclassError) when it cannot be used
    return option


def read_truth(path: Path, truth_class: str | None = None) -> Truth:
    """The tumour of a GeoJSON annotation file; raises TruthError saying what is wrong with it."""
    features = _features(_load(path), path)
    wanted = {truth_class.lower()} if truth_class else TUMOR_CLASSES
    named = [(_class_name(f.get("properties")), f) for f in features]
    classified = any(name for name, _ in named)
    chosen = [(name, f) for name, f in named if (name or "").lower() in wanted] if classified else named
    note_parts = []
    if classified and not chosen:
        others = sorted({name for name, _ in named if name})
        note_parts.append(f"no feature classified {truth_class or 'Tumor/Malignant'} "
                          f"(classes found: {', '.join(others[:8])}); the tumour is taken as empty"
                          + ("" if truth_class else ", or name the class with --truth-class"))
    polygons, skipped = [], 0
    for i, (_, feature) in enumerate(chosen):
        found = _polygons(feature.get("geometry"), path, i)
        skipped += not found
        polygons.extend(found)
    if skipped:
        note_parts.append(f"{skipped} feature(s) without an area (points or lines) left out")
    import shapely
    tumor = shapely.union_all(polygons) if polygons else shapely.Polygon()
    classes = tuple(sorted({name for name, _ in chosen if name}))
    return Truth(str(path), tumor, classes, len(chosen) - skipped, "; ".join(note_parts) or None)


def tiles_inside(plan: TilePlan, truth: Truth) -> np.ndarray:
    """Share of each tile of `plan` inside the tumour (0 to 1)."""
    import shapely
    x0, y0 = plan.xs.astype(np.float64), plan.ys.astype(np.float64)
    share = np.zeros(plan.num_tiles)
    if truth.tumor.is_empty or not plan.num_tiles:
        return share
    boxes = shapely.box(x0, y0, x0 + plan.tile_side, y0 + plan.tile_side)
    shapely.prepare(truth.tumor)
    touching = shapely.intersects(truth.tumor, boxes)
    inside = shapely.contains(truth.tumor, boxes)
    share[inside] = 1.0
    partial = touching & ~inside
    share[partial] = shapely.area(shapely.intersection(boxes[partial], truth.tumor)) / float(plan.tile_side) ** 2
    return share


def truth_scores(plan: TilePlan, prob: np.ndarray, threshold: float, truth: Truth) -> dict:
    """summary.json's `truth`: the classified tiles (a probability) against the annotation.
    Raises TruthError for an annotation that lies outside the slide."""
    x0, y0, x1, y1 = truth.tumor.bounds if not truth.tumor.is_empty else (0, 0, 0, 0)
    width, height = plan.dimensions
    if not truth.tumor.is_empty and (x0 >= width or y0 >= height or x1 <= 0 or y1 <= 0):
        raise TruthError(f"the annotation {printable(truth.source)} lies outside the slide ({width} x {height} px; "
                         f"its box is {x0:.0f},{y0:.0f} to {x1:.0f},{y1:.0f}): another slide's, or not in "
                         "level-0 pixels")
    prob = np.asarray(prob, dtype=np.float64)
    scored = np.isfinite(prob)
    actual = tiles_inside(plan, truth)[scored] >= INSIDE_SHARE
    predicted = prob[scored] >= threshold
    tp, fp = int((predicted & actual).sum()), int((predicted & ~actual).sum())
    fn, tn = int((~predicted & actual).sum()), int((~predicted & ~actual).sum())

    def ratio(a: int, b: int) -> float | None:
        return round(a / b, 6) if b else None

    missed = missed_tumour(plan, scored, truth)
    fn_all = fn + missed["tumour_tiles_unclassified"] + missed["tumour_tiles_off_tissue"]
    scores = {"source": truth.source, "classes": list(truth.classes), "features": truth.num_features,
              "annotated_area_mm2": round(truth.tumor.area * (plan.slide_mpp / 1000.0) ** 2, 6),
              "tiles_scored": int(scored.sum()), "tp": tp, "fp": fp, "fn": fn, "tn": tn,
              "dice": ratio(2 * tp, 2 * tp + fp + fn), "iou": ratio(tp, tp + fp + fn),
              "sensitivity": ratio(tp, tp + fn), "specificity": ratio(tn, tn + fp),
              **missed, "dice_all": ratio(2 * tp, 2 * tp + fp + fn_all),
              "sensitivity_all": ratio(tp, tp + fn_all)}
    if truth.note:
        scores["note"] = truth.note
    return scores


def missed_tumour(plan: TilePlan, classified: np.ndarray, truth: Truth) -> dict:
    """What the classified tiles leave out of the tumour (pure): `coverage`, the share of the
    annotated tumour's area that classified tiles cover (None without tumour); the truly
    malignant tiles of the slide's whole grid (at least INSIDE_SHARE inside), and of those the
    ones on tissue left unclassified (QC, unreadable) and the ones the tissue mask left out."""
    import shapely
    classified = np.asarray(classified, bool)
    inside = tiles_inside(plan, truth)
    tumour_planned = inside >= INSIDE_SHARE
    off_tissue = 0
    coverage = None
    if not truth.tumor.is_empty:
        boxes = shapely.box(plan.xs[classified], plan.ys[classified], plan.xs[classified] + plan.tile_side,
                            plan.ys[classified] + plan.tile_side)
        covered = shapely.union_all(boxes[shapely.intersects(truth.tumor, boxes)])
        coverage = round(float(shapely.intersection(covered, truth.tumor).area / truth.tumor.area), 6)
        x0, y0, x1, y1 = truth.tumor.bounds
        rows, columns = plan.grid_shape
        first_x, first_y = max(0, int(x0 - plan.tile_side) // plan.stride), max(0, int(y0 - plan.tile_side) // plan.stride)
        grid_y, grid_x = np.mgrid[first_y:min(rows, int(y1) // plan.stride + 1),
                                  first_x:min(columns, int(x1) // plan.stride + 1)]
        xs, ys = grid_x.ravel() * plan.stride, grid_y.ravel() * plan.stride
        planned = set(zip(plan.xs.tolist(), plan.ys.tolist()))
        others = np.array([(x, y) not in planned for x, y in zip(xs.tolist(), ys.tolist())], bool)
        if others.any():
            grid = TilePlan(plan.slide_path, plan.slide_mpp, plan.model_mpp, plan.image_size, plan.level,
                            plan.level_downsample, plan.read_side, plan.tile_side, plan.stride, plan.dimensions,
                            plan.grid_shape, xs[others], ys[others], np.zeros(int(others.sum())),
                            plan.thumbnail, plan.tissue)
            off_tissue = int((tiles_inside(grid, truth) >= INSIDE_SHARE).sum())
    unclassified = int((tumour_planned & ~classified).sum())
    total = int(tumour_planned.sum()) + off_tissue
    return {"coverage": coverage, "tumour_tiles": total, "tumour_tiles_classified": total - unclassified - off_tissue,
            "tumour_tiles_unclassified": unclassified, "tumour_tiles_off_tissue": off_tissue}


def outline_rings(truth: Truth) -> list[np.ndarray]:
    """(n, 2) level-0 coordinates of every ring of the tumour, for drawing its outline."""
    if truth.tumor.is_empty:
        return []
    parts = getattr(truth.tumor, "geoms", [truth.tumor])
    return [np.asarray(ring.coords) for part in parts for ring in (part.exterior, *part.interiors)]


# ---- reading GeoJSON ---------------------------------------------------------------------------

def _load(path: Path):
    try:
        size = path.stat().st_size
        if size > MAX_TRUTH_BYTES:
            raise TruthError(f"the annotation {printable(path)} is {size:,} bytes, more than an annotation "
                             f"should be ({MAX_TRUTH_BYTES:,}); is it the right file?")
        with open(path, encoding="utf-8-sig") as handle:
            return json.load(handle)
    except UnicodeDecodeError:
        raise TruthError(f"the annotation {printable(path)} is not UTF-8 text; give a GeoJSON file "
                         "(QuPath: File > Export objects as GeoJSON)") from None
    except json.JSONDecodeError as err:
        raise TruthError(f"the annotation {printable(path)} is not valid JSON ({err.msg} at line {err.lineno}, "
                         f"column {err.colno})") from None
    except OSError as err:
        raise TruthError(f"the annotation {printable(path)} cannot be read ({err.strerror or err})") from None


def _features(obj, path: Path) -> list[dict]:
    if isinstance(obj, dict) and obj.get("type") == "FeatureCollection":
        obj = obj.get("features")
    elif isinstance(obj, dict) and obj.get("type") == "Feature":
        obj = [obj]
    elif isinstance(obj, dict) and "coordinates" in obj:
        obj = [{"type": "Feature", "geometry": obj, "properties": {}}]
    if not isinstance(obj, list) or not all(isinstance(f, dict) for f in obj):
        raise TruthError(f"the annotation {printable(path)} is JSON but not GeoJSON (expected a FeatureCollection, "
                         "a list of Features, a Feature or a geometry)")
    return obj


def _class_name(properties) -> str | None:
    if not isinstance(properties, dict):
        return None
    classification = properties.get("classification")
    if isinstance(classification, str):
        return classification.strip() or None
    if isinstance(classification, dict):
        name = classification.get("name")
        if name is None and isinstance(classification.get("names"), list) and classification["names"]:
            name = ": ".join(str(n) for n in classification["names"])
        if name is not None:
            return str(name).strip() or None
    return None


def _polygons(geometry, path: Path, index: int) -> list:
    """The polygonal parts of a feature's geometry, made valid (hand-drawn outlines often cross
    themselves); [] for points and lines."""
    import shapely
    from shapely.geometry import shape
    if geometry is None:
        return []
    try:
        geom = shape(geometry)
        if not geom.is_valid:
            geom = shapely.make_valid(geom)
    except Exception as err:
        raise TruthError(f"the annotation {printable(path)}: feature {index + 1}'s geometry cannot be read "
                         f"({type(err).__name__}: {printable(err)})") from None
    if geom.geom_type in ("Polygon", "MultiPolygon"):
        return [geom] if not geom.is_empty else []
    if geom.geom_type == "GeometryCollection":
        return [g for g in geom.geoms if g.geom_type in ("Polygon", "MultiPolygon") and not g.is_empty]
    return []
