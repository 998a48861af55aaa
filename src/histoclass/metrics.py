"""Classification metrics with malignant (1) as the positive class. Pure functions."""
from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score


def confusion_counts(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[int, int, int, int]:
    """(tn, fp, fn, tp)."""
    y_true = np.asarray(y_true).astype(bool)
    y_pred = np.asarray(y_pred).astype(bool)
    return (int((~y_true & ~y_pred).sum()), int((~y_true & y_pred).sum()),
            int((y_true & ~y_pred).sum()), int((y_true & y_pred).sum()))


def _ratio(numerator: float, denominator: float) -> float | None:
    return numerator / denominator if denominator else None


def classification_metrics(y_true, prob_malignant, threshold: float = 0.5) -> dict:
    """The metrics a report needs at one threshold; None where a metric is undefined (e.g.
    recall without positives, ROC-AUC with one class)."""
    y_true = np.asarray(y_true).astype(int)
    prob = np.asarray(prob_malignant, dtype=float)
    if y_true.shape != prob.shape:
        raise ValueError(f"y_true {y_true.shape} and prob_malignant {prob.shape} differ in shape")
    y_pred = (prob >= threshold).astype(int)
    tn, fp, fn, tp = confusion_counts(y_true, y_pred)
    precision = _ratio(tp, tp + fp)
    recall = _ratio(tp, tp + fn)
    specificity = _ratio(tn, tn + fp)
    f1 = _ratio(2 * tp, 2 * tp + fp + fn)
    balanced = None if recall is None or specificity is None else (recall + specificity) / 2
    both_classes = 0 < y_true.sum() < len(y_true)
    return {
        "n": int(len(y_true)),
        "num_malignant": int(y_true.sum()),
        "threshold": float(threshold),
        "accuracy": _ratio(tp + tn, len(y_true)),
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "specificity": specificity,
        "balanced_accuracy": balanced,
        "roc_auc": float(roc_auc_score(y_true, prob)) if both_classes else None,
        "confusion_matrix": [[tn, fp], [fn, tp]],
    }


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
    """Fast metric functions `(y_true, prob) -> float` for resampling loops: each computes only
    its own number (a bootstrap calls them thousands of times)."""
    def at_threshold(name):
        def compute(y_true, prob):
            tn, fp, fn, tp = confusion_counts(y_true, np.asarray(prob) >= threshold)
            value = {"accuracy": _ratio(tp + tn, tn + fp + fn + tp), "precision": _ratio(tp, tp + fp),
                     "recall": _ratio(tp, tp + fn), "specificity": _ratio(tn, tn + fp),
                     "f1": _ratio(2 * tp, 2 * tp + fp + fn)}.get(name)
            if name == "balanced_accuracy":
                recall, specificity = _ratio(tp, tp + fn), _ratio(tn, tn + fp)
                value = None if recall is None or specificity is None else (recall + specificity) / 2
            return float("nan") if value is None else value
        return compute

    def roc_auc(y_true, prob):
        y_true = np.asarray(y_true)
        return float(roc_auc_score(y_true, prob)) if 0 < y_true.sum() < len(y_true) else float("nan")

    return {name: roc_auc if name == "roc_auc" else at_threshold(name) for name in names}
