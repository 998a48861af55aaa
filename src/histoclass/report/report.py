"""`histoclass report`: one self-contained report.html (and its figures as PNG) for a run.

Computation lives in `evaluation/` and `explain/`, drawing in `plots`; this module only chooses
what to show, and is the one place that writes the report's files. Probabilities come from the
run folder where `evaluate` and training stored them (see `inference.scoring`); the threshold is
the run's own unless `--target-sensitivity` asks for another, and the report says which.
"""
from __future__ import annotations

import csv
import logging
import os
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from .. import CLASS_NAMES, __version__
from ..evaluation.calibration import brier_score, expected_calibration_error, reliability_bins
from ..evaluation.intervals import bootstrap_intervals
from ..evaluation.metrics import classification_metrics, has_both_classes, metric_functions
from ..evaluation.threshold import choose_threshold, sensitivity_and_specificity
from ..fileio import read_json, write_json_atomic, write_text_atomic
from ..inference.run import Run, load_run
from ..inference.scoring import ScoredImages as EvaluationSet, smoothed_by_patient
from ..runs.ensemble import CV_METRICS_FILE, OOF_FILE, is_ensemble
from ..runs.folder import read_history
from .evaluation import per_image_figures
from .html import Section, render
from .plots import new_figure, plot_fold_rocs

log = logging.getLogger(__name__)

INTERVAL_METRICS = ("accuracy", "balanced_accuracy", "precision", "recall", "specificity", "f1", "roc_auc")
NUM_ERRORS_SHOWN = 8
NUM_GRADCAM = 4  # of each: correct and wrong
DEFAULT_SLIDES = 4
MAX_MOSAIC_SIDE = 1600  # pixels; larger slides are drawn scaled down


def write_report(run_dir: str | os.PathLike, data: str | os.PathLike | None = None,
                 out_dir: str | os.PathLike | None = None, target_sensitivity: float | None = None,
                 all_slides: bool = False, num_resamples: int = 1000, cache_dir=None,
                 progress: bool = True, extra_sections: Sequence[Section] = ()) -> Path:
    """Writes report.html and the PNG figures into `out_dir` (default RUN_DIR/report).
    `extra_sections` are shown last (the demo adds its whole-slide run)."""
    started = time.perf_counter()
    run = load_run(run_dir)
    out_dir = Path(out_dir) if out_dir else run.folder / "report"
    out_dir.mkdir(parents=True, exist_ok=True)
    test = run.score(data, "test", cache_dir=cache_dir, progress=progress)
    val = run.score(None, "val", cache_dir=cache_dir, progress=progress)
    log.info("test probabilities %s, validation probabilities %s",
             *("read from the run folder" if s.reused else "predicted" for s in (test, val)))
    figures = _Figures(out_dir)

    operating = _operating_threshold(run, val, target_sensitivity)
    threshold = operating["threshold"]
    intervals = _intervals(test, threshold, num_resamples, run.config.seed)
    sections = [
        _summary_section(run, test, val),
        *_cross_validation_sections(run, figures),
        _metrics_section(test, threshold, intervals, num_resamples),
        *_neighbourhood_sections(run, test, num_resamples),
        _threshold_section(run, test, operating),
        _confusion_section(test, threshold, figures),
        _curves_section(test, threshold, figures),
        _calibration_section(run, test, val, figures),
        _training_section(run, figures),
        _visual_results_section(test, threshold, run.config.seed, figures),
        _errors_section(test, threshold, figures),
        _gradcam_section(run, test, threshold, figures),
        _patients_section(test, threshold),
        _slides_section(test, threshold, all_slides, figures),
        *extra_sections,
    ]
    title = f"histoclass report: {run.folder.name}"
    subtitle = (f"{run.config.model} ({run.config.recipe} recipe) evaluated on {test.description}; "
                f"written {time.strftime('%Y-%m-%d %H:%M')} by histoclass {__version__}")
    report_path = out_dir / "report.html"
    write_text_atomic(report_path, render(title, subtitle, sections))
    write_json_atomic(out_dir / "report.json", {"threshold": operating,
                                                "metrics": {name: iv._asdict() for name, iv in intervals.items()},
                                                "figures": sorted(figures.written),
                                                "predictions_reused": {"test": test.reused, "val": val.reused},
                                                "seconds": round(time.perf_counter() - started, 1)})
    log.info("wrote %s (%d figures) in %.0f s", report_path, len(figures.written), time.perf_counter() - started)
    return report_path


