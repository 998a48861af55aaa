"""Stored predictions: the model's probabilities for labelled images, kept in the run folder so
that a later step (the report) reads them instead of predicting again.

A CSV (people read it) with a stamp beside it, `<name>.json`, that records what the numbers
depend on: the model file's and the CSV's SHA-256 and the fingerprint of the images. A stored
file is used only when all three still match; the calibrated column is recomputed from
`prob_model` with the run's calibration, so it can never disagree with calibration.json.
"""
from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..data.records import ImageRecord
from ..fileio import csv_safe, file_sha256, read_json, write_csv_atomic, write_json_atomic

log = logging.getLogger(__name__)

COLUMNS = ("path", "group", "x", "y", "label", "prob_benign", "prob_malignant", "prob_model")


@dataclass(frozen=True)
class StoredPredictions:
    prob_model: np.ndarray  # the model's own probabilities (test-time augmentation included)


def write_predictions(path: Path, records: Sequence[ImageRecord], prob_model: np.ndarray,
                      prob_malignant: np.ndarray, model_file: Path, data_fingerprint: str) -> None:
    """predictions.csv (paths defused for spreadsheets) and its stamp. Probabilities are written
    with all their digits: read back, they give the same metrics to the last bit."""
    rows = ((r.source, r.group, "" if r.x is None else r.x, "" if r.y is None else r.y, r.label,
             repr(float(1 - p)), repr(float(p)), repr(float(m)))
            for r, p, m in zip(records, prob_malignant, prob_model))
    write_csv_atomic(path, COLUMNS, rows, defuse_formulas=True)
    write_json_atomic(_stamp_path(path), {"model_sha256": file_sha256(model_file),
                                          "predictions_sha256": file_sha256(path),
                                          "data_fingerprint": data_fingerprint, "count": len(records)})


def read_predictions(path: Path, records: Sequence[ImageRecord], model_file: Path,
                     data_fingerprint: str) -> StoredPredictions | None:
    """The stored probabilities for exactly `records`, or None when there are none, or they
    were made by another model, for other images, or the file was changed."""
    path, stamp_path = Path(path), _stamp_path(Path(path))
    if not (path.is_file() and stamp_path.is_file()):
        return None
    try:
        stamp = read_json(stamp_path)
        if (stamp.get("data_fingerprint") != data_fingerprint or stamp.get("count") != len(records)
                or stamp.get("model_sha256") != file_sha256(model_file)
                or stamp.get("predictions_sha256") != file_sha256(path)):
            return None
        with open(path, newline="", encoding="utf-8", errors="surrogateescape") as handle:
            rows = list(csv.DictReader(handle))
        if len(rows) != len(records) or any(row["path"] != csv_safe(r.source) for row, r in zip(rows, records)):
            return None
        return StoredPredictions(np.array([float(row["prob_model"]) for row in rows]))
    except (OSError, ValueError, KeyError, AttributeError, TypeError) as err:
        log.info("stored predictions %s not used (%s)", path, err)
        return None


def _stamp_path(path: Path) -> Path:
    return path.with_suffix(".json")
