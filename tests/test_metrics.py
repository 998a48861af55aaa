import numpy as np
import pytest

from histoclass.evaluation.metrics import classification_metrics


def test_golden_numbers():
    # 10 images: truth 4 malignant; predictions at 0.5 give tp=3, fn=1, fp=2, tn=4.
    y = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
    p = np.array([0.9, 0.8, 0.6, 0.4, 0.7, 0.55, 0.3, 0.2, 0.1, 0.45])
    m = classification_metrics(y, p, 0.5)
    assert m["confusion_matrix"] == [[4, 2], [1, 3]]
    assert m["accuracy"] == pytest.approx(7 / 10)
    assert m["precision"] == pytest.approx(3 / 5)
    assert m["recall"] == pytest.approx(3 / 4)
    assert m["specificity"] == pytest.approx(4 / 6)
    assert m["f1"] == pytest.approx(2 * 3 / (2 * 3 + 2 + 1))
    assert m["balanced_accuracy"] == pytest.approx((3 / 4 + 4 / 6) / 2)
    # AUC: of 24 (pos, neg) pairs, the positive ranks higher in all but (0.4 vs 0.7),
    # (0.4 vs 0.55), (0.4 vs 0.45), (0.6 vs 0.7): 20/24.
    assert m["roc_auc"] == pytest.approx(20 / 24)
    assert m["n"] == 10 and m["threshold"] == 0.5


def test_undefined_metrics_are_none():
    m = classification_metrics(np.zeros(3, int), np.array([0.1, 0.2, 0.9]))
    assert m["roc_auc"] is None and m["recall"] is None
    assert m["specificity"] == pytest.approx(2 / 3)
