"""Classification metrics with malignant (1) as the positive class: the one set of formulas that
every caller (evaluate, report, bootstrap, training callbacks, threshold choice) uses. Pure."""
from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score

from ..errors import HistoclassError

RATE_METRICS = ("accuracy", "balanced_accuracy", "precision", "recall", "specificity", "f1")


def has_both_classes(labels) -> bool:
    """Whether `labels` (0/1) hold at least one benign and one malignant image."""
    labels = np.asarray(labels)
    return bool(0 < labels.sum() < len(labels))


def require_both_classes(labels, what: str) -> None:
    """Raises a HistoclassError naming `what` when `labels` lack one of the two classes."""
    labels = np.asarray(labels)
    if not has_both_classes(labels):
        present = ("no images" if not len(labels) else
                   f"holds only {'malignant' if labels.sum() else 'benign'} images ({len(labels)})")
        raise HistoclassError(f"{what} needs both benign (0) and malignant (1) images, but it "
                              f"{present}; use data that holds both classes")


def confusion_counts(y_true, y_pred) -> tuple[int, int, int, int]:
    """(tn, fp, fn, tp)."""
    y_true = np.asarray(y_true).astype(bool)
    y_pred = np.asarray(y_pred).astype(bool)
    return (int((~y_true & ~y_pred).sum()), int((~y_true & y_pred).sum()),
            int((y_true & ~y_pred).sum()), int((y_true & y_pred).sum()))


def _ratio(numerator: float, denominator: float) -> float | None:
    return numerator / denominator if denominator else None


def rates(tn: int, fp: int, fn: int, tp: int) -> dict[str, float | None]:
    """The threshold metrics from confusion counts; None where a denominator is 0."""
    recall, specificity = _ratio(tp, tp + fn), _ratio(tn, tn + fp)
    return {
        "accuracy": _ratio(tp + tn, tn + fp + fn + tp),
        "balanced_accuracy": None if recall is None or specificity is None else (recall + specificity) / 2,
        "precision": _ratio(tp, tp + fp),
        "recall": recall,
        "specificity": specificity,
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
    }


def roc_auc(y_true, prob) -> float | None:
    """ROC-AUC, or None with one class only."""
    return float(roc_auc_score(y_true, prob)) if has_both_classes(y_true) else None


def classification_metrics(y_true, prob_malignant, threshold: float = 0.5) -> dict:
    """The metrics a report needs at one threshold; None where a metric is undefined (e.g.
    recall without positives, ROC-AUC with one class)."""
    y_true = np.asarray(y_true).astype(int)
    prob = np.asarray(prob_malignant, dtype=float)
    if y_true.shape != prob.shape:
        raise HistoclassError(f"y_true {y_true.shape} and prob_malignant {prob.shape} differ in shape; "
                              "pass one probability per label")
    tn, fp, fn, tp = confusion_counts(y_true, prob >= threshold)
    return {"n": int(len(y_true)), "num_malignant": int(y_true.sum()), "threshold": float(threshold),
            **rates(tn, fp, fn, tp), "roc_auc": roc_auc(y_true, prob),
            "confusion_matrix": [[tn, fp], [fn, tp]]}


def format_table(metrics: dict, names=("accuracy", "balanced_accuracy", "precision", "recall",
                                       "specificity", "f1", "roc_auc")) -> str:
    lines = [f"{'metric':<20}{'value':>8}"]
    for name in names:
        value = metrics.get(name)
        lines.append(f"{name:<20}{'n/a' if value is None else f'{value:.4f}':>8}")
    (tn, fp), (fn, tp) = metrics["confusion_matrix"]
    lines.append(f"{'threshold':<20}{metrics['threshold']:>8.4f}")
    lines.append(f"{'n':<20}{metrics['n']:>8}")
    lines.append(f"confusion (rows true benign/malignant): [[{tn} {fp}] [{fn} {tp}]]")
    return "\n".join(lines)


def metric_functions(threshold: float, names) -> dict:
    """Metric functions `(y_true, prob) -> float` (NaN where undefined) for resampling loops:
    each computes only its own number, with the formulas of `rates` and `roc_auc`."""
    unknown = set(names) - set(RATE_METRICS) - {"roc_auc"}
    if unknown:
        raise HistoclassError(f"unknown metric(s) {sorted(unknown)}; choose from "
                              f"{', '.join(RATE_METRICS + ('roc_auc',))}")

    def at_threshold(name):
        def compute(y_true, prob):
            value = rates(*confusion_counts(y_true, np.asarray(prob) >= threshold))[name]
            return float("nan") if value is None else value
        return compute

    def auc(y_true, prob):
        value = roc_auc(y_true, prob)
        return float("nan") if value is None else value

    return {name: auc if name == "roc_auc" else at_threshold(name) for name in names}
