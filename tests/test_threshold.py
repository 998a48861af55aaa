import numpy as np
import pytest
from sklearn.metrics import roc_curve

from histoclass.errors import HistoclassError
from histoclass.evaluation.threshold import choose_threshold, f1_threshold, threshold_for_sensitivity, youden_threshold

# Three benign (0.1, 0.3, 0.4) and three malignant (0.35, 0.6, 0.8) images. Thresholds, highest
# first, with true / false positives at or above them, sensitivity, specificity and Youden's J:
#   0.8:  TP 1, FP 0 -> sens 1/3, spec 1   -> J 1/3
#   0.6:  TP 2, FP 0 -> sens 2/3, spec 1   -> J 2/3
#   0.4:  TP 2, FP 1 -> sens 2/3, spec 2/3 -> J 1/3
#   0.35: TP 3, FP 1 -> sens 1,   spec 2/3 -> J 2/3
#   0.3:  TP 3, FP 2 -> J 1/3;  0.1: TP 3, FP 3 -> J 0
LABELS = [0, 0, 1, 0, 1, 1]
PROBS = [0.1, 0.3, 0.35, 0.4, 0.6, 0.8]


def test_youden_tie_goes_to_the_threshold_closest_to_half():
    # J = 2/3 on (0.4, 0.6] and on (0.3, 0.35]; the first holds 0.5 itself, the second's best
    # value is its midpoint 0.325.
    assert youden_threshold(LABELS, PROBS) == 0.5


def test_youden_tie_at_equal_distance_goes_to_the_higher_threshold():
    # J = 1/2 on (0.5, 0.75] (TP 1, FP 0) and on (0.1, 0.25] (TP 2, FP 1): midpoints 0.625
    # and 0.175; 0.625 is closer to 0.5.
    assert youden_threshold([0, 1, 0, 1], [0.1, 0.25, 0.5, 0.75]) == 0.625


def test_youden_keeps_a_margin_when_probabilities_saturate():
    # Perfectly separated, saturated validation scores: any threshold in (0, 1] separates them;
    # 0.5, not 1.0 (which would call a test image at 0.9999 benign).
    assert youden_threshold([0, 0, 1, 1], [0.0, 0.0, 1.0, 1.0]) == 0.5
    assert youden_threshold([0, 0, 1, 1], [0.7, 0.72, 0.9, 0.95]) == pytest.approx(0.81)


def test_youden_matches_the_roc_curve_on_random_data():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 3000)
    probs = np.round(np.clip(0.3 * labels + 0.7 * rng.random(3000), 0, 1), 3)
    false_positive_rate, true_positive_rate, thresholds = roc_curve(labels, probs)
    best = np.max(true_positive_rate - false_positive_rate)
    threshold = youden_threshold(labels, probs)
    predicted = probs >= threshold
    youden = predicted[labels == 1].mean() + (~predicted[labels == 0]).mean() - 1
    assert youden == pytest.approx(best)
    assert 0.0 <= threshold <= 1.0


def test_youden_is_finite_when_every_threshold_ties():
    # A useless model: J = 0 on (0.2, 0.9] and on (0, 0.2]; 0.5 lies in the first.
    assert youden_threshold([0, 1, 0, 1], [0.9, 0.9, 0.2, 0.2]) == 0.5


def test_f1_threshold_golden():
    # 3 malignant among 12. From the top: at 0.85 tp 2, fp 0: F1 = 4/5 (Youden's J 2/3); at 0.4
    # tp 3, fp 2: F1 = 6/8 (J 7/9). F1 keeps (0.6, 0.85], whose middle is 0.725; Youden buys the
    # third malignant image with two false calls and keeps (0.3, 0.4].
    labels = [1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0]
    probs = [0.9, 0.85, 0.6, 0.55, 0.4, 0.3, 0.25, 0.2, 0.15, 0.1, 0.05, 0.02]
    assert f1_threshold(labels, probs) == pytest.approx(0.725)
    assert youden_threshold(labels, probs) == pytest.approx(0.35)
    assert choose_threshold(labels, probs, "f1")["method"] == "f1"
    # a tie in exact counts (F1 2/3 at 0.9 and at 0.2) goes, as Youden's, to the value nearest
    # 0.5: 0.85, the middle of (0.8, 0.9], against 0.1, of (0, 0.2]
    assert f1_threshold([1, 0, 0, 1], [0.9, 0.8, 0.7, 0.2]) == pytest.approx(0.85)


def test_f1_threshold_is_the_best_f1_on_random_data():
    from sklearn.metrics import f1_score, precision_recall_curve
    rng = np.random.default_rng(1)
    labels = (rng.random(3000) < 0.25).astype(int)
    probs = np.round(np.clip(0.3 * labels + 0.7 * rng.random(3000), 0, 1), 3)
    precision, recall, _ = precision_recall_curve(labels, probs)
    best = np.max(2 * precision * recall / np.maximum(precision + recall, 1e-12))
    threshold = f1_threshold(labels, probs)
    assert f1_score(labels, probs >= threshold) == pytest.approx(best)


@pytest.mark.parametrize("target, expected", [(0.5, 0.6), (2 / 3, 0.6), (0.7, 0.35), (1.0, 0.35)])
def test_threshold_for_sensitivity_is_the_highest_that_reaches_it(target, expected):
    assert threshold_for_sensitivity(LABELS, PROBS, target) == expected


def test_choose_threshold_reports_sensitivity_and_specificity():
    assert choose_threshold(LABELS, PROBS) == {
        "threshold": 0.5, "method": "youden", "target_sensitivity": None,
        "sensitivity": pytest.approx(2 / 3), "specificity": 1.0}
    assert choose_threshold(LABELS, PROBS, "sensitivity", target_sensitivity=0.9) == {
        "threshold": 0.35, "method": "sensitivity", "target_sensitivity": 0.9, "sensitivity": 1.0,
        "specificity": pytest.approx(2 / 3)}


def test_one_class_only_is_a_clear_error():
    with pytest.raises(HistoclassError, match=r"needs both benign \(0\) and malignant \(1\) images, "
                                              r"but it holds only malignant images \(3\)"):
        choose_threshold([1, 1, 1], [0.2, 0.5, 0.9])


@pytest.mark.parametrize("keywords, message", [
    ({"method": "dice"}, "unknown threshold method 'dice'; choose one of youden, f1, sensitivity"),
    ({"method": "sensitivity"}, "method 'sensitivity' needs target_sensitivity"),
    ({"method": "youden", "target_sensitivity": 0.9}, "only used with method='sensitivity'"),
    ({"method": "sensitivity", "target_sensitivity": 1.2}, r"must be in \(0, 1\], got 1.2"),
])
def test_bad_arguments_are_named(keywords, message):
    with pytest.raises(HistoclassError, match=message):
        choose_threshold(LABELS, PROBS, **keywords)
