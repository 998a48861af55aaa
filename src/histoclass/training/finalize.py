"""After training: fit the temperature and choose the operating threshold on validation, once;
both are stored in calibration.json and every later step reads them from there. The sharpness
of the training patches is stored in focus.json (`histoclass slide` judges blur against it)."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ..config import TrainConfig
from ..evaluation.calibration import calibrate, expected_calibration_error, fit_temperature
from ..evaluation.metrics import classification_metrics, has_both_classes
from ..evaluation.neighbourhood import fit_neighbourhood
from ..data.sharpness import focus_reference
from ..evaluation.threshold import choose_threshold
from ..fileio import write_json_atomic
from .batches import class_weights

log = logging.getLogger(__name__)


def fit_calibration(val_labels: np.ndarray, val_prob_model: np.ndarray, train_labels: np.ndarray,
                    config: TrainConfig) -> dict:
    """calibration.json's content from the best model's validation probabilities. Pure.

    The class-weight prior shift comes from the training labels (what the weights were); the
    temperature is fitted on validation after removing it, and the threshold is chosen on the
    calibrated probabilities, since those are what `predict` reports and thresholds.
    """
    labels = np.asarray(val_labels)
    both = has_both_classes(labels)
    prior_shift = 0.0
    if config.class_weighting:
        weights = class_weights(np.asarray(train_labels))
        prior_shift = float(np.log(weights[1] / weights[0])) if weights.min() > 0 else 0.0
    temperature = fit_temperature(labels, calibrate(val_prob_model, 1.0, prior_shift)) if both else 1.0
    calibrated = calibrate(val_prob_model, temperature, prior_shift)
    method = config.threshold_method if both else "fixed"
    reason = None
    if not both:
        held = (f"holds only {'malignant' if labels.sum() else 'benign'} images ({len(labels)})" if len(labels)
                else "is empty")
        reason = (f"the validation part {held}: a temperature and a threshold need both classes, so "
                  "temperature 1 (none) and the fixed threshold 0.5 are used")
        log.warning("calibration fell back: %s", reason)
    threshold = float(choose_threshold(labels, calibrated, method)["threshold"]) if method != "fixed" else 0.5
    return {
        "temperature": float(temperature), "prior_shift": prior_shift, "threshold": threshold,
        "threshold_method": method, "reason": reason, "fitted_on": "val", "num_val": int(len(labels)),
        "val_ece_before": expected_calibration_error(labels, val_prob_model) if len(labels) else None,
        "val_ece_after": expected_calibration_error(labels, calibrated) if len(labels) else None,
        "val_metrics": classification_metrics(labels, calibrated, threshold) if len(labels) else None,
    }


def finalize_run(out_dir: Path, train_labels: np.ndarray, cache_dir=None, train_images=None) -> dict:
    """Scores the validation split with the best model (as `load_run` loads it, so exactly as
    `predict` will), writes calibration.json (with the neighbourhood's threshold, fitted on the
    validation patients' patch grids: `evaluation.neighbourhood`), then stores the validation
    probabilities.
    `train_images`: the training patches at the model's input size (uint8, possibly memory-mapped),
    whose sharpness percentiles go to focus.json."""
    if train_images is not None:
        focus = focus_reference(train_images)
        write_json_atomic(out_dir / "focus.json", focus)
        log.info("focus reference: sharpness of %d training patches, 2nd percentile %s", focus["num_patches"],
                 focus["percentiles"].get("p02"))
    from ..inference.run import load_run
    from ..inference.scoring import score, store, stored_predictions_path
    from ..runs.folder import read_calibration
    run = load_run(out_dir)
    val = score(run, part="val", cache_dir=cache_dir, reuse=False)
    calibration = fit_calibration(val.labels, val.prob_model, train_labels, run.config)
    calibration["neighbourhood"] = fit_neighbourhood(
        val.labels, calibrate(val.prob_model, calibration["temperature"], calibration["prior_shift"]),
        [r.group for r in val.records], [r.x for r in val.records], [r.y for r in val.records],
        calibration["threshold"])
    write_json_atomic(out_dir / "calibration.json", calibration)
    run.calibration = read_calibration(out_dir)
    val.prob_malignant = run.calibrated(val.prob_model)
    store(run, val, stored_predictions_path(run, "val"))
    log.info("validation: temperature %.3f, threshold %.3f (%s)", calibration["temperature"],
             calibration["threshold"], calibration["threshold_method"])
    return calibration
