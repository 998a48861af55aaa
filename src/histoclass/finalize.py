"""After training: fit the temperature and choose the operating threshold on validation."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from .calibration import apply_temperature, expected_calibration_error, fit_temperature
from .config import TrainConfig
from .fileio import write_json_atomic
from .inference import predict_probabilities
from .metrics import classification_metrics
from .runs import load_model
from .threshold import choose_threshold

log = logging.getLogger(__name__)


def calibrate(prob_malignant, temperature: float, prior_shift: float = 0.0) -> np.ndarray:
    """The model's prob_malignant with the class-weight prior removed, then temperature-scaled.

    Class weights w make the model act as if malignant were w_malignant/w_benign times as
    common as it is: its log-odds are shifted by `prior_shift` = log of that ratio. Subtracting
    it restores probabilities for the real prevalence; temperature scaling, which cannot move a
    shift, then only has to fix the spread.
    """
    prob = np.clip(np.asarray(prob_malignant, dtype=np.float64), 1e-7, 1 - 1e-7)
    with np.errstate(over="ignore"):
        unshifted = 1.0 / (1.0 + np.exp(-(np.log(prob / (1 - prob)) - prior_shift)))
    return apply_temperature(unshifted, temperature)


def finalize_run(out_dir: Path, config: TrainConfig, data, monitor: str) -> dict:
    """Writes calibration.json from the best model's validation predictions.

    The temperature is fitted first and the threshold chosen on the calibrated probabilities,
    since those are what `predict` reports and thresholds.
    """
    from .batches import class_weights
    model = load_model(out_dir / "model.keras")
    val_idx = data.indices("val")
    labels = data.labels[val_idx]
    raw = predict_probabilities(model, data.images, val_idx,
                                test_time_augmentation=config.test_time_augmentation)
    both = len(np.unique(labels)) == 2
    prior_shift = 0.0
    if config.class_weighting:
        weights = class_weights(data.labels[data.indices("train")])
        prior_shift = float(np.log(weights[1] / weights[0])) if weights.min() > 0 else 0.0
    unshifted = calibrate(raw, 1.0, prior_shift)
    temperature = fit_temperature(labels, unshifted) if both else 1.0
    calibrated = calibrate(raw, temperature, prior_shift)
    if config.threshold_method == "youden" and both:
        threshold = float(choose_threshold(labels, calibrated, method="youden")["threshold"])
    else:
        threshold = 0.5
    calibration = {
        "temperature": float(temperature), "prior_shift": prior_shift, "threshold": threshold,
        "threshold_method": config.threshold_method if both else "fixed",
        "fitted_on": "val", "num_val": int(len(labels)),
        "val_ece_before": expected_calibration_error(labels, raw) if len(labels) else None,
        "val_ece_after": expected_calibration_error(labels, calibrated) if len(labels) else None,
        "val_metrics": classification_metrics(labels, calibrated, threshold) if len(labels) else None,
    }
    write_json_atomic(out_dir / "calibration.json", calibration)
    log.info("validation: temperature %.3f, threshold %.3f (%s)", temperature, threshold,
             calibration["threshold_method"])
    return calibration
