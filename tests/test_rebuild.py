"""`histoclass rebuild`: IDC patches laid at their coordinates as a pyramidal TIFF that OpenSlide
reads, and their IDC annotation as valid GeoJSON."""
from __future__ import annotations

import csv
import json
import shutil

import cv2
import numpy as np
import pytest
from conftest import make_idc_tree, patch, shared_data, write_png

from histoclass.cli import main
from histoclass.slides.rebuild import GLASS_RGB, rebuild_slides
from histoclass.slides.reader import open_slide
from histoclass.slides.tiling import plan_tiles, read_tiles


def _png(path) -> np.ndarray:
    return cv2.imread(str(path), cv2.IMREAD_COLOR)[..., ::-1]


def _shapes(geojson):
    from shapely.geometry import shape
    return [shape(f["geometry"]) for f in geojson["features"]]


def test_rebuild_lays_patches_on_their_coordinates(tmp_path):
    import openslide
    root = make_idc_tree(tmp_path / "idc", num_patients=2, per_class=3)
    shutil.rmtree(root / "10001" / "1")  # benign patches only: not a complete slide
    rebuilt = rebuild_slides(root, tmp_path / "slides", progress=False)
    assert [r.patient_id for r in rebuilt] == ["10000"]
    assert (rebuilt[0].num_patches, rebuilt[0].num_malignant) == (6, 3)
    # patches reach x = 150, y = 550 (class 1 on row 10); one patch of glass beyond
    assert rebuilt[0].dimensions == (200, 600)

    slide = openslide.OpenSlide(str(tmp_path / "slides" / "10000.tiff"))
    assert float(slide.properties["openslide.mpp-x"]) == pytest.approx(4.0)
    for png in sorted((root / "10000").rglob("*.png")):
        x, y = (int(part[1:]) for part in png.stem.split("_")[2:4])
        region = np.asarray(slide.read_region((x - 1, y - 1), 0, (50, 50)).convert("RGB"))
        np.testing.assert_array_equal(region, _png(png))
    glass = np.asarray(slide.read_region((160, 0), 0, (40, 40)).convert("RGB"))
    assert (glass == GLASS_RGB).all()

    annotation = json.loads((tmp_path / "slides" / "10000.geojson").read_text())
    (tumor,) = _shapes(annotation)
    assert tumor.is_valid and tumor.bounds == (0, 500, 150, 550) and tumor.area == 3 * 2500
    assert annotation["features"][0]["properties"]["classification"]["name"] == "Tumor"

    everyone = rebuild_slides(root, tmp_path / "all", all_patients=True, progress=False)
    assert [r.patient_id for r in everyone] == ["10000", "10001"]
    assert json.loads((tmp_path / "all" / "10001.geojson").read_text())["features"] == []


def test_the_slide_path_cuts_the_patches_themselves(tmp_path):
    root = make_idc_tree(tmp_path / "idc", num_patients=1, per_class=4)
    rebuild_slides(root, tmp_path / "slides", progress=False)
    with open_slide(tmp_path / "slides" / "10000.tiff") as slide:
        plan = plan_tiles(slide, model_mpp=4.0, image_size=50)
        tiles, failed = read_tiles(slide, plan, np.arange(plan.num_tiles))
    assert not failed
    on_tissue = {(int(x), int(y)): tile for x, y, tile in zip(plan.xs, plan.ys, tiles)}
    pngs = sorted(root.rglob("*.png"))
    assert len(on_tissue) == len(pngs) == 8
    for png in pngs:
        x, y = (int(part[1:]) for part in png.stem.split("_")[2:4])
        np.testing.assert_array_equal(on_tissue[(x - 1, y - 1)], _png(png))


def test_patches_meeting_at_a_corner_are_separate_valid_regions(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "idc"
    # a checkerboard of malignant patches, with benign ones on the other squares
    for row in range(4):
        for column in range(4):
            label = (row + column) % 2
            x, y = 1 + 50 * column, 1 + 50 * row
            write_png(root / "7" / str(label) / f"7_idx5_x{x}_y{y}_class{label}.png", patch(label, rng))
    rebuild_slides(root, tmp_path / "slides", progress=False)
    shapes = _shapes(json.loads((tmp_path / "slides" / "7.geojson").read_text()))
    assert len(shapes) == 8 and all(s.is_valid and s.geom_type == "Polygon" for s in shapes)
    assert sum(s.area for s in shapes) == 8 * 2500


def test_rebuild_cli_and_its_errors(tmp_path, capsys):
    root = make_idc_tree(tmp_path / "idc", num_patients=2, per_class=2)
    assert main(["rebuild", str(root), "--out", str(tmp_path / "slides"), "-q"]) == 0
    assert "10000: 4 patches (2 malignant)" in capsys.readouterr().out
    assert main(["rebuild", str(root), "--out", str(tmp_path / "slides"), "-q"]) == 2
    assert "already exists" in capsys.readouterr().err
    plain = tmp_path / "plain"
    write_png(plain / "0" / "a.png", patch(0, np.random.default_rng(0)))
    assert main(["rebuild", str(plain), "--out", str(tmp_path / "x"), "-q"]) == 2
    assert "not in the Kaggle IDC layout" in capsys.readouterr().err
    shutil.rmtree(root / "10000" / "0")
    shutil.rmtree(root / "10001" / "0")
    assert main(["rebuild", str(root), "--out", str(tmp_path / "y"), "-q"]) == 2
    assert "--all" in capsys.readouterr().err


def test_rebuild_idc_sample(tmp_path):
    import openslide
    data = shared_data("idc-sample")
    rebuilt = rebuild_slides(data, tmp_path / "slides", progress=False)
    assert [r.patient_id for r in rebuilt] == ["10253", "8864", "8865"]
    with open(data / "patches.csv") as handle:
        rows = [r for r in csv.DictReader(handle) if r["patient"] == "8864"]
    slide = openslide.OpenSlide(str(tmp_path / "slides" / "8864.tiff"))
    assert float(slide.properties["openslide.mpp-x"]) == pytest.approx(4.0)
    for row in rows[::97]:
        x, y, w, h = (int(row[k]) for k in ("x", "y", "width", "height"))
        region = np.asarray(slide.read_region((x - 1, y - 1), 0, (w, h)).convert("RGB"))
        np.testing.assert_array_equal(region, _png(data / row["path"]))
    shapes = _shapes(json.loads((tmp_path / "slides" / "8864.geojson").read_text()))
    assert all(s.is_valid for s in shapes)
    malignant_area = sum(int(r["width"]) * int(r["height"]) for r in rows if r["label"] == "malignant")
    assert sum(s.area for s in shapes) == malignant_area
