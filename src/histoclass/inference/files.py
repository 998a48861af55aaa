"""Predictions for image files and folders (`Run.predict_files`, `histoclass predict`)."""
from __future__ import annotations

import logging
import os
import stat
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


def gather_inputs(inputs: Sequence[str | os.PathLike]) -> tuple[list[str], list[tuple[str, str]]]:
    """The image files named or found (recursively) in folders, and what was skipped on the way
    (one stat for each name given)."""
    files: list[str] = []
    skipped: list[tuple[str, str]] = []
    for given in inputs:
        name = os.fspath(given)
        try:
            mode = os.stat(name).st_mode
        except OSError:  # gone, or a broken link (which the decoder names)
            mode = 0
        if stat.S_ISDIR(mode):
            found = walk_images(name, skipped)
            if not found:
                log.warning("no images found in %s", name)
            files.extend(found)
        elif stat.S_ISREG(mode) or os.path.islink(name):
            files.append(name)
        else:
            raise HistoclassError(f"no such file or folder: {name}; give image files or folders to predict")
    return files, skipped


def predict_files(run: "Run", inputs: Sequence[str | os.PathLike], progress: bool = False) -> list[FilePrediction]:
    files, skipped = gather_inputs(inputs)
    results = [FilePrediction(str(path), None, None, f"skipped: {reason}") for path, reason in skipped]
    answers: list[FilePrediction | None] = [None] * len(files)
    for chunk, stain_transform in _chunks(run, files, progress):
        paths = [files[i] for i in chunk]
        records = [ImageRecord(str(p), 0, "") for p in paths]
        decoded = load_images(records, run.image_size, use_cache=False, progress=progress)
        keep = np.flatnonzero(decoded.usable)
        prob = np.full(len(paths), np.nan)
        if len(keep):
            groups = None if stain_transform is not None else [stain_group(paths[i]) for i in keep]
            prob[keep] = run.calibrated(run.model_probabilities(decoded.images, keep, progress=progress,
                                                                groups=groups, stain_transform=stain_transform))
        reasons = dict(decoded.skipped)
        for i, path, p in zip(chunk, paths, prob):
            answers[i] = (FilePrediction(str(path), None, None, f"skipped: {reasons.get(str(path), 'unreadable')}")
                          if np.isnan(p) else FilePrediction(str(path), float(p), int(p >= run.threshold), "ok"))
    return results + answers


def _chunks(run: "Run", files: list[str], progress: bool):
    """(positions in `files`, stain transform or None) of at most about CHUNK files each. With
    stain normalization a patient (or folder) is never split between chunks, so it gets one
    transform: whole groups are packed into a chunk; a group of more than CHUNK files gets its
    transform fitted first, on a seeded sample of its files (`stain.context.group_sample`), and
    is then read CHUNK files at a time with that transform."""
    if getattr(run, "stain", None) is None:
        for start in range(0, len(files), CHUNK):
            yield list(range(start, min(start + CHUNK, len(files)))), None
        return
    by_group: dict[str, list[int]] = {}
    for i, path in enumerate(files):
        by_group.setdefault(stain_group(path), []).append(i)
    packed: list[int] = []
    for name, members in by_group.items():
        if len(members) > CHUNK:
            transform = _fit_large_group(run, [files[i] for i in members], name, progress)
            for start in range(0, len(members), CHUNK):
                yield members[start:start + CHUNK], transform
            continue
        if len(packed) + len(members) > CHUNK:
            yield packed, None
            packed = []
        packed += members
    if packed:
        yield packed, None


def _fit_large_group(run: "Run", paths: list[str], name: str, progress: bool):
    """The stain transform of a group too large for one chunk, from a sample of its files;
    None (each file normalized on its own) where too few of them can be read."""
    from ..stain.context import MIN_CONTEXT_TILES, group_sample
    normalizer = run.stain
    sample = group_sample(len(paths), name, normalizer.seed, normalizer.tiles_per_group)
    decoded = load_images([ImageRecord(str(paths[i]), 0, "") for i in sample], run.image_size, use_cache=False,
                          progress=progress)
    usable = np.flatnonzero(decoded.usable)
    if len(usable) < MIN_CONTEXT_TILES:
        return None
    return run.fit_stain_group(np.asarray(decoded.images[usable]))


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
