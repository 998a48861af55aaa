"""Figures for the evaluation report. Each `plot_*` draws on the Axes (or Figure) it is given, or on
a new one, and returns it; none shows or saves. `save_figure` is the one function that writes.

New figures are plain `matplotlib.figure.Figure` objects on an Agg canvas, not pyplot figures:
nothing global is touched, so this works headless and leaves an interactive session's backend
alone. In a notebook, pass `ax` from `plt.subplots()` to have the figure shown.
"""

import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.collections import LineCollection
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator
from sklearn.metrics import (average_precision_score, precision_recall_curve, roc_auc_score,
                             roc_curve)

from histoclass import CLASS_NAMES
from histoclass.evaluation.calibration import calibration_error_from_bins, validate_predictions
from histoclass.evaluation.metrics import require_both_classes
from histoclass.errors import HistoclassError
from histoclass.fileio import atomic_path
from histoclass.explain.heatmap import region_outline
from histoclass.evaluation.threshold import sensitivity_and_specificity

logger = logging.getLogger(__name__)

CLASS_COLORS = ("#4c72b0", "#c44e52")  # benign, malignant
ERROR_COLOR = "#d62728"
OUTLINE_COLOR = "#00e5ff"


def new_figure(width: float, height: float) -> Figure:
    """An empty figure (inches) with constrained layout on an Agg canvas, outside pyplot."""
    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _axes_or_new(ax: Axes | None, figsize: tuple[float, float] = (5.0, 4.5)) -> Axes:
    return ax if ax is not None else new_figure(*figsize).add_subplot()


def _require_both_classes(y_true, prob, what: str) -> tuple[np.ndarray, np.ndarray]:
    y, p = validate_predictions(y_true, prob)
    require_both_classes(y, what)
    return y, p


def plot_confusion_matrix(cm, class_names: Sequence[str] = CLASS_NAMES, ax: Axes | None = None) -> Axes:
    """The confusion matrix (rows true, columns predicted) with counts and row percentages."""
    cm = np.asarray(cm)
    if cm.shape != (len(class_names), len(class_names)):
        raise HistoclassError(
            f"confusion matrix of shape {cm.shape} does not match {len(class_names)} class names "
            f"{list(class_names)}"
        )
    ax = _axes_or_new(ax, (4.8, 4.2))
    image = ax.imshow(cm, cmap="Blues", vmin=0)
    row_totals = cm.sum(axis=1, keepdims=True)
    row_fractions = np.divide(cm, row_totals, out=np.zeros(cm.shape), where=row_totals > 0)
    dark_threshold = cm.max() / 2.0
    for (row, column), count in np.ndenumerate(cm):
        ax.text(column, row, f"{count:,}\n({row_fractions[row, column]:.1%})", ha="center",
                va="center", color="white" if count > dark_threshold else "black")
    ticks = np.arange(len(class_names))
    ax.set_xticks(ticks, labels=class_names)
    ax.set_yticks(ticks, labels=class_names)
    ax.set_xlabel("Predicted label")
    ax.set_ylabel("True label")
    ax.set_title("Confusion matrix")
    ax.figure.colorbar(image, ax=ax, label="images", shrink=0.8)
    return ax


def plot_roc(y_true, prob, ax: Axes | None = None, *, threshold: float | None = None,
             label: str = "model") -> Axes:
    """The ROC curve with its AUC in the legend; `threshold`, if given, is marked on the curve."""
    y, p = _require_both_classes(y_true, prob, "an ROC curve")
    ax = _axes_or_new(ax)
    false_positive_rate, true_positive_rate, _ = roc_curve(y, p)
    ax.plot(false_positive_rate, true_positive_rate, color=CLASS_COLORS[1], lw=2,
            label=f"{label} (AUC = {roc_auc_score(y, p):.3f})")
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="chance")
    if threshold is not None:
        sensitivity, specificity = sensitivity_and_specificity(y, p, threshold)
        ax.plot(1 - specificity, sensitivity, "o", color="black",
                label=f"threshold {threshold:.2f} (sens. {sensitivity:.2f}, spec. {specificity:.2f})")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="False positive rate (1 - specificity)",
           ylabel="True positive rate (sensitivity)", title="ROC curve")
    ax.set_aspect("equal")
    ax.legend(loc="lower right")
    return ax


