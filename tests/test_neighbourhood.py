"""The neighbourhood: smoothing tile probabilities over a grid (golden numbers), its threshold
fitted on validation patients' patch grids, and `histoclass slide` calling tiles from it."""
import csv
import json

import numpy as np
import pytest

from histoclass.cli import main
from histoclass.errors import HistoclassError
from histoclass.evaluation.neighbourhood import fit_neighbourhood, grid_cells, smooth_grid, smooth_patients, smooth_tiles
from histoclass.runs.folder import read_neighbourhood
from histoclass.synth.slide_file import write_pyramid_tiff
from histoclass.synth.tissue import render_slide


def test_smooth_grid_golden():
    # two tiles two cells apart in a row: each keeps weight exp(0) and takes exp(-2^2/2) of the other
    out = smooth_grid(np.array([[1.0, np.nan, 0.0]]), 1.0)
    assert out[0, 0] == pytest.approx(1 / (1 + np.exp(-2)), abs=1e-4)
    assert out[0, 2] == pytest.approx(np.exp(-2) / (1 + np.exp(-2)), abs=1e-4)
    assert np.isnan(out[0, 1])  # a missing tile stays missing, and weighs nothing
    # a lone tile keeps its own probability: glass around it does not pull it to 0
    lone = np.full((5, 5), np.nan)
    lone[2, 2] = 0.9
    assert smooth_grid(lone, 1.0)[2, 2] == pytest.approx(0.9)
    # a flat field stays flat, edges included
    np.testing.assert_allclose(smooth_grid(np.full((4, 6), 0.3), 1.0), 0.3)
    np.testing.assert_array_equal(smooth_grid(np.array([[0.2, 0.8]]), 0.0), [[0.2, 0.8]])  # sigma 0: as is


def test_smooth_tiles_and_patch_grids():
    out = smooth_tiles([0, 2, 2, 5], [0, 0, 0, 0], [1.0, 0.0, 0.5, np.nan], 1.0)
    # two tiles in one cell are averaged there (0.25); the NaN tile stays NaN
    assert out[0] == pytest.approx((1.0 + 0.25 * np.exp(-2)) / (1 + np.exp(-2)), abs=1e-4)
    assert out[1] == out[2] and np.isnan(out[3])
    columns, rows = grid_cells([1, 51, 151, 101], [1, 1, 101, 51])  # IDC corners, 50 px apart
    assert columns.tolist() == [0, 1, 3, 2] and rows.tolist() == [0, 0, 2, 1]
    # patients are smoothed apart; a patch without coordinates keeps its own probability
    prob = np.array([1.0, 0.0, 0.6, 0.4, 0.7])
    smoothed, with_grid = smooth_patients(prob, ["a", "a", "b", "b", "c"], [1, 51, 1, 51, None], [1, 1, 1, 1, None])
    assert with_grid == 2 and smoothed[4] == 0.7
    neighbour = np.exp(-0.5)
    assert smoothed[0] == pytest.approx(1 / (1 + neighbour), abs=1e-4)
    assert smoothed[2] == pytest.approx((0.6 + 0.4 * neighbour) / (1 + neighbour), abs=1e-4)


def test_fit_neighbourhood_on_noisy_tumour_regions():
    """Validation patients with a block of tumour on a 20 x 20 grid of patches and noisy tile
    probabilities: smoothing raises Dice, and its threshold is its own."""
    rng = np.random.default_rng(0)
    labels, prob, groups, xs, ys = [], [], [], [], []
    for patient in range(4):
        rows, columns = np.mgrid[0:20, 0:20]
        tumour = (np.abs(rows - 6 - patient) < 5) & (np.abs(columns - 10) < 6)
        labels += tumour.ravel().astype(int).tolist()
        prob += np.clip(np.where(tumour, 0.65, 0.35).ravel() + rng.normal(0, 0.2, tumour.size), 0, 1).tolist()
        groups += [f"p{patient}"] * tumour.size
        xs += (columns.ravel() * 50 + 1).tolist()
        ys += (rows.ravel() * 50 + 1).tolist()
    fitted = fit_neighbourhood(labels, prob, groups, xs, ys, tile_threshold=0.5)
    assert fitted["sigma"] == 1.0 and fitted["num_patients_with_grid"] == 4 and fitted["num_val"] == 1600
    assert 0.3 < fitted["threshold"] < 0.7
    assert fitted["val_dice_smoothed"] > fitted["val_dice_tiles"] + 0.05
    # no coordinates (a folder of images without x and y) or one class: nothing to fit
    assert fit_neighbourhood(labels, prob, groups, [None] * 1600, [None] * 1600, 0.5) is None
    assert fit_neighbourhood([0] * 1600, prob, groups, xs, ys, 0.5) is None


