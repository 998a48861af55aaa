"""`histoclass predict`: a CSV row per image for any files or folders, with nothing but the run."""
from __future__ import annotations

import csv
import io
import logging
import os
import sys
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from . import CLASS_NAMES
from .data.cache import load_images
from .data.discover import walk_images
from .data.records import ImageRecord
from .errors import HistoclassError
from .fileio import csv_safe, write_text_atomic
from .inference import predict_probabilities
from .runs import load_run

log = logging.getLogger(__name__)

COLUMNS = ("path", "prob_benign", "prob_malignant", "predicted_label", "predicted_class", "status")
CHUNK = 8192  # files decoded at once: memory stays flat however large the folder


def gather_inputs(inputs: Sequence[str | os.PathLike]) -> tuple[list[Path], list[tuple[str, str]]]:
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


def predict_rows(run_dir: str | os.PathLike, inputs: Sequence[str | os.PathLike],
                 progress: bool = True) -> Iterator[tuple]:
    run = load_run(run_dir)
    files, skipped = gather_inputs(inputs)
    for path, reason in skipped:
        yield (path, "", "", "", "", f"skipped: {reason}")
    for start in range(0, len(files), CHUNK):
        chunk = files[start:start + CHUNK]
        records = [ImageRecord(str(p), 0, "") for p in chunk]
        decoded = load_images(records, run.config.image_size, use_cache=False, progress=progress)
        keep = np.flatnonzero(decoded.usable)
        prob = np.full(len(chunk), np.nan)
        if len(keep):
            raw = predict_probabilities(run.model, decoded.images, keep,
                                        test_time_augmentation=run.config.test_time_augmentation)
            prob[keep] = run.calibrated(raw)
        reasons = dict(decoded.skipped)
        for path, p in zip(chunk, prob):
            if np.isnan(p):
                yield (str(path), "", "", "", "", f"skipped: {reasons.get(str(path), 'unreadable')}")
            else:
                label = int(p >= run.threshold)
                yield (str(path), f"{1 - p:.6f}", f"{p:.6f}", label, CLASS_NAMES[label], "ok")


def predict(run_dir, inputs, output: str | os.PathLike | None = None, progress: bool = True) -> int:
    """Writes the CSV to `output` (atomically) or standard output; returns the rows written."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(COLUMNS)
    count = num_ok = 0
    for row in predict_rows(run_dir, inputs, progress=progress):
        writer.writerow([csv_safe(_printable(v)) for v in row])
        count += 1
        num_ok += row[-1] == "ok"
    if output is None:
        sys.stdout.write(buffer.getvalue())
    else:
        write_text_atomic(output, buffer.getvalue())
        log.info("wrote %d rows to %s", count, output)
    if count - num_ok:
        log.warning("%d of %d files could not be read; their rows say why", count - num_ok, count)
    return count


def _printable(value):
    """File names that are not valid UTF-8 are written with escapes instead of crashing."""
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    return value