def plot_fold_rocs(curves: Sequence[tuple[str, np.ndarray, np.ndarray]], ax: Axes | None = None) -> Axes:
    """One ROC curve per cross-validation fold, `curves` as (label, y_true, prob) each, with
    each fold's AUC in the legend."""
    ax = _axes_or_new(ax)
    colors = colormaps["tab10"]
    for index, (label, y_true, prob) in enumerate(curves):
        y, p = _require_both_classes(y_true, prob, "an ROC curve")
        false_positive_rate, true_positive_rate, _ = roc_curve(y, p)
        ax.plot(false_positive_rate, true_positive_rate, color=colors(index % 10), lw=1.5,
                label=f"{label} (AUC = {roc_auc_score(y, p):.3f})")
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="chance")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="False positive rate (1 - specificity)",
           ylabel="True positive rate (sensitivity)", title="ROC curve of each fold (out of fold)")
    ax.set_aspect("equal")
    ax.legend(loc="lower right", fontsize="small")
    return ax


def plot_precision_recall(y_true, prob, ax: Axes | None = None, *, label: str = "model") -> Axes:
    """The precision-recall curve of the malignant class, with average precision (AP) in the
    legend and the prevalence as the chance level."""
    y, p = _require_both_classes(y_true, prob, "a precision-recall curve")
    ax = _axes_or_new(ax)
    precision, recall, _ = precision_recall_curve(y, p)
    ax.step(recall, precision, where="post", color=CLASS_COLORS[1], lw=2,
            label=f"{label} (AP = {average_precision_score(y, p):.3f})")
    prevalence = y.mean()
    ax.axhline(prevalence, ls="--", color="grey", lw=1, label=f"chance (prevalence {prevalence:.2f})")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="Recall (sensitivity)", ylabel="Precision",
           title="Precision-recall curve")
    ax.set_aspect("equal")
    ax.legend(loc="lower left")
    return ax


def plot_reliability(bins_before: dict, bins_after: dict | None = None, ax: Axes | None = None, *,
                     labels: tuple[str, str] = ("model", "temperature-scaled")) -> Axes:
    """Reliability diagram from `calibration.reliability_bins`: observed malignant fraction
    against mean predicted prob_malignant per bin, each curve labelled with its ECE. Marker area
    shows how many images a bin holds, so a wild point from a nearly empty bin reads as such."""
    ax = _axes_or_new(ax, (5.0, 5.6))
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="perfectly calibrated")
    curves = [(bins_before, labels[0], "o", CLASS_COLORS[1])]
    if bins_after is not None:
        curves.append((bins_after, labels[1], "s", CLASS_COLORS[0]))
    largest_bin = max(bins["counts"].max() for bins, *_ in curves)
    for bins, label, marker, color in curves:
        filled = bins["counts"] > 0
        mean_predicted, observed = bins["mean_predicted"][filled], bins["observed_fraction"][filled]
        ax.plot(mean_predicted, observed, color=color, lw=1.5, marker=marker, ms=3,
                label=f"{label} (ECE = {calibration_error_from_bins(bins):.3f})")
        ax.scatter(mean_predicted, observed, s=15 + 185 * bins["counts"][filled] / largest_bin,
                   marker=marker, color=color, alpha=0.6, edgecolors="none")
    ax.set(xlim=(-0.02, 1.02), ylim=(-0.02, 1.02), xlabel="Mean predicted probability of malignancy",
           ylabel="Observed fraction malignant", title="Reliability diagram")
    ax.set_aspect("equal")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), fontsize=8, ncols=1,
              title="marker area: images in the bin", title_fontsize=8)
    return ax


def plot_training_curves(history: dict[str, list[float]], axes: Sequence[Axes] | None = None) -> list[Axes]:
    """One panel per metric of a Keras `History.history` dict (loss first), training against
    validation ("val_" keys). Returns the Axes used, one per metric."""
    metric_names = []
    for key in history:
        name = key.removeprefix("val_")
        if name not in metric_names:
            metric_names.append(name)
    if not metric_names:
        raise HistoclassError("the training history is empty; pass History.history from model.fit")
    metric_names.sort(key=lambda name: name != "loss")
    if axes is None:
        figure = new_figure(4.2 * len(metric_names), 3.6)
        axes = list(figure.subplots(1, len(metric_names), squeeze=False)[0])
    elif len(axes) < len(metric_names):
        raise HistoclassError(
            f"got {len(axes)} axes for {len(metric_names)} metrics {metric_names}; pass at least "
            f"{len(metric_names)}"
        )
    for ax, name in zip(axes, metric_names):
        for key, label, style in ((name, "training", "-o"), (f"val_{name}", "validation", "-s")):
            if key in history:
                values = history[key]
                ax.plot(np.arange(1, len(values) + 1), values, style, ms=3, label=label)
        ax.set(xlabel="Epoch", title=name.replace("_", " "))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend()
    return list(axes[: len(metric_names)])


