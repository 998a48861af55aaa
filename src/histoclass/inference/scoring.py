"""Scoring labelled images with a run: the run's own split parts or other data, with the
probabilities stored in the run folder reused where they still match."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..data import discover
from ..data.cache import RowView, fingerprint, load_images
from ..data.records import ImageRecord
from ..errors import HistoclassError
from ..evaluation.metrics import classification_metrics
from ..evaluation.neighbourhood import smooth_patients
from ..runs.folder import read_split
from ..runs.predictions import read_predictions, write_predictions

if TYPE_CHECKING:
    from .run import Run

log = logging.getLogger(__name__)


@dataclass
class ScoredImages:
    """Labelled images with the run's predictions; `images` may be a memory map."""

    description: str
    records: list[ImageRecord]
    images: np.ndarray
    labels: np.ndarray
    prob_model: np.ndarray  # the model's own, before calibration
    prob_malignant: np.ndarray  # calibrated: what `predict` reports
    skipped: list[tuple[str, str]]
    data_fingerprint: str  # of the images chosen (before unreadable ones were skipped)
    reused: bool = False  # the probabilities were read from the run folder, not predicted
    model_images: object = None  # `images` as the model saw them (stain-normalized); None: the same

    @property
    def seen_by_model(self):
        """The images as the model saw them: what Grad-CAM explains."""
        return self.images if self.model_images is None else self.model_images

    @property
    def groups(self) -> np.ndarray:
        return np.array([r.group for r in self.records], dtype=object)


def select_records(run: "Run", data: str | os.PathLike | None, part: str = "test") -> tuple[list[ImageRecord], str, bool]:
    """(records, description, whether they are the run's own split part). The run's own `part`
    when `data` is None or is the data it was trained on; else the data's own test part where
    it defines one, else all of it."""
    same_data = data is not None and str(Path(data).expanduser().resolve()) == run.data.get("path")
    if data is None or same_data:
        records, parts = read_split(run.folder)
        chosen = [r for r, p in zip(records, parts) if p == part]
        if not chosen:
            hint = (" (it was trained with --test-fraction 0; give --data with labelled images to "
                    "evaluate on)" if part == "test" else "")
            raise HistoclassError(f"the run {run.folder} has no {part} images in its split.csv{hint}")
        return chosen, f"the run's {part} split ({len(chosen)} images)", True
    dataset = discover(data)
    test = [r for r in dataset.records if r.part == "test"]
    if test:
        return test, f"the test part of {dataset.root} ({len(test)} images)", False
    return dataset.records, f"all of {dataset.root} ({len(dataset.records)} images)", False


def stored_predictions_path(run: "Run", part: str) -> Path:
    """Where the run keeps the probabilities of its own `part`: validation ones are written when
    training ends, test ones by `histoclass evaluate`."""
    return run.folder / ("val_predictions.csv" if part == "val" else "evaluation/predictions.csv")


def score(run: "Run", data: str | os.PathLike | None = None, part: str = "test", cache_dir=None,
          progress: bool = False, reuse: bool = True) -> ScoredImages:
    """Scores the chosen images; reads the stored probabilities instead when `reuse` and they
    were made by this model for these very images."""
    records, description, own_part = select_records(run, data, part)
    decoded = load_images(records, run.image_size, cache_dir, progress=progress)
    keep = np.flatnonzero(decoded.usable)
    if not len(keep):
        raise HistoclassError(f"none of the images of {description} could be decoded; see the log")
    kept = [records[i] for i in keep]
    data_fingerprint = fingerprint(records, run.image_size)
    # Per patient: every image of a patient gets the transform fitted on (a sample of) its images.
    groups = [r.group for r in kept]
    seen = run.normalized(decoded.images, keep, groups=groups)  # as `run.model` sees them
    stored = None
    if reuse and own_part:
        stored = read_predictions(stored_predictions_path(run, part), kept, run.model_file,
                                  data_fingerprint)
    if stored is not None:
        log.info("using the stored predictions of %s", description)
        prob_model = stored.prob_model
    else:
        # An ensemble's members normalize each to their own reference, from the images as read.
        prob_model = (run.model_probabilities(decoded.images, keep, progress=progress, groups=groups)
                      if run.member_stains is not None else run.model_probabilities(seen, keep, progress=progress))
    return ScoredImages(description, kept, RowView(decoded.images, keep), np.array([r.label for r in kept]),
                        prob_model, run.calibrated(prob_model), decoded.skipped, data_fingerprint,
                        reused=stored is not None,
                        model_images=None if seen is decoded.images else RowView(seen, keep))


def store(run: "Run", scored: ScoredImages, path: Path) -> None:
    """Writes the probabilities of `scored` to `path` with the stamp that lets them be reused."""
    write_predictions(path, scored.records, scored.prob_model, scored.prob_malignant,
                      run.model_file, scored.data_fingerprint)


def evaluation_metrics(run: "Run", scored: ScoredImages) -> dict:
    """The numbers of metrics.json: at the run's threshold, and at 0.5 for comparison."""
    metrics = classification_metrics(scored.labels, scored.prob_malignant, run.threshold)
    metrics["threshold_method"] = run.calibration.threshold_method
    if run.calibration.reason:
        metrics["calibration_reason"] = run.calibration.reason
    metrics["at_threshold_0.5"] = classification_metrics(scored.labels, scored.prob_malignant, 0.5)
    metrics["evaluated_on"] = scored.description
    metrics["num_groups"] = len(set(scored.groups))
    metrics["num_skipped"] = len(scored.skipped)
    metrics["temperature"] = run.temperature
    neighbourhood = neighbourhood_metrics(run, scored)
    if neighbourhood is not None:
        metrics["neighbourhood"] = neighbourhood
    return metrics


def neighbourhood_metrics(run: "Run", scored: ScoredImages) -> dict | None:
    """The metrics with each patch's probability smoothed over its patient's neighbouring
    patches (IDC names carry each patch's place on its slide) at the run's neighbourhood
    threshold (`evaluation.neighbourhood`): only the probabilities of unlabelled neighbours
    enter, as on a slide. None where the run has no neighbourhood or no patient's patches have
    places."""
    found = smoothed_by_patient(run, scored)
    if found is None:
        return None
    smoothed, with_grid = found
    metrics = classification_metrics(scored.labels, smoothed, run.neighbourhood["threshold"])
    metrics.update(sigma=run.neighbourhood["sigma"], num_groups_with_places=with_grid)
    return metrics


def smoothed_by_patient(run: "Run", scored: ScoredImages) -> tuple[np.ndarray, int] | None:
    """(each image's calibrated probability smoothed over its patient's neighbouring patches,
    the number of patients whose patches have places), or None where the run has no
    neighbourhood or no patch has a place."""
    if run.neighbourhood is None:
        return None
    smoothed, with_grid = smooth_patients(scored.prob_malignant, scored.groups, [r.x for r in scored.records],
                                          [r.y for r in scored.records], run.neighbourhood["sigma"])
    return (smoothed, with_grid) if with_grid else None
