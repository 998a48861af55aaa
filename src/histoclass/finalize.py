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


def finalize_run(out_dir: Path, config: TrainConfig, data, monitor: str) -> dict:
    """Writes calibration.json from the best model's validation predictions.

    The temperature is fitted first and the threshold chosen on the calibrated probabilities,
    since those are what `predict` reports and thresholds.
    """
    model = load_model(out_dir / "model.keras")
    val_idx = data.indices("val")
    labels = data.labels[val_idx]
    raw = predict_probabilities(model, data.images, val_idx,
                                test_time_augmentation=config.test_time_augmentation)
    both = len(np.unique(labels)) == 2
    temperature = fit_temperature(labels, raw) if both else 1.0
    calibrated = apply_temperature(raw, temperature)
    if config.threshold_method == "youden" and both:
        threshold = float(choose_threshold(labels, calibrated, method="youden")["threshold"])
    else:
        threshold = 0.5
    calibration = {
        "temperature": float(temperature), "threshold": threshold,
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
