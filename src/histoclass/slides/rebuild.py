"""`histoclass rebuild`: whole slides from Kaggle IDC patches laid at their coordinates, and the
pathologists' IDC annotation beside each as GeoJSON, so `histoclass slide --truth` can score a
model on real tissue.

    rebuilt = rebuild_slides("IDC_regular_ps50_idx5", "rebuilt")   # <patient>.tiff + <patient>.geojson

The patch `<patient>_idx5_x<X>_y<Y>_class<C>.png` was cut with its top-left corner at (X, Y),
1-based, from the patient's slide downsampled to about IDC_MICRONS_PER_PIXEL, so it lies at
level-0 pixel (X - 1, Y - 1) of the rebuilt slide; everything no patch covers is white glass.
The patches sit on a grid of 50 px from the origin, the same grid `slides.tiling.plan_tiles`
cuts at the model's 4 µm/px and 50 px: the slide path reads the very pixels of the patches.

Only the patients whose patches tile their tissue are rebuilt (`completeness`: a sample of a
patient's patches would rebuild as confetti on glass); the others are skipped, each with why.

The glass is painted as a scanner shows it (`synth.glass.add_scanner_glass`: uneven light over
the tissue too, a tint, noise, dust and a coverslip edge in the glass beyond the tissue), seeded
by the patient, unless `flat_glass` asks for the plain GLASS_RGB of earlier releases.

The annotation is the union of the class-1 patches (shapely), one QuPath annotation classified
"Tumor" per connected region, in level-0 pixels.
"""
from __future__ import annotations

import logging
import math
import os
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config import IDC_MICRONS_PER_PIXEL, IDC_PATCH_SIZE
from ..data.decode import BadImage, decode_bytes, read_image_bytes
from ..data.discover import discover
from ..data.records import ImageRecord
from ..errors import HistoclassError
from ..fileio import printable, write_json_atomic
from ..progress import progress_bar
from ..synth.glass import add_scanner_glass
from ..synth.slide_file import write_pyramid_tiff
from .completeness import RULE, judge_patient
from .regions import annotation_feature, feature_collection, union_polygons

log = logging.getLogger(__name__)

GLASS_RGB = (243, 243, 243)  # bright-field glass as IDC's slides show it around the tissue
TUMOR_COLOR = [200, 0, 0]
MARGIN = IDC_PATCH_SIZE  # px of glass right of and below the last patch


@dataclass(frozen=True)
class RebuiltSlide:
    """One patient's rebuilt slide and annotation."""

    patient_id: str
    slide: Path
    annotation: Path
    num_patches: int
    num_malignant: int
    dimensions: tuple[int, int]  # level-0 (width, height)
    skipped: tuple[tuple[str, str], ...] = ()  # (patch, why) left out: unreadable


@dataclass(frozen=True)
class SkippedPatient:
    """A patient `rebuild` left out, and why (`completeness.judge_patient`)."""

    patient_id: str
    num_patches: int
    reason: str


@dataclass(frozen=True)
class Rebuilt:
    """What `rebuild_slides` wrote, and the patients it skipped."""

    slides: tuple[RebuiltSlide, ...]
    skipped_patients: tuple[SkippedPatient, ...]


