"""What `histoclass evaluate` writes: metrics.json, predictions.csv (reused by the report) and
the per-image figures (each image with its predicted label and confidence; per-class bars)."""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from ..fileio import write_json_atomic
from ..inference.run import Run
from ..inference.scoring import ScoredImages, evaluation_metrics, store

log = logging.getLogger(__name__)

NUM_SHOWN = 16  # images in the per-image figures


def write_evaluation(run: Run, data: str | os.PathLike | None = None, out_dir: str | os.PathLike | None = None,
                     cache_dir=None, progress: bool = True) -> tuple[dict, Path]:
    """Scores the run's test split (or `data`) and writes the files; returns (metrics, folder)."""
    out_dir = Path(out_dir) if out_dir else run.folder / "evaluation"
    scored = run.score(data, cache_dir=cache_dir, progress=progress)
    metrics = evaluation_metrics(run, scored)
    store(run, scored, out_dir / "predictions.csv")
    write_json_atomic(out_dir / "metrics.json", metrics)
    write_per_image_figures(out_dir, scored, run.threshold, seed=run.config.seed)
    return metrics, out_dir


def shown_indices(labels: np.ndarray, predicted: np.ndarray, count: int = NUM_SHOWN, seed: int = 0) -> np.ndarray:
    """A fixed sample for the figures: up to half of it errors, so mistakes are seen."""
    rng = np.random.default_rng(seed)
    wrong = np.flatnonzero(labels != predicted)
    right = np.flatnonzero(labels == predicted)
    num_wrong = min(len(wrong), count // 2)
    chosen = np.concatenate([rng.choice(wrong, num_wrong, replace=False),
                             rng.choice(right, min(len(right), count - num_wrong), replace=False)])
    return np.sort(chosen).astype(int)


def per_image_figures(scored: ScoredImages, threshold: float, seed: int = 0):
    """The two figures of the original project for a fixed sample: images with predicted label,
    confidence and truth; and the per-class probability bars of the same images. None when
    there is nothing to show."""
    from .plots import plot_image_grid, plot_probability_bars
    predicted = (scored.prob_malignant >= threshold).astype(int)
    shown = shown_indices(scored.labels, predicted, seed=seed)
    if not len(shown):
        return None
    images = np.stack([scored.images[i] for i in shown])
    prob = scored.prob_malignant[shown]
    confidence = np.where(predicted[shown] == 1, prob, 1 - prob)
    titles = [Path(scored.records[i].source).name for i in shown]
    grid = plot_image_grid(images, scored.labels[shown], predicted[shown], confidence, titles=titles,
                           threshold=threshold)
    bars = plot_probability_bars(np.stack([1 - prob, prob], axis=1), titles)
    return grid, bars


def write_per_image_figures(out_dir: Path, scored: ScoredImages, threshold: float, seed: int = 0) -> dict[str, Path]:
    from .plots import save_figure
    figures = per_image_figures(scored, threshold, seed)
    if figures is None:
        return {}
    paths = {"grid": out_dir / "predictions_grid.png", "bars": out_dir / "probability_bars.png"}
    save_figure(figures[0], paths["grid"])
    save_figure(figures[1], paths["bars"])
    return paths