class _Figures:
    """Saves each figure as a PNG in the report folder and remembers its name."""

    def __init__(self, folder: Path):
        self.folder, self.written = folder, []

    def save(self, figure, name: str) -> Path:
        from .plots import save_figure
        path = save_figure(figure, self.folder / name)
        self.written.append(name)
        return path


# ---- sections ---------------------------------------------------------------------------

def _summary_section(run: Run, test: EvaluationSet, val: EvaluationSet) -> Section:
    section = Section("summary", "Summary")
    data = run.data
    rows = [("model", run.config.model), ("recipe", run.config.recipe),
            ("trained on", data.get("path", "?")), ("layout", data.get("layout", "?")),
            ("evaluated on", test.description),
            ("test images", len(test.labels)), ("test malignant", int(test.labels.sum())),
            ("test patients/groups", len(set(test.groups))),
            ("validation images", len(val.labels)),
            ("images skipped (unreadable)", len(test.skipped)),
            ("test-time augmentation", "8 dihedral views" if run.config.test_time_augmentation else "off")]
    for part, info in (data.get("parts") or {}).items():
        rows.append((f"{part} split", f"{info['images']} images, {info['malignant']} malignant, "
                                      f"{info['groups']} patients/groups"))
    return section.table(("", "value"), rows, text_columns=2)


def _cross_validation_sections(run: Run, figures: _Figures) -> list[Section]:
    """For the folder of `histoclass cv`: each fold's numbers, their mean and spread, the pooled
    out-of-fold ones, and one ROC curve per fold."""
    if not is_ensemble(run.folder) or not (run.folder / CV_METRICS_FILE).is_file():
        return []
    metrics = read_json(run.folder / CV_METRICS_FILE)
    section = Section("cross-validation", "Cross-validation")
    names = ("roc_auc", "accuracy", "balanced_accuracy", "recall", "specificity", "ece")
    rows = [(f["folder"], f["n"], f["threshold"], *(f.get(n) for n in names)) for f in metrics["folds"]]
    spread = metrics["mean_and_std"]
    rows.append(("mean ± sd", None, None, *(f"{spread[n]['mean']:.4f} ± {spread[n]['std'] or 0:.4f}"
                                             if spread[n]["mean"] is not None else None for n in names)))
    section.text(f"{metrics['num_folds']} folds by patient/group, stratified by label. Each fold's "
                 "run trained on the other folds and was validated on its own, with its own "
                 "calibration and threshold (chosen on that same fold, so its threshold metrics lean "
                 "optimistic; ROC-AUC does not).")
    section.table(("fold", "images", "threshold", *names), rows)
    pooled = metrics["out_of_fold"]
    section.text(f"Out of fold: every training image scored by the fold model that did not train on "
                 f"it ({pooled['n']} images), calibrated with the ensemble's temperature and at its "
                 f"threshold {pooled['threshold']:.3f}, both fitted on these same predictions. 95 % "
                 f"intervals: percentile bootstrap over {pooled['resampled']}. ECE {pooled['ece']:.4f}.")
    section.table(("metric", "value", "95 % low", "95 % high"),
                  [(n, v["point"], v["low"], v["high"]) for n, v in pooled.items() if isinstance(v, dict)])
    oof = _read_out_of_fold(run.folder / OOF_FILE)
    curves = [(f"fold-{k}", oof["label"][oof["fold"] == k], oof["prob_malignant"][oof["fold"] == k])
              for k in range(metrics["num_folds"])]
    curves = [c for c in curves if has_both_classes(c[1])]
    if curves:
        figure = new_figure(5.5, 5.0)
        plot_fold_rocs(curves, ax=figure.subplots())
        section.figure(figures.save(figure, "cv_roc_folds.png"), "One ROC curve per fold, on its "
                       "out-of-fold images")
    return [section]


def _read_out_of_fold(path: Path) -> dict[str, np.ndarray]:
    with open(path, newline="", encoding="utf-8", errors="surrogateescape") as handle:
        rows = list(csv.DictReader(handle))
    return {"label": np.array([int(r["label"]) for r in rows]), "fold": np.array([int(r["fold"]) for r in rows]),
            "prob_malignant": np.array([float(r["prob_malignant"]) for r in rows])}


