"""Predictions for image files and folders (`Run.predict_files`, `histoclass predict`)."""
from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from .. import CLASS_NAMES
from ..data.cache import load_images
from ..data.discover import walk_images
from ..data.records import ImageRecord, parse_idc_name
from ..errors import HistoclassError
from ..fileio import csv_text, write_text_atomic

if TYPE_CHECKING:
    from .run import Run

log = logging.getLogger(__name__)

COLUMNS = ("path", "prob_benign", "prob_malignant", "predicted_label", "predicted_class", "status")
CHUNK = 8192  # files decoded at once: memory stays flat however large the folder


@dataclass(frozen=True)
class FilePrediction:
    """One file's answer. `prob_malignant` and `label` are None when the file was skipped, and
    `status` then says why ("skipped: <reason>"); else `status` is "ok"."""

    path: str
    prob_malignant: float | None
    label: int | None  # at the run's threshold
    status: str

    @property
    def prob_benign(self) -> float | None:
        return None if self.prob_malignant is None else 1.0 - self.prob_malignant

    @property
    def class_name(self) -> str | None:
        return None if self.label is None else CLASS_NAMES[self.label]

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def gather_inputs(inputs: Sequence[str | os.PathLike]) -> tuple[list[Path], list[tuple[str, str]]]:
    """The image files named or found (recursively) in folders, and what was skipped on the way."""
    files: list[Path] = []
    skipped: list[tuple[str, str]] = []
    for given in inputs:
        path = Path(given)
        if path.is_dir():
            found = walk_images(path, skipped)
            if not found:
                log.warning("no images found in %s", path)
            files.extend(found)
        elif path.is_file() or path.is_symlink():
            files.append(path)
        else:
            raise HistoclassError(f"no such file or folder: {path}; give image files or folders to predict")
    return files, skipped


def predict_files(run: "Run", inputs: Sequence[str | os.PathLike], progress: bool = False) -> list[FilePrediction]:
    files, skipped = gather_inputs(inputs)
    results = [FilePrediction(str(path), None, None, f"skipped: {reason}") for path, reason in skipped]
    for start in range(0, len(files), CHUNK):
        chunk = files[start:start + CHUNK]
        records = [ImageRecord(str(p), 0, "") for p in chunk]
        decoded = load_images(records, run.image_size, use_cache=False, progress=progress)
        keep = np.flatnonzero(decoded.usable)
        prob = np.full(len(chunk), np.nan)
        if len(keep):
            groups = [stain_group(chunk[i]) for i in keep]
            prob[keep] = run.calibrated(run.model_probabilities(decoded.images, keep, progress=progress,
                                                                groups=groups))
        reasons = dict(decoded.skipped)
        for path, p in zip(chunk, prob):
            if np.isnan(p):
                results.append(FilePrediction(str(path), None, None,
                                              f"skipped: {reasons.get(str(path), 'unreadable')}"))
            else:
                results.append(FilePrediction(str(path), float(p), int(p >= run.threshold), "ok"))
    return results


def stain_group(path: str | os.PathLike) -> str:
    """The patient (Kaggle IDC names) or else the folder of a file: the tiles whose stain is
    estimated together (the run's stain normalization, if it has one)."""
    path = Path(path)
    idc = parse_idc_name(path.name)
    return f"patient {idc.patient_id}" if idc else f"folder {path.parent}"


def write_predictions_csv(predictions: Sequence[FilePrediction], output: str | os.PathLike | None) -> None:
    """The CSV of `histoclass predict`, to `output` (atomically) or standard output."""
    rows = [(_escaped(p.path), *(("", "", "", "") if p.prob_malignant is None else
                                 (f"{p.prob_benign:.6f}", f"{p.prob_malignant:.6f}", p.label, p.class_name)),
             _escaped(p.status)) for p in predictions]
    text = csv_text(COLUMNS, rows, defuse_formulas=True)
    if output is None:
        sys.stdout.write(text)
    else:
        write_text_atomic(output, text)
        log.info("wrote %d rows to %s", len(rows), output)
    num_skipped = sum(not p.ok for p in predictions)
    if num_skipped:
        log.warning("%d of %d files could not be read; their rows say why", num_skipped, len(predictions))


def _escaped(text: str) -> str:
    """File names that are not valid UTF-8 are written with escapes instead of crashing."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")
