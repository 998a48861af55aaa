"""Golden numbers for what training fits on validation: prior shift, temperature, threshold."""
import numpy as np
import pytest

from histoclass.config import TrainConfig
from histoclass.evaluation.calibration import calibrate
from histoclass.evaluation.metrics import classification_metrics, metric_functions
from histoclass.training.finalize import fit_calibration

# Six validation images; sorted by the model's probability the labels read 0 1 0 0 1 1, so
# Youden's J is best (2/3) for thresholds between the images at 0.6 and 0.8.
VAL_LABELS = np.array([0, 0, 0, 1, 1, 1])
VAL_PROB = np.array([0.1, 0.4, 0.6, 0.3, 0.8, 0.9])
TRAIN_LABELS = np.array([0, 0, 0, 1])  # class weights 2/3 and 2: malignant weighs 3 times as much


def test_class_weights_shift_the_log_odds_by_the_log_of_their_ratio():
    fitted = fit_calibration(VAL_LABELS, VAL_PROB, TRAIN_LABELS, TrainConfig())
    assert fitted["prior_shift"] == pytest.approx(np.log(3), abs=1e-12)
    # The temperature minimising the NLL of sigmoid((logit p - log 3) / T), found by a
    # 2,000,001-point grid over log T in [log 0.01, log 100]: 1.53735 (grid step 1e-5 relative).
    assert fitted["temperature"] == pytest.approx(1.537347, rel=2e-5)
    # Calibrated, the image at 0.6 falls to 0.389 and the one at 0.8 to 0.547: 0.5 lies inside the
    # best interval, so the threshold is 0.5.
    assert fitted["threshold"] == 0.5 and fitted["threshold_method"] == "youden"
    assert fitted["val_metrics"]["confusion_matrix"] == [[3, 0], [1, 2]]


def test_without_class_weights_the_threshold_is_the_best_intervals_midpoint():
    fitted = fit_calibration(VAL_LABELS, VAL_PROB, TRAIN_LABELS, TrainConfig(class_weighting=False))
    assert fitted["prior_shift"] == 0.0
    assert fitted["temperature"] == pytest.approx(0.970081, rel=2e-5)  # same grid search
    calibrated = calibrate(VAL_PROB, fitted["temperature"])
    assert calibrated[2] > 0.5  # 0.603: 0.5 is outside the best interval (0.603, 0.807]
    assert fitted["threshold"] == pytest.approx((calibrated[2] + calibrated[4]) / 2, abs=1e-12)
    assert fitted["threshold"] == pytest.approx(0.704875, abs=1e-5)


def test_fixed_threshold_method_keeps_half():
    fitted = fit_calibration(VAL_LABELS, VAL_PROB, TRAIN_LABELS, TrainConfig(threshold_method="fixed"))
    assert fitted["threshold"] == 0.5 and fitted["threshold_method"] == "fixed"
    assert fitted["reason"] is None  # asked for, not fallen back to


def test_f1_threshold_method_keeps_the_interval_of_maximum_f1():
    # 3 malignant of 12 (tests/test_threshold.py's golden set): maximum F1 keeps the interval
    # between the images at 0.6 and 0.85, Youden the one between 0.3 and 0.4; calibration keeps
    # the order, so the thresholds are those intervals' midpoints on the calibrated scale.
    labels = np.array([1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0])
    prob = np.array([0.9, 0.85, 0.6, 0.55, 0.4, 0.3, 0.25, 0.2, 0.15, 0.1, 0.05, 0.02])
    for method, (low, high) in (("f1", (2, 1)), ("youden", (5, 4))):
        fitted = fit_calibration(labels, prob, labels, TrainConfig(class_weighting=False, threshold_method=method))
        calibrated = calibrate(prob, fitted["temperature"])
        assert fitted["threshold_method"] == method
        assert fitted["threshold"] == pytest.approx((calibrated[low] + calibrated[high]) / 2, abs=1e-12)


def test_one_class_validation_keeps_the_identity_and_half():
    fitted = fit_calibration(np.ones(3, int), np.array([0.2, 0.7, 0.9]), TRAIN_LABELS,
                             TrainConfig(class_weighting=False))
    assert (fitted["temperature"], fitted["threshold"], fitted["threshold_method"]) == (1.0, 0.5, "fixed")
    assert fitted["reason"] == ("the validation part holds only malignant images (3): a temperature and a "
                                "threshold need both classes, so temperature 1 (none) and the fixed threshold "
                                "0.5 are used")


@pytest.mark.parametrize("threshold", [0.0, 0.3, 0.5, 0.77, 1.0])
def test_metric_functions_equal_classification_metrics(threshold):
    rng = np.random.default_rng(11)
    labels = rng.integers(0, 2, 200)
    prob = np.clip(labels * 0.3 + rng.random(200) * 0.7, 0, 1)
    names = ("accuracy", "balanced_accuracy", "precision", "recall", "specificity", "f1", "roc_auc")
    full = classification_metrics(labels, prob, threshold)
    for name, fn in metric_functions(threshold, names).items():
        expected = full[name]
        value = fn(labels, prob)
        if expected is None:
            assert np.isnan(value), name
        else:
            assert value == expected, name