def _intervals(test: EvaluationSet, threshold: float, num_resamples: int, seed: int, prob=None) -> dict:
    """The test metrics at `threshold` with bootstrap intervals, by patient where there are
    patients; of `prob` where given (the smoothed probabilities), else of the images' own."""
    groups = test.groups
    by_group = len(set(groups)) < len(groups)
    return bootstrap_intervals(test.labels, test.prob_malignant if prob is None else prob,
                               metric_functions(threshold, INTERVAL_METRICS),
                               groups=groups if by_group else None, num_resamples=num_resamples, seed=seed)


def _metrics_section(test: EvaluationSet, threshold: float, intervals: dict, num_resamples: int) -> Section:
    section = Section("metrics", "Metrics with 95 % confidence intervals")
    groups = test.groups
    by_group = len(set(groups)) < len(groups)
    rows = [(name, iv.point, iv.low, iv.high) for name, iv in intervals.items()]
    section.table(("metric", "value", "95 % low", "95 % high"), rows)
    if by_group:
        how = (f"{num_resamples} resamples of whole patients/groups (n = {len(set(groups))}), since "
               "images of one patient are not independent")
    else:
        how = f"{num_resamples} resamples of images (n = {len(groups)}; the data has no patient ids)"
    return section.text(f"Malignant is the positive class; threshold {threshold:.3f}. Intervals: "
                        f"percentile bootstrap, {how}.", "note")


def _neighbourhood_sections(run: Run, test: EvaluationSet, num_resamples: int) -> list[Section]:
    """The metrics with each patch smoothed over its patient's neighbouring patches, at the
    run's neighbourhood threshold, where the run has one and the patches have places."""
    found = smoothed_by_patient(run, test)
    if found is None:
        return []
    smoothed, with_grid = found
    threshold = run.neighbourhood["threshold"]
    intervals = _intervals(test, threshold, num_resamples, run.config.seed, prob=smoothed)
    section = Section("neighbourhood", "Metrics with the neighbourhood")
    section.table(("metric", "value", "95 % low", "95 % high"),
                  [(name, iv.point, iv.low, iv.high) for name, iv in intervals.items()])
    return [section.text(
        f"Each patch's probability smoothed with its patient's neighbouring patches (a Gaussian of "
        f"{run.neighbourhood['sigma']:g} patch; {with_grid} patients' patches have places on their slide, "
        f"from their names) and called at the run's neighbourhood threshold {threshold:.3f}, fitted on its "
        "validation patients. Only the neighbours' predictions enter, never their labels: what "
        "histoclass slide does on a whole slide. Intervals as above.", "note")]


def _operating_threshold(run: Run, val: EvaluationSet, target_sensitivity: float | None) -> dict:
    """The run's stored threshold, or one chosen on validation for `target_sensitivity`."""
    if target_sensitivity is not None:
        chosen = choose_threshold(val.labels, val.prob_malignant, method="sensitivity",
                                  target_sensitivity=target_sensitivity)
    else:
        sensitivity, specificity = (sensitivity_and_specificity(val.labels, val.prob_malignant, run.threshold)
                                    if has_both_classes(val.labels) else (None, None))
        chosen = {"threshold": run.threshold, "method": "stored",
                  "stored_method": run.calibration.threshold_method, "reason": run.calibration.reason,
                  "target_sensitivity": None,
                  "sensitivity": sensitivity, "specificity": specificity}
    return {k: (float(v) if isinstance(v, (int, float, np.floating)) and not isinstance(v, bool) else v)
            for k, v in chosen.items()}


