"""What `histoclass slide` writes: per slide tiles.csv, summary.json, thumbnail.png, heatmap.png,
regions.geojson; over all slides index.html (self-contained) and slides.json.

    summary = write_slide_outputs(folder, plan, prob, failed, threshold, facts, qc)

takes a plan, the calibrated probability of each of its tiles (NaN for a tile that failed) and
each tile's QC reason ("" when it passed; `qc.tile_qc`), however they were computed (one
process, threads, or a cluster), and is the one writer. A tile that failed QC is not
classified: no probability, no label, not in the map or the regions. The drawing functions
take an `ax` and write nothing.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from ..evaluation.neighbourhood import smooth_tiles
from ..fileio import printable, write_csv_atomic, write_json_atomic, write_text_atomic
from ..report.html import Section, render
from .regions import areas_mm2, feature_collection, probability_map, region_features
from .qc import OUT_OF_FOCUS_FRACTION, QC_WARNING_FRACTION
from .tiling import TilePlan
from .truth import Truth, TruthError, outline_rings, truth_scores

UNREADABLE = "unreadable"  # the qc reason of a tile that failed to decode
MAX_FAILED_LISTED = 100
THUMBNAIL_PNG_SIDE = 512
PLOT_THUMBNAIL_SIDE = 800  # px of the thumbnail under the heatmap (the figure is ~630 px wide)


TRUTH_COLOR = "#00c8ff"  # the annotation's outline: apart from the map's inferno colours


def plot_slide_probability(thumbnail: np.ndarray, grid: np.ndarray, cell: int, dimensions: tuple[int, int],
                           ax=None, *, alpha: float = 0.7, cmap: str = "inferno", title: str | None = None,
                           outline: Sequence[np.ndarray] = ()):
    """The slide's thumbnail with the probability map over it (opacity grows with the
    probability, so benign tissue stays visible) and a colour bar; `outline`: rings in level-0
    pixels (the annotated tumour) drawn over it. Returns the Axes."""
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    from ..report.plots import new_figure
    width, height = dimensions
    thumbnail = _small(thumbnail)
    if ax is None:
        aspect = height / max(width, 1)
        ax = new_figure(7.0, max(2.5, min(7.0, 6.0 * aspect + 0.8))).add_subplot()
    ax.imshow(thumbnail, extent=(0, width, height, 0))
    norm = Normalize(vmin=0.0, vmax=1.0)
    opacity = alpha * (0.25 + 0.75 * np.nan_to_num(np.clip(grid, 0.0, 1.0)))
    opacity[~np.isfinite(grid)] = 0.0
    ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, norm=norm, alpha=opacity, interpolation="nearest",
              extent=(0, grid.shape[1] * cell, grid.shape[0] * cell, 0))
    for i, ring in enumerate(outline):
        ax.plot(ring[:, 0], ring[:, 1], color=TRUTH_COLOR, linewidth=1.2,
                label="annotated tumour" if i == 0 else None)
    if len(outline):
        ax.legend(loc="upper right", fontsize=8, framealpha=0.8)
    ax.set_xlim(0, width)
    ax.set_ylim(height, 0)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title or "Predicted probability of malignancy", fontsize=10)
    ax.figure.colorbar(ScalarMappable(norm=norm, cmap=colormaps[cmap]), ax=ax, shrink=0.8, label="prob_malignant")
    return ax


QC_COLORS = {"ink": (0.1, 0.35, 1.0), "blur": (1.0, 0.55, 0.0), UNREADABLE: (0.85, 0.0, 0.0)}


def plot_slide_qc(thumbnail: np.ndarray, plan: TilePlan, qc: np.ndarray, ax=None):
    """The slide's thumbnail with each tile that was not classified filled in its reason's
    colour (ink blue, blur orange, unreadable red); returns the Axes."""
    from matplotlib.patches import Patch

    from ..report.plots import new_figure
    width, height = plan.dimensions
    if ax is None:
        aspect = height / max(width, 1)
        ax = new_figure(7.0, max(2.5, min(7.0, 6.0 * aspect + 0.8))).add_subplot()
    ax.imshow(_small(thumbnail), extent=(0, width, height, 0))
    rows, columns = -(-height // plan.stride), -(-width // plan.stride)
    overlay = np.zeros((rows, columns, 4), np.float32)
    for reason, color in QC_COLORS.items():
        mine = np.asarray(qc) == reason
        overlay[plan.ys[mine] // plan.stride, plan.xs[mine] // plan.stride] = (*color, 0.6)
    ax.imshow(overlay, interpolation="nearest", extent=(0, columns * plan.stride, rows * plan.stride, 0))
    ax.set_xlim(0, width)
    ax.set_ylim(height, 0)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title("Tiles not classified, by QC reason", fontsize=10)
    present = [reason for reason in QC_COLORS if (np.asarray(qc) == reason).any()]
    ax.legend(handles=[Patch(color=QC_COLORS[r], alpha=0.6, label=r) for r in present], loc="upper right",
              fontsize=8)
    return ax


def _small(thumbnail: np.ndarray) -> np.ndarray:
    """matplotlib resamples in float64 RGBA: keep the picture small."""
    if max(thumbnail.shape[:2]) <= PLOT_THUMBNAIL_SIDE:
        return thumbnail
    factor = PLOT_THUMBNAIL_SIDE / max(thumbnail.shape[:2])
    return cv2.resize(thumbnail, (max(1, round(thumbnail.shape[1] * factor)),
                                  max(1, round(thumbnail.shape[0] * factor))), interpolation=cv2.INTER_AREA)


def slide_numbers(plan: TilePlan, prob: np.ndarray, threshold: float, grid: np.ndarray,
                  qc: np.ndarray | None = None) -> dict:
    """The slide's numbers for summary.json (pure). `prob`: NaN for every tile not classified
    (failed, or QC); `qc`: each tile's QC reason, "" when it passed."""
    ok = np.isfinite(prob)
    qc = np.full(plan.num_tiles, "", dtype=object) if qc is None else np.asarray(qc, dtype=object)
    reasons, counts = np.unique(qc[(qc != "") & (qc != UNREADABLE)].astype(str), return_counts=True)
    flagged = int(counts.sum())
    share = flagged / plan.num_tiles if plan.num_tiles else 0.0
    tissue_mm2, malignant_mm2 = areas_mm2(grid, threshold, plan.stride, plan.slide_mpp)
    blurred = (qc == "blur").sum() / plan.num_tiles if plan.num_tiles else 0.0
    out_of_focus = bool(blurred >= OUT_OF_FOCUS_FRACTION)
    return {
        "tiles_in_grid": plan.num_grid_tiles,
        "tiles_on_tissue": plan.num_tiles,
        "tiles_classified": int(ok.sum()),
        "tiles_malignant": int((prob[ok] >= threshold).sum()),
        "tiles_failed": int((qc == UNREADABLE).sum()),
        "tiles_qc": {str(r): int(c) for r, c in zip(reasons, counts)},
        "tiles_qc_fraction": round(share, 6),
        "out_of_focus": out_of_focus,
        "qc_warning": (f"out of focus: {100 * blurred:.0f} % of the tiles on tissue are blurred, so most of the "
                       "slide was not classified and its results do not stand for it; rescan it in focus"
                       if out_of_focus else
                       f"{100 * share:.0f} % of the tiles on tissue failed quality control "
                       f"({', '.join(f'{r} {c}' for r, c in zip(reasons, counts))}); check the slide "
                       "(ink, focus) and rescan or clean it" if share >= QC_WARNING_FRACTION else None),
        "tissue_area_mm2": round(tissue_mm2, 6),
        "malignant_area_mm2": round(malignant_mm2, 6),
        "malignant_fraction_of_tissue": round(malignant_mm2 / tissue_mm2, 6) if tissue_mm2 else None,
        "mean_prob_malignant": round(float(prob[ok].mean()), 6) if ok.any() else None,
        "max_prob_malignant": round(float(prob[ok].max()), 6) if ok.any() else None,
    }


