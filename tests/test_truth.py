"""`histoclass slide --truth`: reading QuPath-style annotations, scoring tiles against them, and
bad annotation files answered with reasons."""
from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import make_idc_tree

from histoclass.cli import main
from histoclass.errors import HistoclassError
from histoclass.slides.rebuild import rebuild_slides
from histoclass.slides.tiling import TilePlan
from histoclass.slides.truth import TruthError, read_truth, tiles_inside, truth_option, truth_scores


def _square(x0, y0, x1, y1) -> dict:
    return {"type": "Polygon", "coordinates": [[[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]]}


def _feature(geometry: dict, name: str | None = None) -> dict:
    properties = {"objectType": "annotation"}
    if name is not None:
        properties["classification"] = {"name": name, "color": [200, 0, 0]}
    return {"type": "Feature", "geometry": geometry, "properties": properties}


def _write(path, obj):
    path.write_text(json.dumps(obj))
    return path


def _plan(xs, ys, tile_side=100, dimensions=(1000, 1000)) -> TilePlan:
    n = len(xs)
    return TilePlan("s.tiff", 2.0, 2.0, 50, 0, 1.0, tile_side, tile_side, tile_side, dimensions, (10, 10),
                    np.array(xs), np.array(ys), np.ones(n), np.zeros((10, 10, 3), np.uint8), np.ones((10, 10), bool))


def test_tumour_classes_are_chosen_and_unclassified_files_count_whole(tmp_path):
    both = _write(tmp_path / "a.geojson", {"type": "FeatureCollection", "features": [
        _feature(_square(0, 0, 100, 100), "Tumor"), _feature(_square(200, 0, 300, 100), "Stroma"),
        _feature(_square(0, 200, 100, 300), "tumour")]})
    truth = read_truth(both)
    assert truth.tumor.area == 2 * 100 * 100 and truth.classes == ("Tumor", "tumour") and truth.num_features == 2
    assert read_truth(both, "stroma").tumor.area == 100 * 100
    none = read_truth(both, "Necrosis")
    assert none.tumor.is_empty and "no feature classified Necrosis (classes found: Stroma, Tumor, tumour)" in none.note
    # QuPath's older export: a list of features; no classification at all: every polygon is tumour
    plain = _write(tmp_path / "b.geojson", [_feature(_square(0, 0, 10, 10)), _feature(_square(5, 0, 20, 10)),
                                            _feature({"type": "Point", "coordinates": [1, 1]})])
    truth = read_truth(plain)
    assert truth.tumor.area == 200 and truth.num_features == 2 and "1 feature(s) without an area" in truth.note
    # a hand-drawn outline that crosses itself (a bow tie) is made valid, not refused
    bowtie = _write(tmp_path / "c.geojson", {"type": "Polygon",
                                             "coordinates": [[[0, 0], [10, 10], [10, 0], [0, 10], [0, 0]]]})
    truth = read_truth(bowtie)
    assert truth.tumor.is_valid and truth.tumor.area == pytest.approx(50)


def test_tile_scores_by_hand(tmp_path):
    # tumour: x 0..160 over y 0..100, and x 0..40 over y 100..200
    truth = read_truth(_write(tmp_path / "t.geojson", {"type": "MultiPolygon", "coordinates": [
        _square(0, 0, 160, 100)["coordinates"], _square(0, 100, 40, 200)["coordinates"]]}))
    # tiles of 100 px: (0,0) all inside, (100,0) 60 %, (0,100) 40 %, (100,100) and (300,300) outside
    plan = _plan([0, 100, 0, 100, 300], [0, 0, 100, 100, 300])
    np.testing.assert_allclose(tiles_inside(plan, truth), [1.0, 0.6, 0.4, 0.0, 0.0])
    # truly malignant: tiles 0 and 1. Predicted malignant (>= 0.5): tiles 0, 2; tile 4 failed.
    scores = truth_scores(plan, np.array([0.9, 0.2, 0.7, 0.1, np.nan]), 0.5, truth)
    assert (scores["tp"], scores["fp"], scores["fn"], scores["tn"]) == (1, 1, 1, 1)
    assert scores["tiles_scored"] == 4
    assert scores["dice"] == pytest.approx(2 / 4) and scores["iou"] == pytest.approx(1 / 3)
    assert scores["sensitivity"] == 0.5 and scores["specificity"] == 0.5
    assert scores["annotated_area_mm2"] == pytest.approx((160 * 100 + 40 * 100) * (2.0 / 1000) ** 2)
    # every tumour tile was classified and the classified tiles cover the whole tumour
    assert scores["coverage"] == 1.0 and scores["dice_all"] == scores["dice"]
    assert (scores["tumour_tiles"], scores["tumour_tiles_unclassified"], scores["tumour_tiles_off_tissue"]) == (2, 0, 0)
    # an annotation beyond the slide is another slide's, or not in level-0 pixels
    far = read_truth(_write(tmp_path / "far.geojson", _square(5000, 0, 5100, 100)))
    with pytest.raises(TruthError, match="lies outside the slide"):
        truth_scores(plan, np.array([0.9, 0.2, 0.7, 0.1, np.nan]), 0.5, far)


def test_bad_truth_files_say_why(tmp_path):
    slides = [tmp_path / "a.tiff", tmp_path / "b.tiff"]
    with pytest.raises(HistoclassError, match="does not exist"):
        truth_option(tmp_path / "missing.geojson", None, slides[:1])
    good = _write(tmp_path / "a.geojson", _square(0, 0, 1, 1))
    with pytest.raises(HistoclassError, match="one file but 2 slides"):
        truth_option(good, None, slides)
    with pytest.raises(HistoclassError, match="give --truth too"):
        truth_option(None, "Tumor", slides)
    broken = tmp_path / "broken.geojson"
    broken.write_text('{"type": "FeatureCollection", "features": [')
    with pytest.raises(TruthError, match=r"not valid JSON \(Expecting value at line 1"):
        truth_option(broken, None, slides[:1])
    with pytest.raises(TruthError, match="not GeoJSON"):
        read_truth(_write(tmp_path / "x.geojson", {"hello": 1}))
    with pytest.raises(TruthError, match="feature 1's geometry cannot be read"):
        read_truth(_write(tmp_path / "y.geojson", [_feature({"type": "Polygon", "coordinates": [[1, 2]]})]))
    (tmp_path / "latin.geojson").write_bytes(b'{"name": "\xe9"}')
    with pytest.raises(TruthError, match="not UTF-8"):
        read_truth(tmp_path / "latin.geojson")
    folder = truth_option(tmp_path, None, slides)
    with pytest.raises(TruthError, match=r"no annotation b.geojson in the --truth folder"):
        folder.for_slide(slides[1])
    assert folder.for_slide(slides[0]).tumor.area == 1
    _write(tmp_path / "b.tiff.geojson", _square(0, 0, 2, 2))  # named after the whole file name
    assert folder.for_slide(slides[1]).tumor.area == 4


@pytest.mark.slow
def test_slide_truth_end_to_end_on_rebuilt_slides(trained_run, tmp_path, capsys):
    root = make_idc_tree(tmp_path / "idc", num_patients=2, per_class=5)
    rebuilt = tmp_path / "rebuilt"
    rebuild_slides(root, rebuilt, progress=False)
    (rebuilt / "10001.geojson").write_text("not json")  # one bad annotation: that slide is not scored
    out = tmp_path / "out"
    assert main(["slide", str(trained_run), str(rebuilt), "--out", str(out), "--truth", str(rebuilt), "-q"]) == 0
    printed = capsys.readouterr().out
    assert "against the annotation Dice" in printed and "not scored: the annotation" in printed
    summary = json.loads((out / "10000.tiff" / "summary.json").read_text())
    truth = summary["truth"]
    assert truth["tp"] + truth["fp"] + truth["fn"] + truth["tn"] == summary["tiles_classified"] == 10
    assert truth["tp"] + truth["fn"] == 5  # the tiles are the patches: 5 malignant ones
    assert truth["classes"] == ["Tumor"] and 0 <= truth["dice"] <= 1
    assert truth["coverage"] == 1.0 and truth["tumour_tiles"] == 5 and truth["dice_all"] == truth["dice"]
    bad = json.loads((out / "10001.tiff" / "summary.json").read_text())
    assert bad["status"] == "ok" and "not valid JSON" in bad["truth"]["error"]
    html = (out / "index.html").read_text()
    assert "Dice vs annotation" in html and "no annotation" in html and "against the annotation" in html
    assert "counting missed tumour" in html and "share of the tumour area under classified tiles" in html
    # --truth-class that no feature has: scored against an empty tumour, with a note
    assert main(["slide", str(trained_run), str(rebuilt / "10000.tiff"), "--out", str(tmp_path / "o2"),
                 "--truth", str(rebuilt / "10000.geojson"), "--truth-class", "Stroma", "-q"]) == 0
    truth = json.loads((tmp_path / "o2" / "10000.tiff" / "summary.json").read_text())["truth"]
    assert truth["tp"] + truth["fn"] == 0 and "no feature classified Stroma" in truth["note"]
    # a bad single annotation stops the job before any slide is read
    assert main(["slide", str(trained_run), str(rebuilt / "10001.tiff"), "--out", str(tmp_path / "o3"),
                 "--truth", str(rebuilt / "10001.geojson"), "-q"]) == 2
    assert "not valid JSON" in capsys.readouterr().err and not (tmp_path / "o3").exists()


def test_missed_tumour_counts_by_hand(tmp_path):
    # tumour: the three tiles of x 0..300, y 0..100. The tissue mask left out (0, 0); QC left
    # (200, 0) unclassified; (100, 0) is a true positive, (0, 100) a true negative, (500, 500) a
    # false positive.
    truth = read_truth(_write(tmp_path / "t.geojson", _square(0, 0, 300, 100)))
    plan = _plan([100, 200, 0, 500], [0, 0, 100, 500])
    scores = truth_scores(plan, np.array([0.9, np.nan, 0.1, 0.8]), 0.5, truth)
    assert (scores["tp"], scores["fp"], scores["fn"], scores["tn"]) == (1, 1, 0, 1)
    assert scores["dice"] == pytest.approx(2 / 3) and scores["sensitivity"] == 1.0
    assert (scores["tumour_tiles"], scores["tumour_tiles_classified"], scores["tumour_tiles_unclassified"],
            scores["tumour_tiles_off_tissue"]) == (3, 1, 1, 1)
    assert scores["dice_all"] == pytest.approx(2 / (2 + 1 + 2)) and scores["sensitivity_all"] == pytest.approx(1 / 3)
    assert scores["coverage"] == pytest.approx(1 / 3, abs=1e-6)  # only (100, 0)'s box lies on the tumour
    # half a tile of tumour under a classified tile: coverage is by area, not by tile
    half = read_truth(_write(tmp_path / "h.geojson", _square(100, 0, 150, 100)))
    scores = truth_scores(plan, np.array([0.9, np.nan, 0.1, 0.8]), 0.5, half)
    assert scores["coverage"] == 1.0 and scores["tumour_tiles"] == 1 and scores["dice_all"] == scores["dice"]
    # no tumour at all: nothing to cover
    empty = read_truth(_write(tmp_path / "e.geojson", {"type": "FeatureCollection", "features": []}))
    scores = truth_scores(plan, np.array([0.9, np.nan, 0.1, 0.8]), 0.5, empty)
    assert scores["coverage"] is None and scores["tumour_tiles"] == 0 and scores["dice_all"] == 0.0