def _threshold_section(run: Run, test: EvaluationSet, operating: dict) -> Section:
    section = Section("threshold", "Operating threshold")
    if operating["method"] == "stored":
        how = ("chosen on the validation split at training by Youden's J (sensitivity + specificity "
               "- 1, maximised)" if operating.get("stored_method") == "youden"
               else "the fixed 0.5 the run was trained with")
        section.text(f"The run's own threshold, {how}: {operating['threshold']:.4f}; histoclass evaluate and "
                     "predict use the same one. Applied to the test split below, beside the default 0.5.")
        if operating.get("reason"):
            section.text(f"Calibration fell back: {operating['reason']}. Train with a validation part that "
                         "holds both classes for a fitted temperature and threshold.", "warning")
    else:
        section.text(f"Asked for with --target-sensitivity {operating['target_sensitivity']}: the highest "
                     f"threshold reaching it on the validation split, {operating['threshold']:.4f}. "
                     f"Not the run's own ({run.threshold:.4f}), which histoclass evaluate and predict use. "
                     "Applied to the test split below, beside the run's own and the default 0.5.")
    rows = []
    choices = [("shown in this report", operating["threshold"])]
    if operating["method"] != "stored":
        choices.append(("the run's own", run.threshold))
    choices.append(("default", 0.5))
    for label, value in choices:
        m = classification_metrics(test.labels, test.prob_malignant, value)
        rows.append((label, value, m["accuracy"], m["balanced_accuracy"], m["recall"], m["specificity"],
                     m["precision"], m["f1"]))
    return section.table(("threshold", "value", "accuracy", "balanced acc.", "sensitivity", "specificity",
                          "precision", "F1"), rows)


def _confusion_section(test: EvaluationSet, threshold: float, figures: _Figures) -> Section:
    from .plots import plot_confusion_matrix
    m = classification_metrics(test.labels, test.prob_malignant, threshold)
    ax = plot_confusion_matrix(np.array(m["confusion_matrix"]), CLASS_NAMES)
    ax.set_title(f"threshold {threshold:.3f}")
    png = figures.save(ax.figure, "confusion_matrix.png")
    return Section("confusion", "Confusion matrix").figure(png, "Rows: true class; columns: predicted.")


def _curves_section(test: EvaluationSet, threshold: float, figures: _Figures) -> Section:
    from .plots import plot_precision_recall, plot_roc
    section = Section("curves", "ROC and precision-recall curves")
    if not has_both_classes(test.labels):
        return section.text("The test images hold one class only: ROC and precision-recall curves need both.")
    figure = new_figure(10, 4.5)
    left, right = figure.subplots(1, 2)
    plot_roc(test.labels, test.prob_malignant, ax=left, threshold=threshold)
    plot_precision_recall(test.labels, test.prob_malignant, ax=right)
    png = figures.save(figure, "roc_pr.png")
    return section.figure(png, "Left: ROC with the operating threshold marked. Right: precision-recall, "
                               "the dashed line is the prevalence.")


def _calibration_section(run: Run, test: EvaluationSet, val: EvaluationSet, figures: _Figures) -> Section:
    from .plots import plot_reliability
    section = Section("calibration", "Calibration")
    before, after = test.prob_model, test.prob_malignant
    rows = [("before temperature scaling", expected_calibration_error(test.labels, before), brier_score(test.labels, before)),
            (f"after (class-weight prior removed, T = {run.temperature:.3f})", expected_calibration_error(test.labels, after), brier_score(test.labels, after))]
    section.text("Training with class weights shifts the model's log-odds by log(w_malignant / w_benign) "
                 f"(here {run.prior_shift:+.3f}); that shift is removed, then a temperature is fitted on the "
                 f"validation split ({len(val.labels)} images). Both are stored with the run, so "
                 "histoclass predict reports the calibrated probabilities.")
    section.table(("test probabilities", "ECE (10 bins)", "Brier score"), rows)
    ax = plot_reliability(reliability_bins(test.labels, before), reliability_bins(test.labels, after))
    png = figures.save(ax.figure, "reliability.png")
    return section.figure(png, "Reliability diagram on the test split: observed malignant fraction "
                               "against predicted probability; the diagonal is perfect calibration.")


def _training_section(run: Run, figures: _Figures) -> Section:
    from .plots import plot_training_curves
    section = Section("training", "Training curves")
    rows = read_history(run.folder)
    if not rows:
        return section.text("This run has no history.csv.")
    keep = [k for k in ("loss", "val_loss", "val_accuracy", "val_auc") if k in rows[0]]
    history = {k: [r.get(k, float("nan")) for r in rows] for k in keep}
    num_panels = len({k.removeprefix("val_") for k in keep})
    figure = new_figure(4 * max(1, num_panels), 3.5)
    plot_training_curves(history, axes=figure.subplots(1, max(1, num_panels), squeeze=False)[0])
    png = figures.save(figure, "training_curves.png")
    best = read_json(run.folder / "state.json") if (run.folder / "state.json").is_file() else {}
    section.figure(png, "Per epoch: training loss, and the validation metrics used for early stopping.")
    if best.get("best_epoch"):
        section.text(f"The model kept is the one of epoch {best['best_epoch']} "
                     f"({best.get('monitor')} {best.get('best_value'):.4f}).", "note")
    return section