def smooth_plan(plan: TilePlan, prob: np.ndarray, sigma: float) -> np.ndarray:
    """Each classified tile's probability smoothed over its classified neighbours on the slide's
    grid (`evaluation.neighbourhood`); `sigma` in tiles (in strides where tiles overlap)."""
    return smooth_tiles(plan.xs // plan.stride, plan.ys // plan.stride, prob, sigma * plan.tile_side / plan.stride)


def write_slide_outputs(folder: Path, plan: TilePlan, prob: np.ndarray, failed: dict[int, str],
                        threshold: float, facts: dict, qc: np.ndarray | None = None,
                        truth: Truth | TruthError | None = None, stain_transform=None,
                        neighbourhood: dict | None = None) -> dict:
    """Writes one slide's files into `folder` and returns its summary (`facts` first: name,
    path, vendor, resolution, timing...). `qc`: each tile's QC reason ("" passed; None: no
    QC); a tile that failed to read is `unreadable`. `truth`: the slide's annotation to score
    the classified tiles against (or why it cannot be used: the summary says so, the slide's
    results stand). `stain_transform`: the slide's stain normalization, shown on its thumbnail
    (thumbnail_normalized.png; for an ensemble's list, its first member's). `neighbourhood`: the
    run's (calibration.json): the calls, map, regions and scores are then those of
    `prob_smoothed` at its own threshold."""
    from PIL import Image

    from ..report.plots import save_figure
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    prob = np.asarray(prob, dtype=np.float64)
    qc = np.full(plan.num_tiles, "", dtype=object) if qc is None else np.asarray(qc, dtype=object).copy()
    qc[~np.isfinite(prob)] = UNREADABLE
    prob = np.where(qc == "", prob, np.nan)
    tile_prob = prob
    calls = f"each tile's prob_malignant at the run's threshold {threshold:.3f}"
    if neighbourhood is not None:
        prob, threshold = smooth_plan(plan, tile_prob, neighbourhood["sigma"]), float(neighbourhood["threshold"])
        calls = (f"prob_smoothed (each tile with its neighbours, a Gaussian of {neighbourhood['sigma']:g} tile) at "
                 f"the run's neighbourhood threshold {threshold:.3f}")
    grid = probability_map(plan, prob)
    labels = np.where(np.isfinite(prob), (prob >= threshold).astype(int), -1)

    def number(p):
        return "" if not math.isfinite(p) else round(float(p), 6)
    columns = ("x", "y", "width", "height", "tissue_fraction", "prob_malignant",
               *(("prob_smoothed",) if neighbourhood is not None else ()), "label", "qc")
    write_csv_atomic(folder / "tiles.csv", columns,
                     ((int(x), int(y), plan.tile_side, plan.tile_side, round(float(t), 4), number(p),
                       *((number(smoothed),) if neighbourhood is not None else ()), "" if lab < 0 else int(lab), reason)
                      for x, y, t, p, smoothed, lab, reason in zip(plan.xs, plan.ys, plan.tissue_fraction, tile_prob,
                                                                    prob, labels, qc)))
    features = region_features(grid, threshold, plan.stride, plan.slide_mpp)
    write_json_atomic(folder / "regions.geojson", feature_collection(features))
    thumbnail = Image.fromarray(plan.thumbnail)
    thumbnail.thumbnail((THUMBNAIL_PNG_SIDE, THUMBNAIL_PNG_SIDE))
    thumbnail.save(folder / "thumbnail.png")
    if isinstance(stain_transform, (list, tuple)):
        stain_transform = stain_transform[0]
    if stain_transform is not None:
        Image.fromarray(stain_transform.apply(np.asarray(thumbnail))).save(folder / "thumbnail_normalized.png")
    scores = None
    if isinstance(truth, Truth):
        try:
            scores = truth_scores(plan, prob, threshold, truth)
        except TruthError as err:
            truth = err
    if isinstance(truth, TruthError):
        scores = {"error": str(truth)}
    ax = plot_slide_probability(plan.thumbnail, grid, plan.stride, plan.dimensions,
                                title=f"{printable(facts.get('slide', ''))}: prob_malignant per tile",
                                outline=outline_rings(truth) if isinstance(truth, Truth) else ())
    save_figure(ax.figure, folder / "heatmap.png", dpi=90)
    if (qc != "").any():
        save_figure(plot_slide_qc(plan.thumbnail, plan, qc).figure, folder / "qc.png", dpi=90)
    summary = {**facts, "status": "ok", "threshold": round(float(threshold), 6), "calls": calls,
               **slide_numbers(plan, prob, threshold, grid, qc), "malignant_regions": len(features),
               "failed_tiles": [{"x": int(plan.xs[i]), "y": int(plan.ys[i]), "why": why}
                                for i, why in sorted(failed.items())[:MAX_FAILED_LISTED]]}
    if scores is not None:
        summary["truth"] = scores
    seconds = summary.get("seconds")
    if seconds:
        summary["tiles_per_second"] = round(plan.num_tiles / seconds, 1)
    write_json_atomic(folder / "summary.json", summary)
    return summary


def write_failed_slide(folder: Path, facts: dict, reason: str) -> dict:
    """A slide that could not be used: its folder holds summary.json saying why."""
    summary = {**facts, "status": "failed", "error": reason}
    write_json_atomic(Path(folder) / "summary.json", summary)
    return summary


# ---- index.html -------------------------------------------------------------------------

OVERVIEW_COLUMNS = ("slide", "status", "tiles on tissue", "tiles failing QC", "malignant tiles",
                    "malignant mm²", "malignant % of tissue", "max prob", "tiles/s")


def index_sections(out_dir: Path, summaries: Sequence[dict]) -> list[Section]:
    scored = any("truth" in s for s in summaries)
    rows = []
    for s in summaries:
        if s["status"] == "ok":
            fraction = s.get("malignant_fraction_of_tissue")
            status = ("ok, OUT OF FOCUS" if s.get("out_of_focus") else
                      "ok, QC warning" if s.get("qc_warning") else "ok")
            row = (printable(s["slide"]), status, s["tiles_on_tissue"], sum(s.get("tiles_qc", {}).values()),
                   s["tiles_malignant"],
                   f"{s['malignant_area_mm2']:.3f}", None if fraction is None else f"{100 * fraction:.1f}",
                   None if s["max_prob_malignant"] is None else f"{s['max_prob_malignant']:.3f}",
                   f"{s.get('tiles_per_second') or 0:.0f}")
        else:
            row = (printable(s["slide"]), f"failed: {printable(s['error'])}", *[None] * 7)
        rows.append(row + ((_dice_cell(s.get("truth")),) if scored else ()))
    columns = OVERVIEW_COLUMNS + (("Dice vs annotation",) if scored else ())
    overview = Section("overview", "Slides").table(columns, rows, text_columns=2)
    overview.text("Each slide's folder beside this page holds tiles.csv (every tile's probability and "
                  "label), summary.json, heatmap.png and regions.geojson (malignant regions for QuPath: "
                  "File > Import objects).", "note")
    sections = [overview]
    for i, s in enumerate(summaries):
        sections.append(slide_section(Path(out_dir) / s["folder"], s, key=f"slide-{i + 1}"))
    return sections


def _dice_cell(truth: dict | None) -> str | None:
    if truth is None:
        return None
    if "error" in truth:
        return "no annotation"
    cell = "n/a" if truth["dice"] is None else f"{truth['dice']:.3f}"
    if truth.get("dice_all") is not None and truth.get("coverage") is not None:
        cell += f" (counting missed tumour {truth['dice_all']:.3f}; coverage {100 * truth['coverage']:.0f} %)"
    return cell


TRUTH_ROWS = (("Dice (classified tiles)", "dice"), ("Dice counting unclassified tumour as missed", "dice_all"),
              ("coverage: share of the tumour area under classified tiles", "coverage"),
              ("IoU", "iou"), ("sensitivity", "sensitivity"),
              ("sensitivity counting unclassified tumour as missed", "sensitivity_all"), ("specificity", "specificity"),
              ("true positive tiles", "tp"), ("false positive tiles", "fp"), ("false negative tiles", "fn"),
              ("true negative tiles", "tn"), ("tumour tiles", "tumour_tiles"),
              ("tumour tiles left unclassified (QC, unreadable)", "tumour_tiles_unclassified"),
              ("tumour tiles off the tissue mask", "tumour_tiles_off_tissue"),
              ("annotated tumour (mm²)", "annotated_area_mm2"))


def truth_section_parts(section: Section, truth: dict) -> None:
    """The scores against the annotation (or why there are none) in a slide's section."""
    if "error" in truth:
        section.text(f"Not scored against an annotation: {truth['error']}", "note")
        return
    section.text(f"Against the annotation {printable(truth['source'])} (tumour: "
                 f"{', '.join(truth['classes']) or 'every feature, none is classified'}); over the "
                 f"{truth['tiles_scored']:,} classified tiles, a tile truly malignant when half of it lies "
                 "inside the tumour. Its outline is drawn on the heatmap.", "note")
    section.table(("against the annotation", "value"),
                  [(label, truth[key]) for label, key in TRUTH_ROWS if key in truth])
    if truth.get("note"):
        section.text(truth["note"], "note")


def slide_section(folder: Path, s: dict, key: str = "slide", title: str | None = None) -> Section:
    """One slide: thumbnail, heatmap and numbers (or why it failed)."""
    section = Section(key, title or printable(s["slide"]))
    if s["status"] != "ok":
        return section.text(f"Not analysed: {s['error']}")
    section.text(f"{s['vendor']} slide, {s['width']:,} x {s['height']:,} px at {s['slide_mpp']:.4g} µm/px "
                 f"({s['slide_mpp_source']}); model at {s['model_mpp']:.4g} µm/px, tiles of "
                 f"{s['tile_side']} px read from level {s['level_read']}.", "note")
    section.figure(folder / "thumbnail.png", "Thumbnail; tissue found on it: "
                                             f"{s['tiles_on_tissue']:,} of {s['tiles_in_grid']:,} tiles")
    if (folder / "thumbnail_normalized.png").exists() and s.get("stain"):
        stain = s["stain"]
        section.figure(folder / "thumbnail_normalized.png",
                       f"The same after stain normalization ({stain['method']}, fitted on "
                       f"{stain.get('fitted_on_tiles', '?')} tissue tiles of this slide; scale "
                       f"{stain.get('scale')}, confidence {stain.get('confidence')}): what the model saw"
                       + (" (the ensemble's first member; each member normalizes to its own reference)"
                          if stain.get("members") else ""))
    if s.get("qc_warning"):
        section.text(f"Warning: {s['qc_warning']}.", "warning")
    section.figure(folder / "heatmap.png", f"Probability of malignancy per tile; malignant at "
                                           f"{s['threshold']:.3f} and above; calls: "
                                           f"{s.get('calls', 'the run threshold')}")
    if (folder / "qc.png").exists():
        counts = ", ".join(f"{reason} {count}" for reason, count in s.get("tiles_qc", {}).items())
        section.figure(folder / "qc.png", f"Tiles left unclassified by quality control ({counts or 'none'}"
                                          f"{', unreadable ' + str(s['tiles_failed']) if s['tiles_failed'] else ''})")
    numbers = [("tiles on tissue", s["tiles_on_tissue"]), ("tiles classified", s["tiles_classified"]),
               ("malignant tiles", s["tiles_malignant"]), ("failed tiles", s["tiles_failed"]),
               *((f"tiles failing QC: {reason}", count) for reason, count in s.get("tiles_qc", {}).items()),
               ("tissue area (mm²)", s["tissue_area_mm2"]),
               ("malignant area (mm²)", s["malignant_area_mm2"]),
               ("malignant fraction of tissue", s["malignant_fraction_of_tissue"]),
               ("malignant regions", s["malignant_regions"]),
               ("mean prob_malignant", s["mean_prob_malignant"]), ("max prob_malignant", s["max_prob_malignant"]),
               ("seconds", s.get("seconds")), ("tiles per second", s.get("tiles_per_second"))]
    section.table(("", "value"), numbers)
    if "truth" in s:
        truth_section_parts(section, s["truth"])
    if s["failed_tiles"]:
        section.text(f"{s['tiles_failed']} tile(s) could not be read, e.g. at ({s['failed_tiles'][0]['x']}, "
                     f"{s['failed_tiles'][0]['y']}): {s['failed_tiles'][0]['why']}", "note")
    return section


def write_index(out_dir: Path, summaries: Sequence[dict], run_folder: str) -> Path:
    """index.html and slides.json over all slides of a `histoclass slide` call."""
    out_dir = Path(out_dir)
    ok = sum(s["status"] == "ok" for s in summaries)
    html = render("histoclass: whole slides",
                  f"{ok} of {len(summaries)} slide(s) analysed with the run {printable(run_folder)}",
                  index_sections(out_dir, summaries))
    write_json_atomic(out_dir / "slides.json", list(summaries))
    path = out_dir / "index.html"
    write_text_atomic(path, html)
    return path