def test_read_neighbourhood_checks_what_it_reads(tmp_path):
    assert read_neighbourhood(tmp_path) is None
    (tmp_path / "calibration.json").write_text(json.dumps({"threshold": 0.5}))
    assert read_neighbourhood(tmp_path) is None  # a run from before the neighbourhood
    (tmp_path / "calibration.json").write_text(json.dumps({"neighbourhood": {"sigma": 1, "threshold": 0.4}}))
    assert read_neighbourhood(tmp_path) == {"sigma": 1.0, "threshold": 0.4}
    (tmp_path / "calibration.json").write_text(json.dumps({"neighbourhood": {"sigma": 1, "threshold": 4}}))
    with pytest.raises(HistoclassError, match="threshold in \\[0, 1\\]"):
        read_neighbourhood(tmp_path)
    (tmp_path / "calibration.json").write_text(json.dumps({"neighbourhood": {"sigma": "x"}}))
    with pytest.raises(HistoclassError, match="damaged neighbourhood"):
        read_neighbourhood(tmp_path)


def test_slide_calls_from_the_neighbourhood_or_tiles_alone(trained_run, tmp_path):
    fitted = read_neighbourhood(trained_run)  # finalize fitted it on the fixture's validation patients
    assert fitted is not None and fitted["fitted_on"] == "val"
    rgb = render_slide(np.random.default_rng(5), 500, 400, tumour_fraction=0.4)[0]
    write_pyramid_tiff(tmp_path / "s.tiff", rgb, 4.0)
    for flag in ("--neighbourhood", "--tiles-alone"):
        assert main(["slide", str(trained_run), str(tmp_path / "s.tiff"), "--out", str(tmp_path / flag), flag,
                     "--quiet"]) == 0
    smoothed_summary = json.loads((tmp_path / "--neighbourhood" / "s.tiff" / "summary.json").read_text())
    alone_summary = json.loads((tmp_path / "--tiles-alone" / "s.tiff" / "summary.json").read_text())
    assert smoothed_summary["calls"].startswith("prob_smoothed") and smoothed_summary["threshold"] == pytest.approx(
        fitted["threshold"], abs=1e-6)
    assert alone_summary["calls"].startswith("each tile's prob_malignant")
    with open(tmp_path / "--neighbourhood" / "s.tiff" / "tiles.csv", newline="") as handle:
        tiles = [t for t in csv.DictReader(handle) if t["label"] != ""]
    assert tiles and all(int(t["label"]) == (float(t["prob_smoothed"]) >= smoothed_summary["threshold"]) for t in tiles)
    with open(tmp_path / "--tiles-alone" / "s.tiff" / "tiles.csv", newline="") as handle:
        alone = list(csv.DictReader(handle))
    assert "prob_smoothed" not in alone[0]
    # the tile's own probability is the same either way
    assert [t["prob_malignant"] for t in alone if t["label"] != ""] == [t["prob_malignant"] for t in tiles]


def _scored_patches(prob, labels, places, groups):
    from histoclass.data.records import ImageRecord
    from histoclass.inference.scoring import ScoredImages
    records = [ImageRecord(f"{g}_{i}.png", int(label), g, *(place or (None, None)))
               for i, (label, place, g) in enumerate(zip(labels, places, groups))]
    prob = np.asarray(prob, float)
    return ScoredImages("patches", records, np.zeros((len(prob), 2, 2, 3), np.uint8), np.asarray(labels),
                        prob, prob, [], "fingerprint")


def _run_with(neighbourhood):
    from types import SimpleNamespace
    from histoclass.runs.folder import Calibration
    calibration = Calibration(threshold=0.5, threshold_method="youden", neighbourhood=neighbourhood)
    return SimpleNamespace(calibration=calibration, threshold=0.5, temperature=1.0, neighbourhood=neighbourhood)


def test_evaluate_reports_patches_with_their_patients_neighbourhood():
    from histoclass.inference.scoring import evaluation_metrics
    # Patient "a": a 3x3 block of benign patches (IDC corners 50 px apart), the centre one called
    # malignant alone (0.9); its eight neighbours at 0.1 bring it to well under 0.5. Patient "b"
    # has no places (not IDC names): its two patches keep their own probabilities.
    places = [(1 + 50 * c, 1 + 50 * r) for r in range(3) for c in range(3)]
    prob = [0.1] * 4 + [0.9] + [0.1] * 4 + [0.8, 0.2]
    labels = [0] * 9 + [1, 0]
    scored = _scored_patches(prob, labels, places + [None, None], ["a"] * 9 + ["b"] * 2)
    alone = evaluation_metrics(_run_with(None), scored)
    assert "neighbourhood" not in alone  # a run without one (older, or no validation grid)
    assert alone["confusion_matrix"] == [[9, 1], [0, 1]]
    metrics = evaluation_metrics(_run_with({"sigma": 1.0, "threshold": 0.5}), scored)
    smoothed = metrics["neighbourhood"]
    # the centre: (0.9 + 0.1 * (4 e^-1/2 + 4 e^-1)) / (1 + 4 e^-1/2 + 4 e^-1) = 0.25
    assert smoothed["confusion_matrix"] == [[10, 0], [0, 1]]
    assert smoothed["threshold"] == 0.5 and smoothed["sigma"] == 1.0 and smoothed["num_groups_with_places"] == 1
    assert metrics["confusion_matrix"] == alone["confusion_matrix"]  # the headline stays the tiles' own
    # patches without places anywhere: nothing to smooth, no neighbourhood block
    flat = _scored_patches(prob, labels, [None] * 11, ["a"] * 9 + ["b"] * 2)
    assert "neighbourhood" not in evaluation_metrics(_run_with({"sigma": 1.0, "threshold": 0.5}), flat)