def rebuild_slides(idc_root: str | os.PathLike, out_dir: str | os.PathLike, all_patients: bool = False,
                   mpp: float = IDC_MICRONS_PER_PIXEL, progress: bool = True, flat_glass: bool = False) -> Rebuilt:
    """For each patient of the IDC tree at `idc_root` whose patches hold both classes and tile
    their tissue (every patient with `all_patients`): `<patient>.tiff` (pyramidal, `mpp` µm/px at
    level 0, on glass as scanners show it unless `flat_glass`) and `<patient>.geojson` in `out_dir`
    (new or empty). Returns what was written and
    which patients were skipped, with why (also logged)."""
    dataset = discover(idc_root)
    if dataset.layout != "idc":
        raise HistoclassError(f"{printable(idc_root)} is not in the Kaggle IDC layout "
                              "(<patient>/<0|1>/<patient>_idx5_x<X>_y<Y>_class<C>.png); only IDC patches "
                              "carry the coordinates a slide is rebuilt from")
    by_patient: dict[str, list[ImageRecord]] = defaultdict(list)
    for record in dataset.records:
        by_patient[record.group].append(record)
    chosen, skipped_patients = choose_patients(by_patient, all_patients)
    if not chosen:
        raise HistoclassError(f"none of the {len(by_patient)} patients under {printable(idc_root)} has patches "
                              f"that tile its tissue with both classes ({skipped_patients[0].patient_id}: "
                              f"{skipped_patients[0].reason}; {RULE}); give --all to rebuild them anyway")
    if skipped_patients:
        kinds = Counter(s.reason.partition(":")[0] for s in skipped_patients)
        log.info("skipped %d of %d patients, not whole slides (%s; --all rebuilds them): %s", len(skipped_patients),
                 len(by_patient), RULE, ", ".join(f"{count} {kind}" for kind, count in kinds.most_common()))
        for skipped in skipped_patients:
            log.debug("skipped %s (%d patches): %s", skipped.patient_id, skipped.num_patches, skipped.reason)
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise HistoclassError(f"the output folder {printable(out_dir)} already exists; choose a new --out folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    rebuilt = []
    with progress_bar(len(chosen), "rebuild", "slide", enabled=progress) as bar:
        for patient in chosen:
            rebuilt.append(_rebuild_patient(patient, by_patient[patient], out_dir, mpp, flat_glass))
            bar.update(1)
    return Rebuilt(tuple(rebuilt), tuple(skipped_patients))


def choose_patients(by_patient: dict[str, list[ImageRecord]],
                    all_patients: bool = False) -> tuple[list[str], list[SkippedPatient]]:
    """The patients to rebuild (sorted) and those skipped: a patient is rebuilt if its patches
    hold both classes and tile its tissue (`completeness.judge_patient`), every one with
    `all_patients`."""
    chosen, skipped = [], []
    for patient in sorted(by_patient, key=_patient_order):
        records = by_patient[patient]
        reason = None if all_patients else judge_patient([r.x for r in records], [r.y for r in records],
                                                         [r.label for r in records])
        if reason is None:
            chosen.append(patient)
        else:
            skipped.append(SkippedPatient(patient, len(records), reason))
    return chosen, skipped


def _patient_order(patient: str):
    return (0, int(patient), "") if patient.isdigit() else (1, 0, patient)


def _rebuild_patient(patient: str, records: list[ImageRecord], out_dir: Path, mpp: float,
                     flat_glass: bool = False) -> RebuiltSlide:
    rgb, boxes, skipped = paint_patient(records)
    if not flat_glass:
        rgb = add_scanner_glass(rgb, seed=glass_seed(patient))
    for path, why in skipped:
        log.warning("%s left out: %s", printable(path), why)
    slide = write_pyramid_tiff(out_dir / f"{patient}.tiff", rgb, mpp)
    annotation = out_dir / f"{patient}.geojson"
    write_json_atomic(annotation, tumor_annotation(boxes))
    num_malignant = sum(label for *_, label in boxes)
    log.info("%s: %d patches (%d malignant) on %d x %d px", patient, len(boxes), num_malignant,
             rgb.shape[1], rgb.shape[0])
    return RebuiltSlide(patient, slide, annotation, len(boxes), num_malignant, (rgb.shape[1], rgb.shape[0]),
                        tuple(skipped))


def glass_seed(patient: str) -> int:
    """The seed of a patient's scanner glass: its id where it is a number, so a slide's glass
    does not depend on which other patients are rebuilt with it."""
    return int(patient) if patient.isdigit() else sum(map(ord, patient))


def paint_patient(records: list[ImageRecord]):
    """The patient's slide (RGB uint8, glass where no patch lies), the level-0 boxes of the
    patches painted (left, top, width, height, label) and the (path, why) of those left out."""
    patches, skipped = [], []
    for record in records:
        try:
            patches.append((record, decode_bytes(read_image_bytes(record.source))))
        except BadImage as err:
            skipped.append((record.source, str(err)))
    if not patches:
        raise HistoclassError(f"no patch of patient {printable(records[0].group)} could be read "
                              f"({skipped[0][1]})")
    right = max(r.x - 1 + image.shape[1] for r, image in patches)
    bottom = max(r.y - 1 + image.shape[0] for r, image in patches)
    width = math.ceil(right / IDC_PATCH_SIZE) * IDC_PATCH_SIZE + MARGIN
    height = math.ceil(bottom / IDC_PATCH_SIZE) * IDC_PATCH_SIZE + MARGIN
    rgb = np.empty((height, width, 3), np.uint8)
    rgb[:] = GLASS_RGB
    boxes = []
    for record, image in patches:
        left, top = record.x - 1, record.y - 1
        rgb[top:top + image.shape[0], left:left + image.shape[1]] = image
        boxes.append((left, top, image.shape[1], image.shape[0], record.label))
    return rgb, boxes, skipped


def tumor_annotation(boxes) -> dict:
    """GeoJSON FeatureCollection of the malignant patches' union: one "Tumor" annotation per
    connected region (patches meeting only at a corner are separate regions)."""
    import shapely
    tumor = [(left, top, left + w, top + h) for left, top, w, h, label in boxes if label == 1]
    if not tumor:
        return feature_collection([])
    x0, y0, x1, y1 = np.array(tumor, dtype=np.float64).T
    polygons = union_polygons(shapely.box(x0, y0, x1, y1))
    return feature_collection([annotation_feature(polygon, "Tumor", TUMOR_COLOR) for polygon in polygons])