def _visual_results_section(test: EvaluationSet, threshold: float, seed: int, figures: _Figures) -> Section:
    section = Section("visual", "Predictions on test images")
    made = per_image_figures(test, threshold, seed)
    if made is None:
        return section.text("No test images to show.")
    grid = figures.save(made[0], "predictions_grid.png")
    bars = figures.save(made[1], "probability_bars.png")
    section.figure(grid, "Each image with its predicted label, confidence and true label; errors in red "
                         "(up to half of the sample is errors, so they can be seen)." + as_read_note(test))
    return section.figure(bars, "Per-class probabilities of the same images.")


def _errors_section(test: EvaluationSet, threshold: float, figures: _Figures) -> Section:
    from .plots import plot_image_grid
    section = Section("errors", "Most confident errors")
    prob = test.prob_malignant
    false_pos = np.flatnonzero((test.labels == 0) & (prob >= threshold))
    false_neg = np.flatnonzero((test.labels == 1) & (prob < threshold))
    false_pos = false_pos[np.argsort(-prob[false_pos])][:NUM_ERRORS_SHOWN]
    false_neg = false_neg[np.argsort(prob[false_neg])][:NUM_ERRORS_SHOWN]
    for kind, chosen, name in (("False positives (benign called malignant)", false_pos, "false_positives.png"),
                               ("False negatives (malignant called benign)", false_neg, "false_negatives.png")):
        if not len(chosen):
            section.text(f"{kind}: none.")
            continue
        predicted = (prob[chosen] >= threshold).astype(int)
        confidence = np.where(predicted == 1, prob[chosen], 1 - prob[chosen])
        titles = [Path(test.records[i].source).name for i in chosen]
        png = figures.save(plot_image_grid(np.stack([test.images[i] for i in chosen]), test.labels[chosen],
                                           predicted, confidence, titles=titles, ncols=4,
                                           threshold=threshold), name)
        section.figure(png, kind + ("." + as_read_note(test) if as_read_note(test) else ""))
        section.table(("file", "patient/group", "prob_malignant"),
                      [(test.records[i].source, test.records[i].group, float(prob[i])) for i in chosen],
                      text_columns=2)
    return section


def _gradcam_section(run: Run, test: EvaluationSet, threshold: float, figures: _Figures) -> Section:
    from ..explain.gradcam import gradcam_heatmap
    from .plots import plot_gradcam_overlay
    section = Section("gradcam", "Grad-CAM")
    predicted = (test.prob_malignant >= threshold).astype(int)
    rng = np.random.default_rng(run.config.seed)
    picks = []
    for wanted in (True, False):
        pool = np.flatnonzero((predicted == test.labels) == wanted)
        picks += [(int(i), wanted) for i in rng.choice(pool, min(len(pool), NUM_GRADCAM), replace=False)]
    if not picks:
        return section.text("No test images to explain.")
    images = np.stack([test.seen_by_model[i] for i, _ in picks])
    heatmaps = gradcam_heatmap(run.model, images, class_index=1)
    figure = new_figure(2.4 * len(picks), 2 * 2.6)
    axes = figure.subplots(2, len(picks), squeeze=False)
    for column, ((index, correct), image, heatmap) in enumerate(zip(picks, images, heatmaps)):
        axes[0, column].imshow(image)
        axes[0, column].set_axis_off()
        axes[0, column].set_title(("correct" if correct else "WRONG") +
                                  f"\ntrue {CLASS_NAMES[test.labels[index]]}, p={test.prob_malignant[index]:.2f}",
                                  fontsize=8, color="black" if correct else "tab:red")
        plot_gradcam_overlay(image, heatmap, ax=axes[1, column])
    png = figures.save(figure, "gradcam.png")
    return section.figure(png, "Top: test images (correct and wrong predictions). Bottom: Grad-CAM for the "
                               "malignant class on the model's last convolution: where the evidence for "
                               "'malignant' lies." + seen_by_model_note(run, test))


