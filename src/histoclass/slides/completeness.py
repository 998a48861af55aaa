"""Whether a patient's IDC patches tile its tissue (every patch of the slide: a complete patient)
or are a scattered sample of it, judged from the patches' coordinates alone.

    judge_patient(xs, ys, labels)   # None: complete; else why not, e.g. "scattered: ..."

The Kaggle IDC patches of a patient sit on a 50 px grid. A complete patient's patches cover its
tissue cell by cell, so nearly every patch touches another (shares an edge) and they fill a good
part of their convex hull; a random sample of ~30 patches from the same tissue touches almost
nothing and fills a few per cent of its hull. Measured on the 153 patients of idc-sample
(`docs/slides.md`): the 21 complete ones touch at 0.946-1.000 and fill 0.25-0.83 of their hull;
of the 130 sampled ones none both touches at >= 0.75 and fills >= 0.15 (the closest: 9175 touches
at 0.92 but fills 0.09; 12948 fills 0.14 but none of its 4 patches touch). Both partial patients
(one class complete) pass: 8956 (0.98, 0.64) and 8959 (0.96, 0.18).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..config import IDC_PATCH_SIZE

MIN_TOUCHING = 0.75  # share of the patches that share an edge with another patch
MIN_HULL_FILL = 0.15  # share of the grid cells of the patches' convex hull that hold a patch
RULE = (f"a whole slide's patches: >= {MIN_TOUCHING:.0%} touch another and they fill >= {MIN_HULL_FILL:.0%} "
        "of their convex hull")


@dataclass(frozen=True)
class Tiling:
    """How a patient's patches lie on the 50 px grid."""

    num_cells: int  # grid cells holding a patch
    touching: float  # share of those cells with a patch on an edge-neighbouring cell
    hull_fill: float  # num_cells / area of the convex hull of the cells' squares, in cells

    @property
    def tiles_its_tissue(self) -> bool:
        return self.touching >= MIN_TOUCHING and self.hull_fill >= MIN_HULL_FILL


def measure_tiling(xs, ys, cell: int = IDC_PATCH_SIZE) -> Tiling:
    """The tiling statistics of patches whose top-left corners are (xs, ys), 1-based as in the
    Kaggle file names, on a grid of `cell` px."""
    import shapely
    cells = np.unique(np.stack([(np.asarray(xs) - 1) // cell, (np.asarray(ys) - 1) // cell], axis=1), axis=0)
    if len(cells) == 0:
        raise ValueError("measure_tiling needs at least one patch")
    occupied = {tuple(c) for c in cells.tolist()}
    touching = sum(any((x + dx, y + dy) in occupied for dx, dy in ((1, 0), (-1, 0), (0, 1), (0, -1)))
                   for x, y in occupied)
    corners = np.concatenate([cells + offset for offset in ((0, 0), (1, 0), (0, 1), (1, 1))])
    hull_area = shapely.MultiPoint(corners.astype(np.float64)).convex_hull.area
    return Tiling(len(cells), touching / len(cells), len(cells) / hull_area)


def judge_patient(xs, ys, labels) -> str | None:
    """None if the patches hold both classes and tile their tissue; otherwise why the patient
    would not rebuild as a whole slide, in one phrase: "<kind>: <details>" (kind "one class only"
    or "scattered")."""
    present = set(np.asarray(labels).tolist())
    if len(present) < 2:
        return f"one class only: all {len(np.asarray(labels))} patches {'malignant' if present == {1} else 'benign'}"
    tiling = measure_tiling(xs, ys)
    if tiling.tiles_its_tissue:
        return None
    return (f"scattered: {tiling.touching:.0%} of its {tiling.num_cells} patches touch another, and they fill "
            f"{tiling.hull_fill:.0%} of their convex hull")
