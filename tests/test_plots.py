import numpy as np
import pytest
from matplotlib.axes import Axes
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure

from histoclass.report import plots
from histoclass.evaluation.calibration import reliability_bins
from histoclass.errors import HistoclassError
from histoclass.explain.heatmap import assemble_mosaic, assemble_slide

# The tiny ROC of test_threshold: benign 0.1, 0.3, 0.4; malignant 0.35, 0.6, 0.8.
LABELS = [0, 0, 1, 0, 1, 1]
PROBS = [0.1, 0.3, 0.35, 0.4, 0.6, 0.8]


def _legend_texts(ax):
    return [text.get_text() for text in ax.get_legend().get_texts()]


def test_confusion_matrix_shows_counts_and_row_percentages():
    ax = plots.plot_confusion_matrix(np.array([[111, 7], [1, 277]]), ("benign", "malignant"))
    texts = [text.get_text() for text in ax.texts]
    assert texts == ["111\n(94.1%)", "7\n(5.9%)", "1\n(0.4%)", "277\n(99.6%)"]
    assert ax.get_xlabel() == "Predicted label" and ax.get_ylabel() == "True label"
    with pytest.raises(HistoclassError, match=r"shape \(2, 2\) does not match 3 class names"):
        plots.plot_confusion_matrix(np.eye(2), ("a", "b", "c"))


def test_roc_legend_has_the_auc():
    # AUC = share of (malignant, benign) pairs ranked right: 0.35 beats 0.1 and 0.3, 0.6 and 0.8
    # beat all three -> 8 / 9 = 0.889.
    ax = plots.plot_roc(LABELS, PROBS, threshold=0.6)
    assert _legend_texts(ax)[0] == "model (AUC = 0.889)"
    assert "threshold 0.60 (sens. 0.67, spec. 1.00)" in _legend_texts(ax)


def test_precision_recall_legend_has_the_average_precision():
    # Highest first: 0.8 (P 1, R 1/3), 0.6 (P 1, R 2/3), 0.4 benign, 0.35 (P 3/4, R 1):
    # AP = 1/3 * 1 + 1/3 * 1 + 1/3 * 3/4 = 0.917.
    ax = plots.plot_precision_recall(LABELS, PROBS)
    assert _legend_texts(ax) == ["model (AP = 0.917)", "chance (prevalence 0.50)"]


def test_curves_need_both_classes():
    with pytest.raises(HistoclassError, match="an ROC curve needs both benign"):
        plots.plot_roc([1, 1], [0.2, 0.7])


def test_reliability_curves_are_labelled_with_their_ece():
    # The five-image case of test_calibration: ECE 0.23 with five bins.
    before = reliability_bins([0, 1, 0, 1, 1], [0.05, 0.15, 0.62, 0.68, 0.95], num_bins=5)
    after = reliability_bins([0, 1, 0, 1, 1], [0.3, 0.4, 0.5, 0.6, 0.9], num_bins=5)
    ax = plots.plot_reliability(before, after)
    assert _legend_texts(ax)[:2] == ["perfectly calibrated", "model (ECE = 0.230)"]
    assert _legend_texts(ax)[2].startswith("temperature-scaled (ECE = ")
    np.testing.assert_allclose(ax.lines[1].get_xdata(), [0.10, 0.65, 0.95])


def test_training_curves_one_panel_per_metric_loss_first():
    history = {"accuracy": [0.6, 0.8, 0.9], "loss": [0.7, 0.4, 0.3],
               "val_accuracy": [0.5, 0.7, 0.75], "val_loss": [0.8, 0.5, 0.45]}
    axes = plots.plot_training_curves(history)
    assert [ax.get_title() for ax in axes] == ["loss", "accuracy"]
    assert [line.get_label() for line in axes[0].lines] == ["training", "validation"]
    np.testing.assert_array_equal(axes[0].lines[1].get_ydata(), [0.8, 0.5, 0.45])
    with pytest.raises(HistoclassError, match="got 1 axes for 2 metrics"):
        plots.plot_training_curves(history, axes=[axes[0]])


def test_image_grid_marks_errors_in_red():
    images = np.zeros((5, 8, 8, 3), np.uint8)
    figure = plots.plot_image_grid(images, [0, 1, 1, 0, 1], [0, 1, 0, 0, 1],
                                   [0.9, 0.8, 0.7, 0.95, 0.6], titles=list("abcde"), ncols=3)
    assert isinstance(figure, Figure) and len(figure.axes) == 5
    assert figure.axes[2].get_title() == "c\npred: benign (70%)\ntrue: malignant"
    wrong, right = figure.axes[2], figure.axes[1]
    assert wrong.title.get_color() == plots.ERROR_COLOR
    assert all(spine.get_visible() for spine in wrong.spines.values())
    assert wrong.spines["top"].get_edgecolor()[:3] == pytest.approx((214 / 255, 39 / 255, 40 / 255))
    assert not any(spine.get_visible() for spine in right.spines.values())
    with pytest.raises(HistoclassError, match=r"got lengths \[2, 5\]"):
        plots.plot_image_grid(images, [0, 1], [0, 1, 0, 0, 1], [0.9] * 5)