def seen_by_model_note(run: Run, test: EvaluationSet) -> str:
    """Grad-CAM's caption, where its images are not as read: after the run's stain normalization."""
    if test.model_images is None or run.stain is None:
        return ""
    who = ("the ensemble's first member (whose model Grad-CAM explains) saw them, normalized to its own "
           "reference" if run.member_stains is not None else "the model saw them")
    return (f" The images are shown as {who}: after {run.stain.method.capitalize()} stain normalization, one "
            "transform per patient/group fitted on its images.")


def as_read_note(test: EvaluationSet) -> str:
    """For the other image grids of a run with stain normalization: they show the images as read."""
    return "" if test.model_images is None else (" Images as read, before the run's stain normalization "
                                                 "(Grad-CAM shows them as the model saw them).")


def _patients_section(test: EvaluationSet, threshold: float) -> Section:
    section = Section("patients", "Per patient or group")
    groups = test.groups
    rows = []
    for group in sorted(set(groups)):
        mask = groups == group
        m = classification_metrics(test.labels[mask], test.prob_malignant[mask], threshold)
        rows.append((group, m["n"], m["num_malignant"], m["accuracy"], m["recall"], m["specificity"],
                     m["roc_auc"], float(test.prob_malignant[mask].mean())))
    rows.sort(key=lambda r: (r[3] if r[3] is not None else 1.0))
    section.text("Patch-level metrics within each patient/group, worst accuracy first; n/a where the "
                 "patient has one class only.", "note")
    return section.table(("patient/group", "images", "malignant", "accuracy", "sensitivity", "specificity",
                          "ROC-AUC", "mean prob_malignant"), rows, scroll=len(rows) > 20)


def _slides_section(test: EvaluationSet, threshold: float, all_slides: bool, figures: _Figures) -> Section:
    from ..explain.heatmap import assemble_mosaic, assemble_slide
    from .plots import plot_slide_heatmap
    section = Section("slides", "Whole-slide heatmaps")
    has_xy = np.array([r.x is not None and r.y is not None for r in test.records])
    if not has_xy.any():
        return section.text("These images carry no slide coordinates (the IDC layout and the synthetic "
                            "slides do), so no slide maps can be drawn.")
    groups = test.groups
    patients = sorted(set(groups[has_xy]), key=lambda g: -int(test.labels[(groups == g) & has_xy].sum()))
    if not all_slides:
        patients = patients[:DEFAULT_SLIDES]
    patch_size = int(test.images.shape[1])
    section.text(f"Each patient's patches put back at their (x, y): tissue mosaic, predicted probability of "
                 f"malignancy in colour, and the true malignant (IDC) region outlined in cyan. "
                 f"{'All' if all_slides else f'{len(patients)} of'} the test patients with coordinates; "
                 "the option --all-slides draws every one.", "note")
    for patient in patients:
        rows = np.flatnonzero((groups == patient) & has_xy)
        xs = np.array([test.records[i].x for i in rows])
        ys = np.array([test.records[i].y for i in rows])
        side = max(xs.max() - xs.min(), ys.max() - ys.min()) + patch_size
        scale = min(1.0, MAX_MOSAIC_SIDE / side)
        mosaic = assemble_mosaic(xs, ys, lambda k: test.images[rows[k]], patch_size, scale=scale)
        prob_map = assemble_slide(xs, ys, test.prob_malignant[rows], patch_size)
        truth = assemble_slide(xs, ys, test.labels[rows].astype(float), patch_size)
        ax = plot_slide_heatmap(mosaic, prob_map, patch_size, outline_grid=truth)
        m = classification_metrics(test.labels[rows], test.prob_malignant[rows], threshold)
        ax.set_title(f"patient {patient}: {len(rows)} patches, {m['num_malignant']} malignant, "
                     f"accuracy {m['accuracy']:.3f}")
        png = figures.save(ax.figure, f"slide_{_safe_name(patient)}.png")
        section.figure(png, f"Patient {patient}")
    return section


def _safe_name(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in str(text))[:80]
