import numpy as np
import pytest

from histoclass.evaluation.calibration import (apply_temperature, brier_score, expected_calibration_error,
                                    fit_temperature, reliability_bins)
from histoclass.errors import HistoclassError

# Five images, five bins of width 0.2:
#   bin [0.0, 0.2): p 0.05 (benign), 0.15 (malignant) -> mean 0.10, observed 1/2
#   bin [0.6, 0.8): p 0.62 (benign), 0.68 (malignant) -> mean 0.65, observed 1/2
#   bin [0.8, 1.0]: p 0.95 (malignant)                 -> mean 0.95, observed 1
LABELS = [0, 1, 0, 1, 1]
PROBS = [0.05, 0.15, 0.62, 0.68, 0.95]


def test_reliability_bins_by_hand():
    bins = reliability_bins(LABELS, PROBS, num_bins=5)
    np.testing.assert_allclose(bins["edges"], [0, 0.2, 0.4, 0.6, 0.8, 1.0])
    np.testing.assert_array_equal(bins["counts"], [2, 0, 0, 2, 1])
    np.testing.assert_allclose(bins["mean_predicted"], [0.10, np.nan, np.nan, 0.65, 0.95])
    np.testing.assert_allclose(bins["observed_fraction"], [0.5, np.nan, np.nan, 0.5, 1.0])


def test_probability_one_falls_in_the_last_bin():
    bins = reliability_bins([1, 0], [1.0, 0.0], num_bins=10)
    assert bins["counts"][-1] == 1 and bins["counts"][0] == 1


def test_expected_calibration_error_by_hand():
    # 2/5 * |0.5 - 0.10| + 2/5 * |0.5 - 0.65| + 1/5 * |1 - 0.95| = 0.16 + 0.06 + 0.01 = 0.23
    assert expected_calibration_error(LABELS, PROBS, num_bins=5) == pytest.approx(0.23)


def test_expected_calibration_error_is_zero_when_calibrated():
    # One bin, p = 0.25 everywhere, one in four malignant.
    assert expected_calibration_error([0, 0, 0, 1], [0.25] * 4) == pytest.approx(0.0)


def test_brier_score_by_hand():
    # (0.05^2 + 0.85^2 + 0.62^2 + 0.32^2 + 0.05^2) / 5
    # = (0.0025 + 0.7225 + 0.3844 + 0.1024 + 0.0025) / 5 = 1.2143 / 5
    assert brier_score(LABELS, PROBS) == pytest.approx(0.24286)


def test_softmax_output_is_accepted():
    softmax = np.stack([1 - np.array(PROBS), PROBS], axis=1)
    assert brier_score(LABELS, softmax) == pytest.approx(brier_score(LABELS, PROBS))


def _data_with_temperature(temperature, num_images=20000, seed=0):
    """Labels drawn from calibrated log-odds z; the model reports sigmoid(z * temperature),
    so dividing its log-odds by `temperature` calibrates it again."""
    rng = np.random.default_rng(seed)
    log_odds = rng.normal(0.0, 2.0, num_images)
    labels = (rng.random(num_images) < 1 / (1 + np.exp(-log_odds))).astype(int)
    return labels, 1 / (1 + np.exp(-log_odds * temperature))


@pytest.mark.parametrize("true_temperature", [0.5, 1.0, 2.5])
def test_fit_temperature_recovers_the_temperature(true_temperature):
    labels, probs = _data_with_temperature(true_temperature)
    assert fit_temperature(labels, probs) == pytest.approx(true_temperature, rel=0.05)


def test_temperature_scaling_lowers_calibration_error():
    labels, probs = _data_with_temperature(2.5)
    calibrated = apply_temperature(probs, fit_temperature(labels, probs))
    assert expected_calibration_error(labels, calibrated) < expected_calibration_error(labels, probs) / 5


def test_apply_temperature_by_hand():
    # p = 0.8: log-odds ln 4; at T = 2, ln 2 -> sigmoid(ln 2) = 2 / 3.
    np.testing.assert_allclose(apply_temperature([0.8, 0.5], 2.0), [2 / 3, 0.5])
    np.testing.assert_allclose(apply_temperature([0.1, 0.7], 1.0), [0.1, 0.7])


def test_all_half_probabilities_give_temperature_one():
    assert fit_temperature([0, 1, 1], [0.5, 0.5, 0.5]) == 1.0


@pytest.mark.parametrize("labels, probs, message", [
    ([0, 2], [0.1, 0.2], r"labels must be 0 \(benign\) or 1 \(malignant\), got \[2\]"),
    ([0, 1], [0.1, 1.5], r"must lie in \[0, 1\], got \[1.5\]"),
    ([0, 1, 1], [0.1, 0.2], "got 3 labels but 2 probabilities"),
    ([], [], "got no images"),
])
def test_bad_inputs_are_named(labels, probs, message):
    with pytest.raises(HistoclassError, match=message):
        brier_score(labels, probs)


def test_bad_temperature_and_bins_are_named():
    with pytest.raises(HistoclassError, match="temperature must be a positive number, got -1"):
        apply_temperature([0.5], -1)
    with pytest.raises(HistoclassError, match="num_bins must be a positive integer, got 0"):
        reliability_bins([0], [0.5], num_bins=0)