def test_image_grid_at_a_run_threshold_shows_the_probability_against_it():
    # At threshold 0.21 a malignant call may rest on p 0.30: "malignant (30%)" would read as a
    # call made with 30 % confidence, so the label says what the call rests on.
    images = np.zeros((3, 8, 8, 3), np.uint8)
    figure = plots.plot_image_grid(images, [1, 0, 0], [1, 0, 1], [0.30, 0.88, 0.75], threshold=0.21)
    assert [ax.get_title() for ax in figure.axes] == [
        "pred: malignant (p 30% ≥ 21%)\ntrue: malignant", "pred: benign (p 12% < 21%)\ntrue: benign",
        "pred: malignant (p 75% ≥ 21%)\ntrue: benign"]
    at_half = plots.plot_image_grid(images, [1, 0, 0], [1, 0, 1], [0.60, 0.88, 0.75], threshold=0.5)
    assert at_half.axes[0].get_title() == "pred: malignant (60%)\ntrue: malignant"


def test_probability_bars_one_panel_per_image():
    probs = np.array([[0.9, 0.1], [0.25, 0.75]])
    figure = plots.plot_probability_bars(probs, titles=["x", "y"])
    assert [ax.get_title() for ax in figure.axes] == ["x", "y"]
    assert [bar.get_width() for bar in figure.axes[1].patches] == [0.25, 0.75]
    with pytest.raises(HistoclassError, match=r"probs must have shape \(N, 2\)"):
        plots.plot_probability_bars(np.ones(3))


def test_slide_heatmap_overlays_map_outline_and_colorbar():
    xs, ys = np.array([0, 50, 100, 0, 50]), np.array([0, 0, 0, 50, 50])
    patches = np.full((5, 50, 50, 3), 200, np.uint8)
    prob_map = assemble_slide(xs, ys, [0.1, 0.9, 0.8, 0.2, 0.7], 50)
    labels = assemble_slide(xs, ys, [0, 1, 1, 0, 0], 50)
    mosaic = assemble_mosaic(xs, ys, patches, 50, scale=0.5)
    ax = plots.plot_slide_heatmap(mosaic, prob_map, 50, labels)
    mosaic_image, map_image = ax.images
    assert map_image.get_extent() == pytest.approx((0, 75, 50, 0))  # the mosaic is 75 x 50
    outline = [c for c in ax.collections if isinstance(c, LineCollection)][0]
    # Cells (0, 1) and (0, 2): a 2 x 1 box of 6 unit edges, drawn at 25 mosaic pixels per cell.
    assert len(outline.get_segments()) == 6
    assert np.max(outline.get_segments()) == 75
    assert len(ax.figure.axes) == 2  # the colorbar
    with pytest.raises(HistoclassError, match=r"outline_grid has shape \(1, 1\) but prob_map \(2, 3\)"):
        plots.plot_slide_heatmap(mosaic, prob_map, 50, np.ones((1, 1)))


def test_gradcam_overlay_draws_image_and_map():
    ax = plots.plot_gradcam_overlay(np.zeros((50, 50, 3), np.uint8), np.ones((50, 50)), title="t")
    assert len(ax.images) == 2 and ax.get_title() == "t"


def test_plots_draw_on_the_axes_they_are_given():
    figure = Figure()
    ax = figure.add_subplot()
    assert plots.plot_roc(LABELS, PROBS, ax=ax) is ax
    assert isinstance(plots.plot_precision_recall(LABELS, PROBS), Axes)


def test_save_figure_writes_atomically_and_closes(tmp_path):
    path = plots.save_figure(plots.plot_roc(LABELS, PROBS).figure, tmp_path / "report" / "roc.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in path.parent.iterdir()] == ["roc.png"]


def test_failed_save_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "roc.png"
    path.write_bytes(b"old")
    figure = plots.plot_roc(LABELS, PROBS).figure

    def broken_savefig(target, **_):
        open(target, "wb").write(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(figure, "savefig", broken_savefig)
    with pytest.raises(OSError, match="disk full"):
        plots.save_figure(figure, path)
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["roc.png"]


def test_save_figure_rejects_unknown_suffixes(tmp_path):
    with pytest.raises(HistoclassError, match=r"cannot save a figure as 'roc.xyz'; use one of .*\.png"):
        plots.save_figure(Figure(), tmp_path / "roc.xyz")


def test_save_figure_closes_a_pyplot_figure(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, ax = plt.subplots()
    plots.plot_roc(LABELS, PROBS, ax=ax)
    plots.save_figure(figure, tmp_path / "roc.svg")
    assert not plt.fignum_exists(figure.number)
    assert (tmp_path / "roc.svg").read_text().startswith("<?xml")
