"""`histoclass evaluate`: a run's model on its own test split (or other data), honestly."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .data import discover
from .data.cache import RowView, load_images
from .data.records import ImageRecord
from .errors import HistoclassError
from .fileio import write_csv_atomic, write_json_atomic
from .inference import predict_probabilities
from .metrics import classification_metrics, format_table
from .runs import Run, load_run, read_split

log = logging.getLogger(__name__)

NUM_SHOWN = 16  # images in the seed's visual-results figures


@dataclass
class EvaluationSet:
    """Images with their labels and the run's predictions; `images` may be a memory map."""

    description: str
    records: list[ImageRecord]
    images: np.ndarray
    labels: np.ndarray
    prob_raw: np.ndarray  # before temperature scaling
    prob_malignant: np.ndarray  # calibrated: what `predict` reports
    skipped: list[tuple[str, str]]

    @property
    def groups(self) -> np.ndarray:
        return np.array([r.group for r in self.records], dtype=object)


def select_records(run: Run, data: str | os.PathLike | None, part: str = "test") -> tuple[list[ImageRecord], str]:
    """The run's own `part` when `data` is None or is the data it was trained on; else the
    data's own test part where it defines one, else all of it."""
    same_data = data is not None and str(Path(data).expanduser().resolve()) == run.data.get("path")
    if data is None or same_data:
        records, parts = read_split(run.folder)
        chosen = [r for r, p in zip(records, parts) if p == part]
        if not chosen:
            raise HistoclassError(f"the run {run.folder} has no {part} images in its split.csv")
        return chosen, f"the run's {part} split ({len(chosen)} images)"
    dataset = discover(data)
    test = [r for r in dataset.records if r.part == "test"]
    if test:
        return test, f"the test part of {dataset.root} ({len(test)} images)"
    return dataset.records, f"all of {dataset.root} ({len(dataset.records)} images)"


def collect_predictions(run: Run, data: str | os.PathLike | None = None, part: str = "test",
                        cache_dir=None, progress: bool = True) -> EvaluationSet:
    records, description = select_records(run, data, part)
    decoded = load_images(records, run.config.image_size, cache_dir, progress=progress)
    keep = np.flatnonzero(decoded.usable)
    if not len(keep):
        raise HistoclassError(f"none of the images of {description} could be decoded; see the log")
    prob_raw = predict_probabilities(run.model, decoded.images, keep,
                                     test_time_augmentation=run.config.test_time_augmentation,
                                     progress=progress)
    kept_records = [records[i] for i in keep]
    return EvaluationSet(description, kept_records, RowView(decoded.images, keep),
                         np.array([r.label for r in kept_records]), prob_raw,
                         run.calibrated(prob_raw), decoded.skipped)


def evaluate(run_dir: str | os.PathLike, data: str | os.PathLike | None = None,
             out_dir: str | os.PathLike | None = None, cache_dir=None, progress: bool = True) -> dict:
    run = load_run(run_dir)
    out_dir = Path(out_dir) if out_dir else run.folder / "evaluation"
    evaluation = collect_predictions(run, data, cache_dir=cache_dir, progress=progress)
    metrics = classification_metrics(evaluation.labels, evaluation.prob_malignant, run.threshold)
    metrics["at_threshold_0.5"] = classification_metrics(evaluation.labels, evaluation.prob_malignant, 0.5)
    metrics["evaluated_on"] = evaluation.description
    metrics["num_groups"] = len(set(evaluation.groups))
    metrics["num_skipped"] = len(evaluation.skipped)
    metrics["temperature"] = run.temperature
    write_json_atomic(out_dir / "metrics.json", metrics)
    write_predictions(out_dir / "predictions.csv", evaluation)
    write_visual_results(out_dir, evaluation, run.threshold, seed=run.config.seed)
    print(f"Evaluated {run.folder} on {evaluation.description}:")
    print(format_table(metrics))
    print(f"Wrote {out_dir / 'metrics.json'}, predictions.csv and the figures in {out_dir}")
    return metrics


def write_predictions(path: Path, evaluation: EvaluationSet) -> None:
    rows = ((r.source, r.group, "" if r.x is None else r.x, "" if r.y is None else r.y, r.label,
             f"{1 - p:.6f}", f"{p:.6f}")
            for r, p in zip(evaluation.records, evaluation.prob_malignant))
    write_csv_atomic(path, ("path", "group", "x", "y", "label", "prob_benign", "prob_malignant"), rows,
                     defuse_formulas=True)


def shown_indices(labels: np.ndarray, predicted: np.ndarray, count: int = NUM_SHOWN, seed: int = 0) -> np.ndarray:
    """A fixed sample for the figures: up to half of it errors, so mistakes are seen."""
    rng = np.random.default_rng(seed)
    wrong = np.flatnonzero(labels != predicted)
    right = np.flatnonzero(labels == predicted)
    num_wrong = min(len(wrong), count // 2)
    chosen = np.concatenate([rng.choice(wrong, num_wrong, replace=False),
                             rng.choice(right, min(len(right), count - num_wrong), replace=False)])
    return np.sort(chosen).astype(int)


def seed_figures(evaluation: EvaluationSet, threshold: float, seed: int = 0):
    """The seed's two figures for a fixed sample: images with predicted label, confidence and
    truth; and the per-class probability bars of the same images. None when nothing to show."""
    from .plots import plot_image_grid, plot_probability_bars
    predicted = (evaluation.prob_malignant >= threshold).astype(int)
    shown = shown_indices(evaluation.labels, predicted, seed=seed)
    if not len(shown):
        return None
    images = np.stack([evaluation.images[i] for i in shown])
    prob = evaluation.prob_malignant[shown]
    confidence = np.where(predicted[shown] == 1, prob, 1 - prob)
    titles = [Path(evaluation.records[i].source).name for i in shown]
    grid = plot_image_grid(images, evaluation.labels[shown], predicted[shown], confidence, titles=titles)
    bars = plot_probability_bars(np.stack([1 - prob, prob], axis=1), titles)
    return grid, bars


def write_visual_results(out_dir: Path, evaluation: EvaluationSet, threshold: float, seed: int = 0) -> dict[str, Path]:
    from .plots import save_figure
    figures = seed_figures(evaluation, threshold, seed)
    if figures is None:
        return {}
    paths = {"grid": out_dir / "predictions_grid.png", "bars": out_dir / "probability_bars.png"}
    save_figure(figures[0], paths["grid"])
    save_figure(figures[1], paths["bars"])
    return paths
