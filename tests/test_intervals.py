import time

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from histoclass.errors import HistoclassError
from histoclass.evaluation.intervals import bootstrap_intervals


def accuracy(y_true, prob):
    return float(np.mean((np.asarray(prob) >= 0.5) == y_true))


def _predictions(num_images, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, num_images)
    probs = np.clip(0.35 * labels + 0.65 * rng.random(num_images), 0, 1)
    return labels, probs


def _width(interval):
    return interval.high - interval.low


def test_point_is_the_metric_on_all_data_and_lies_in_the_interval():
    labels, probs = _predictions(500)
    result = bootstrap_intervals(labels, probs, {"accuracy": accuracy, "auc": roc_auc_score},
                                 num_resamples=300)
    for name, metric in (("accuracy", accuracy), ("auc", roc_auc_score)):
        point, low, high = result[name]
        assert point == pytest.approx(metric(labels, probs))
        assert low <= point <= high
        assert result[name].num_resamples_used == 300


def test_interval_narrows_with_more_data():
    small = bootstrap_intervals(*_predictions(200), {"accuracy": accuracy}, num_resamples=400)
    large = bootstrap_intervals(*_predictions(5000), {"accuracy": accuracy}, num_resamples=400)
    # The width shrinks like 1 / sqrt(n): sqrt(5000 / 200) = 5.
    assert _width(large["accuracy"]) < _width(small["accuracy"]) / 3


def test_same_seed_same_interval():
    labels, probs = _predictions(300)
    first = bootstrap_intervals(labels, probs, {"accuracy": accuracy}, num_resamples=100, seed=3)
    second = bootstrap_intervals(labels, probs, {"accuracy": accuracy}, num_resamples=100, seed=3)
    assert first == second


def test_patient_bootstrap_is_wider_when_images_of_a_patient_agree():
    # 40 patients of 50 images; every image of a patient is right or wrong together, so there
    # are 40 independent outcomes, not 2000.
    rng = np.random.default_rng(1)
    patient_ids = np.repeat(np.arange(40), 50)
    labels = np.repeat(rng.integers(0, 2, 40), 50)
    patient_right = np.repeat(rng.random(40) < 0.7, 50)
    probs = np.where(patient_right == labels.astype(bool), 0.9, 0.1)
    by_image = bootstrap_intervals(labels, probs, {"accuracy": accuracy}, num_resamples=400)
    by_patient = bootstrap_intervals(labels, probs, {"accuracy": accuracy}, groups=patient_ids,
                                     num_resamples=400)
    assert _width(by_patient["accuracy"]) > 4 * _width(by_image["accuracy"])


def test_group_resamples_hold_whole_groups():
    # Group g has g + 1 images and prob g / 10, so each resample must hold a multiple of g + 1
    # images of prob g / 10.
    groups = np.repeat(np.arange(5), np.arange(1, 6))
    labels = np.zeros(len(groups), dtype=int)
    seen = []

    def record(y_true, prob):
        seen.append(np.asarray(prob).copy())
        return 0.0

    bootstrap_intervals(labels, groups / 10, {"record": record}, groups=groups, num_resamples=50)
    for resample in seen[1:]:
        values, counts = np.unique(np.round(resample * 10).astype(int), return_counts=True)
        assert np.all(counts % (values + 1) == 0)


def test_resamples_where_the_metric_is_undefined_are_skipped_and_counted():
    labels = np.zeros(20, dtype=int)
    labels[0] = 1  # a resample misses the one malignant image with probability (19/20)^20 = 36%
    probs = np.linspace(0, 1, 20)
    result = bootstrap_intervals(labels, probs, {"auc": roc_auc_score}, num_resamples=200)
    assert 80 < result["auc"].num_resamples_used < 180
    assert not np.isnan(result["auc"].low)


@pytest.mark.filterwarnings("ignore:Only one class")
def test_metric_undefined_on_all_data_is_an_error():
    def recall_or_none(y_true, prob):
        malignant = np.asarray(y_true) == 1
        return np.mean(np.asarray(prob)[malignant] >= 0.5) if malignant.any() else None

    with pytest.raises(HistoclassError, match=r"metric\(s\) \['recall'\] are undefined"):
        bootstrap_intervals([0, 0], [0.2, 0.5], {"recall": recall_or_none})
    with pytest.raises(HistoclassError, match=r"metric\(s\) \['auc'\] are undefined on the full data"):
        bootstrap_intervals([1, 1, 1], [0.2, 0.5, 0.9], {"auc": roc_auc_score})


@pytest.mark.parametrize("keywords, message", [
    ({"confidence": 1.5}, "confidence must be between 0 and 1, got 1.5"),
    ({"num_resamples": 0}, "num_resamples must be a positive integer, got 0"),
    ({"groups": [1, 2]}, r"groups must hold one id per image \(3\)"),
])
def test_bad_arguments_are_named(keywords, message):
    with pytest.raises(HistoclassError, match=message):
        bootstrap_intervals([0, 1, 1], [0.2, 0.5, 0.9], {"accuracy": accuracy}, **keywords)


def test_a_thousand_patient_resamples_of_fifty_thousand_images_take_seconds():
    labels, probs = _predictions(50_000)
    patient_ids = np.random.default_rng(0).integers(0, 300, 50_000)
    start = time.perf_counter()
    bootstrap_intervals(labels, probs, {"accuracy": accuracy}, groups=patient_ids, num_resamples=1000)
    assert time.perf_counter() - start < 5.0  # about 0.3 s on a laptop core
