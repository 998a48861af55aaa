"""The numbers of cv_metrics.json: each fold's own, their mean and spread, and the pooled
out-of-fold ones with bootstrap intervals. Pure: arrays in, a dict out."""
from __future__ import annotations

import numpy as np

from ..evaluation.calibration import expected_calibration_error
from ..evaluation.intervals import bootstrap_intervals
from ..evaluation.metrics import classification_metrics, metric_functions

SUMMARY_METRICS = ("roc_auc", "accuracy", "balanced_accuracy", "recall", "specificity", "f1")


def fold_metrics(labels: np.ndarray, prob_malignant: np.ndarray, threshold: float) -> dict:
    """One fold's validation numbers, with its own calibration and threshold."""
    metrics = classification_metrics(labels, prob_malignant, threshold)
    metrics["ece"] = expected_calibration_error(labels, prob_malignant)
    return metrics


def mean_and_spread(per_fold: list[dict], names=SUMMARY_METRICS + ("ece",)) -> dict:
    """{metric: {"mean", "std"}} over the folds (sample standard deviation, ddof=1); folds where
    a metric is undefined are left out of it."""
    summary = {}
    for name in names:
        values = np.array([m[name] for m in per_fold if m.get(name) is not None], dtype=float)
        summary[name] = {"mean": float(values.mean()) if len(values) else None,
                         "std": float(values.std(ddof=1)) if len(values) > 1 else None,
                         "num_folds": int(len(values))}
    return summary


def pooled_metrics(labels: np.ndarray, prob_malignant: np.ndarray, threshold: float, groups=None,
                   num_resamples: int = 1000, seed: int = 0) -> dict:
    """The out-of-fold metrics over all training images at the ensemble's threshold, each with
    its 95 % percentile bootstrap interval (of whole groups where groups hold several images)."""
    by_group = groups is not None and len(set(groups)) < len(groups)
    intervals = bootstrap_intervals(labels, prob_malignant, metric_functions(threshold, SUMMARY_METRICS),
                                    groups=groups if by_group else None, num_resamples=num_resamples, seed=seed)
    pooled = {name: {"point": iv.point, "low": iv.low, "high": iv.high} for name, iv in intervals.items()}
    pooled.update(n=int(len(labels)), num_malignant=int(np.sum(labels)), threshold=float(threshold),
                  ece=expected_calibration_error(labels, prob_malignant),
                  resampled="groups" if by_group else "images", num_resamples=num_resamples)
    return pooled


def out_of_fold_calibration(labels_by_fold: list, prob_model_by_fold: list, config, records=None) -> dict:
    """calibration.json of the ensemble: temperature, prior shift and threshold fitted on the
    pooled out-of-fold probabilities (every training image, each scored by the member that did
    not train on it) rather than on one small validation part; and, where `records` (the pooled
    images, in the same order) place patches on their patients' slides, the neighbourhood's
    threshold fitted the same way."""
    from ..evaluation.calibration import calibrate
    from ..evaluation.neighbourhood import fit_neighbourhood
    from ..training.finalize import fit_calibration
    labels = np.concatenate(labels_by_fold)
    prob_model = np.concatenate(prob_model_by_fold)
    calibration = fit_calibration(labels, prob_model, labels, config)
    calibration.update(fitted_on="out-of-fold", num_folds=len(labels_by_fold))
    if records is not None:
        neighbourhood = fit_neighbourhood(
            labels, calibrate(prob_model, calibration["temperature"], calibration["prior_shift"]),
            [r.group for r in records], [r.x for r in records], [r.y for r in records], calibration["threshold"])
        calibration["neighbourhood"] = None if neighbourhood is None else {**neighbourhood, "fitted_on": "out-of-fold"}
    return calibration


def summarize(fold_runs, scored, labels, prob_malignant, groups, fold_of, calibration, seed: int = 0) -> dict:
    """cv_metrics.json: `scored[k]` are fold k's validation images as its run scored them."""
    per_fold = [fold_metrics(s.labels, s.prob_malignant, run.threshold) for run, s in zip(fold_runs, scored)]
    for k, (metrics, run) in enumerate(zip(per_fold, fold_runs)):
        metrics.update(fold=k, folder=run.folder.name, temperature=run.temperature)
    return {"num_folds": len(fold_runs), "folds": per_fold, "mean_and_std": mean_and_spread(per_fold),
            "out_of_fold": pooled_metrics(labels, prob_malignant, calibration.threshold, groups, seed=seed),
            "fold_of_image_counts": np.bincount(fold_of).tolist()}
