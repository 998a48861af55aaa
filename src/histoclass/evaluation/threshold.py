"""Choosing the prob_malignant threshold above which an image is called malignant.

An image is predicted malignant when prob_malignant >= threshold. Choose the threshold on
validation data, then report test metrics at that fixed threshold.
"""

import logging

import numpy as np

from ..errors import HistoclassError
from .calibration import validate_predictions
from .metrics import confusion_counts, rates, require_both_classes

logger = logging.getLogger(__name__)

THRESHOLD_METHODS = ("youden", "f1", "sensitivity")


def _roc_counts(y_true, prob) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, int]:
    """Each distinct probability as a threshold, highest first, with the number of malignant
    (true positives) and benign (false positives) images at or above it."""
    y, p = validate_predictions(y_true, prob)
    require_both_classes(y, "choosing a threshold")
    num_malignant = int(y.sum())
    num_benign = len(y) - num_malignant
    order = np.argsort(-p, kind="stable")
    p, y = p[order], y[order]
    # The last image of each run of equal probabilities closes that threshold's count.
    last_of_value = np.r_[np.flatnonzero(np.diff(p)), len(p) - 1]
    true_positives = np.cumsum(y)[last_of_value]
    false_positives = (last_of_value + 1) - true_positives
    return p[last_of_value], true_positives, false_positives, num_malignant, num_benign


def youden_threshold(y_true, prob) -> float:
    """The threshold that maximises Youden's J = sensitivity + specificity - 1.

    Each distinct value t of prob_malignant, with the next lower value l, stands for the
    interval (l, t] of thresholds that classify the validation images alike. Within the best
    interval the threshold is 0.5 where the interval holds it, else the interval's midpoint:
    never a value an image sits exactly on, so a new image a hair below the lowest malignant
    score is not called benign (with probabilities saturated at 0 and 1, the chosen value is 0.5,
    not 1). Ties in J are compared exactly (integer counts) and broken in favour of the value
    closest to 0.5, then of the higher one.
    """
    thresholds, true_positives, false_positives, num_malignant, num_benign = _roc_counts(y_true, prob)
    # J * num_malignant * num_benign, exact in integers: TP * N_benign - FP * N_malignant.
    scaled_youden = true_positives * num_benign - false_positives * num_malignant
    tied = np.flatnonzero(scaled_youden == scaled_youden.max())
    upper = thresholds[tied]
    lower = np.append(thresholds, 0.0)[tied + 1]  # below the lowest score: down to 0
    inside = (lower < 0.5) & (0.5 <= upper)
    candidates = np.where(inside, 0.5, (lower + upper) / 2)
    # candidates follow the thresholds' decreasing order: the first of the closest is the higher.
    return float(candidates[np.argmin(np.abs(candidates - 0.5))])


def f1_threshold(y_true, prob) -> float:
    """The threshold that maximises F1 (for tiles of a slide: Dice) = 2 TP / (TP + FP + P).

    Youden's J weighs the two classes alike whatever their shares; where malignant images are
    the minority, its threshold sits low and buys sensitivity with many false malignant calls,
    which F1 counts. Intervals, ties and the value within the best interval as for
    `youden_threshold`: F1 is compared exactly (integer cross-products).
    """
    thresholds, true_positives, false_positives, num_malignant, _ = _roc_counts(y_true, prob)
    numerator = 2 * true_positives.astype(np.int64)
    denominator = (true_positives + false_positives + num_malignant).astype(np.int64)
    best = int(np.argmax(numerator / denominator))
    tied = np.flatnonzero(numerator * denominator[best] == numerator[best] * denominator)
    upper = thresholds[tied]
    lower = np.append(thresholds, 0.0)[tied + 1]
    inside = (lower < 0.5) & (0.5 <= upper)
    candidates = np.where(inside, 0.5, (lower + upper) / 2)
    return float(candidates[np.argmin(np.abs(candidates - 0.5))])


def threshold_for_sensitivity(y_true, prob, target: float) -> float:
    """The highest threshold whose sensitivity (recall of malignant images) is >= target.

    The threshold is one of the values of prob_malignant; the highest one keeps specificity as
    high as the target allows.
    """
    if not 0 < target <= 1:
        raise HistoclassError(
            f"target sensitivity must be in (0, 1], got {target!r}; e.g. 0.95 to miss at most "
            "5% of malignant images"
        )
    thresholds, true_positives, _, num_malignant, _ = _roc_counts(y_true, prob)
    reached = true_positives / num_malignant >= target
    # The lowest threshold catches every malignant image, so reached[-1] is True.
    return float(thresholds[np.argmax(reached)])


def sensitivity_and_specificity(y_true, prob, threshold: float) -> tuple[float, float]:
    """Sensitivity and specificity when images with prob_malignant >= threshold are called
    malignant."""
    y, p = validate_predictions(y_true, prob)
    found = rates(*confusion_counts(y, p >= threshold))
    # A class that is absent is missed by nobody: 0, as a sum over no images.
    return float(found["recall"] or 0.0), float(found["specificity"] or 0.0)


def choose_threshold(y_true, prob, method: str = "youden", target_sensitivity: float | None = None) -> dict:
    """Choose a threshold by `method` and report it with the sensitivity and specificity it gives.

    method "youden": `youden_threshold`; "f1": `f1_threshold`; "sensitivity":
    `threshold_for_sensitivity` with `target_sensitivity`. Returns {"threshold", "method",
    "target_sensitivity" (None for the others), "sensitivity", "specificity"}; the last two are
    those reached on this data.
    """
    if method not in THRESHOLD_METHODS:
        raise HistoclassError(
            f"unknown threshold method {method!r}; choose one of {', '.join(THRESHOLD_METHODS)}"
        )
    if method == "sensitivity":
        if target_sensitivity is None:
            raise HistoclassError(
                "method 'sensitivity' needs target_sensitivity, e.g. target_sensitivity=0.95"
            )
        threshold = threshold_for_sensitivity(y_true, prob, target_sensitivity)
    else:
        if target_sensitivity is not None:
            raise HistoclassError(
                f"target_sensitivity={target_sensitivity!r} is only used with method='sensitivity'; "
                "drop it or switch the method"
            )
        threshold = f1_threshold(y_true, prob) if method == "f1" else youden_threshold(y_true, prob)
    sensitivity, specificity = sensitivity_and_specificity(y_true, prob, threshold)
    logger.info("threshold %.4f by %s: sensitivity %.3f, specificity %.3f",
                threshold, method, sensitivity, specificity)
    return {"threshold": threshold, "method": method, "target_sensitivity": target_sensitivity,
            "sensitivity": sensitivity, "specificity": specificity}