def _grid_figure(num_panels: int, ncols: int, panel_size: tuple[float, float], fig: Figure | None):
    if num_panels == 0:
        raise HistoclassError("got no images to show; pass at least one")
    ncols = max(1, min(ncols, num_panels))
    nrows = -(-num_panels // ncols)
    if fig is None:
        fig = new_figure(panel_size[0] * ncols, panel_size[1] * nrows)
    return fig, [fig.add_subplot(nrows, ncols, i + 1) for i in range(num_panels)]


def plot_image_grid(images, true_labels, pred_labels, confidences, titles: Sequence[str] | None = None,
                    ncols: int = 4, fig: Figure | None = None,
                    class_names: Sequence[str] = CLASS_NAMES, threshold: float | None = None) -> Figure:
    """Each image with its predicted label, the confidence in it, and its true label.

    `confidences` is the probability of the predicted class. Misclassified images get a red
    title and a thick red frame. `titles` (e.g. file names) go on the first line of each title.
    With a `threshold` other than 0.5 (a run's own: a malignant call may rest on a probability
    under 50 %), each label shows the probability of malignancy against it instead,
    "pred: malignant (p 30% ≥ 21%)", so no call reads as a confident one it is not.
    """
    true_labels, pred_labels = np.asarray(true_labels), np.asarray(pred_labels)
    confidences = np.asarray(confidences, dtype=float)
    counts = {len(images), len(true_labels), len(pred_labels), len(confidences)}
    if titles is not None:
        counts.add(len(titles))
    if len(counts) != 1:
        raise HistoclassError(
            f"images, labels, predictions, confidences and titles must have one entry per image, "
            f"got lengths {sorted(counts)}"
        )
    fig, axes = _grid_figure(len(images), ncols, (2.6, 3.0), fig)
    for i, ax in enumerate(axes):
        ax.imshow(images[i], cmap="gray" if np.ndim(images[i]) == 2 else None)
        correct = true_labels[i] == pred_labels[i]
        lines = [] if titles is None else [str(titles[i])]
        lines += [f"pred: {class_names[pred_labels[i]]} ({_confidence_words(pred_labels[i], confidences[i], threshold)})",
                  f"true: {class_names[true_labels[i]]}"]
        ax.set_title("\n".join(lines), fontsize=9, color="black" if correct else ERROR_COLOR)
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_visible(not correct)
            spine.set_color(ERROR_COLOR)
            spine.set_linewidth(4)
    return fig


def _confidence_words(predicted: int, confidence: float, threshold: float | None) -> str:
    if threshold is None or np.isclose(threshold, 0.5):
        return f"{confidence:.0%}"
    malignant = confidence if predicted == 1 else 1.0 - confidence
    return f"p {malignant:.0%} {'≥' if predicted == 1 else '<'} {threshold:.0%}"


def plot_probability_bars(probs, titles: Sequence[str] | None = None, fig: Figure | None = None,
                          ncols: int = 4, class_names: Sequence[str] = CLASS_NAMES) -> Figure:
    """For each image, a horizontal bar per class with its predicted probability."""
    probs = np.asarray(probs, dtype=float)
    if probs.ndim != 2 or probs.shape[1] != len(class_names):
        raise HistoclassError(
            f"probs must have shape (N, {len(class_names)}), one row of class probabilities per "
            f"image, got {probs.shape}"
        )
    if titles is not None and len(titles) != len(probs):
        raise HistoclassError(f"got {len(titles)} titles for {len(probs)} images; pass one each")
    fig, axes = _grid_figure(len(probs), ncols, (2.6, 1.6), fig)
    positions = np.arange(len(class_names))
    for i, ax in enumerate(axes):
        ax.barh(positions, probs[i], color=CLASS_COLORS[: len(class_names)])
        for position, value in zip(positions, probs[i]):
            inside = value > 0.75
            ax.text(value - 0.03 if inside else value + 0.03, position, f"{value:.2f}",
                    va="center", ha="right" if inside else "left", fontsize=8,
                    color="white" if inside else "black")
        ax.set_yticks(positions, labels=class_names, fontsize=8)
        ax.invert_yaxis()
        ax.set_xlim(0, 1)
        ax.tick_params(axis="x", labelsize=7)
        if titles is not None:
            ax.set_title(str(titles[i]), fontsize=9)
    return fig


def plot_slide_heatmap(mosaic, prob_map, patch_size: int, outline_grid=None, ax: Axes | None = None,
                       *, step: int | None = None, alpha: float = 0.7, cmap: str = "inferno") -> Axes:
    """The tissue mosaic with the malignancy probability map over it, and the true malignant
    region outlined.

    `mosaic` and `prob_map` come from `heatmap.assemble_mosaic` / `assemble_slide` on the same
    coordinates (mosaic at any scale, or None to draw the map alone); `outline_grid` is a label
    map of the same shape (1 = malignant), e.g. `assemble_slide(xs, ys, labels, patch_size)`.
    """
    prob_map = np.asarray(prob_map, dtype=float)
    if prob_map.ndim != 2:
        raise HistoclassError(f"prob_map must be a 2-D map, got shape {prob_map.shape}")
    step = patch_size if step is None else step
    rows, columns = prob_map.shape
    if mosaic is None:
        scale = 1.0
    else:
        # The mosaic spans from the first patch's left edge to the last patch's right edge.
        scale = mosaic.shape[1] / ((columns - 1) * step + patch_size)
    cell = step * scale
    ax = _axes_or_new(ax, (6.5, 5.5))
    if mosaic is not None:
        ax.imshow(mosaic, extent=(0, mosaic.shape[1], mosaic.shape[0], 0))
    norm = Normalize(vmin=0.0, vmax=1.0)
    # Opacity grows with the probability (from a quarter of `alpha` up to `alpha`), so benign
    # tissue stays visible under the map and what the model calls malignant stands out.
    opacity = alpha * (0.25 + 0.75 * np.nan_to_num(np.clip(prob_map, 0.0, 1.0)))
    ax.imshow(np.ma.masked_invalid(prob_map), cmap=cmap, norm=norm, alpha=opacity,
              interpolation="nearest", extent=(0, columns * cell, rows * cell, 0))
    if outline_grid is not None:
        outline_grid = np.asarray(outline_grid)
        if outline_grid.shape != prob_map.shape:
            raise HistoclassError(
                f"outline_grid has shape {outline_grid.shape} but prob_map {prob_map.shape}; "
                "build both with assemble_slide from the same coordinates"
            )
        ax.add_collection(LineCollection(region_outline(outline_grid) * cell, colors=OUTLINE_COLOR,
                                         linewidths=1.5))
        ax.legend(handles=[Line2D([], [], color=OUTLINE_COLOR, lw=1.5, label="true malignant region")],
                  loc="upper right", fontsize=8, framealpha=0.8)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title("Predicted probability of malignancy")
    ax.figure.colorbar(ScalarMappable(norm=norm, cmap=colormaps[cmap]), ax=ax, shrink=0.8,
                       label="prob_malignant")
    return ax


def plot_gradcam_overlay(image, heatmap, ax: Axes | None = None, *, alpha: float = 0.4,
                         cmap: str = "jet", title: str | None = None) -> Axes:
    """The image with a Grad-CAM map from `gradcam.gradcam_heatmap` laid over it."""
    image = np.asarray(image)
    heatmap = np.asarray(heatmap)
    if heatmap.ndim != 2:
        raise HistoclassError(f"heatmap must be one 2-D map, got shape {heatmap.shape}")
    ax = _axes_or_new(ax, (3.5, 3.5))
    height, width = image.shape[:2]
    ax.imshow(image, cmap="gray" if image.ndim == 2 else None, extent=(0, width, height, 0))
    ax.imshow(heatmap, cmap=cmap, vmin=0.0, vmax=1.0, alpha=alpha, extent=(0, width, height, 0))
    ax.set_xticks([])
    ax.set_yticks([])
    if title is not None:
        ax.set_title(title, fontsize=9)
    return ax


def save_figure(fig: Figure | Axes, path: str | os.PathLike, dpi: int = 150) -> Path:
    """Write the figure to `path` (format from the suffix) atomically, then close it.

    Written through `fileio.atomic_path`, so a crash never leaves a half-written image.
    Returns the path.
    """
    figure = fig.figure if isinstance(fig, Axes) else fig
    path = Path(path)
    image_format = path.suffix.lstrip(".").lower()
    supported = figure.canvas.get_supported_filetypes()
    if image_format not in supported:
        raise HistoclassError(
            f"cannot save a figure as {path.name!r}; use one of the suffixes "
            f"{', '.join('.' + name for name in sorted(supported))}"
        )
    try:
        with atomic_path(path) as temporary:
            figure.savefig(temporary, format=image_format, dpi=dpi, bbox_inches="tight")
    finally:
        pyplot = sys.modules.get("matplotlib.pyplot")
        if pyplot is not None:  # a figure made with pyplot stays in its registry until closed
            pyplot.close(figure)
    logger.debug("saved figure %s", path)
    return path
