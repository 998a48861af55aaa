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
from histoclass.data import discover
from histoclass.slides.completeness import judge_patient, measure_tiling
from histoclass.slides.rebuild import GLASS_RGB, choose_patients, rebuild_slides
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
    result = rebuild_slides(root, tmp_path / "slides", progress=False, flat_glass=True)
    rebuilt = result.slides
    assert [r.patient_id for r in rebuilt] == ["10000"]
    assert [(s.patient_id, s.num_patches, s.reason) for s in result.skipped_patients] == [
        ("10001", 3, "one class only: all 3 patches benign")]
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

    # By default the glass is as a scanner shows it: uneven, and the patches under the same light.
    rebuild_slides(root, tmp_path / "scanned", progress=False)
    scanned = openslide.OpenSlide(str(tmp_path / "scanned" / "10000.tiff"))
    glass = np.asarray(scanned.read_region((160, 0), 0, (40, 600)).convert("RGB")).astype(int)
    assert glass.std() > 1 and np.median(np.abs(glass - GLASS_RGB)) <= 15
    for png in sorted((root / "10000").rglob("*.png")):
        x, y = (int(part[1:]) for part in png.stem.split("_")[2:4])
        region = np.asarray(scanned.read_region((x - 1, y - 1), 0, (50, 50)).convert("RGB")).astype(int)
        assert np.median(np.abs(region - _png(png))) <= 15

    everyone = rebuild_slides(root, tmp_path / "all", all_patients=True, progress=False)
    assert [r.patient_id for r in everyone.slides] == ["10000", "10001"] and not everyone.skipped_patients
    assert json.loads((tmp_path / "all" / "10001.geojson").read_text())["features"] == []


def test_the_slide_path_cuts_the_patches_themselves(tmp_path):
    root = make_idc_tree(tmp_path / "idc", num_patients=1, per_class=4)
    rebuild_slides(root, tmp_path / "scanned", progress=False)
    with open_slide(tmp_path / "scanned" / "10000.tiff") as slide:  # on uneven glass, the same tiles
        plan = plan_tiles(slide, model_mpp=4.0, image_size=50)
    assert sorted(zip(plan.xs.tolist(), plan.ys.tolist())) == sorted(
        (int(p.stem.split("_")[2][1:]) - 1, int(p.stem.split("_")[3][1:]) - 1) for p in root.rglob("*.png"))
    rebuild_slides(root, tmp_path / "slides", progress=False, flat_glass=True)
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
    _write_scattered(root / "10002")
    assert main(["rebuild", str(root), "--out", str(tmp_path / "slides"), "-q"]) == 0
    printed = capsys.readouterr().out
    assert "10000: 4 patches (2 malignant)" in printed
    assert ("skipped 10002 (8 patches): scattered: 0% of its 8 patches touch another, and they fill 9% of their "
            "convex hull") in printed
    assert ("Wrote 2 slide(s) to " + str(tmp_path / "slides") + ", skipped 1 patient(s) whose patches are not a whole "
            "slide (a whole slide's patches: >= 75% touch another and they fill >= 15% of their convex hull; --all "
            "rebuilds them)") in printed
    assert main(["rebuild", str(root), "--out", str(tmp_path / "slides"), "-q"]) == 2
    assert "already exists" in capsys.readouterr().err
    plain = tmp_path / "plain"
    write_png(plain / "0" / "a.png", patch(0, np.random.default_rng(0)))
    assert main(["rebuild", str(plain), "--out", str(tmp_path / "x"), "-q"]) == 2
    assert "not in the Kaggle IDC layout" in capsys.readouterr().err
    shutil.rmtree(root / "10000" / "0")
    shutil.rmtree(root / "10001" / "0")
    assert main(["rebuild", str(root), "--out", str(tmp_path / "y"), "-q"]) == 2
    error = capsys.readouterr().err
    assert "10000: one class only: all 2 patches malignant; a whole slide's patches: >= 75%" in error and "give --all to rebuild them anyway" in error


# ---- which patients are whole slides ----------------------------------------------------------

def _write_scattered(folder, num_patches=8, seed=1):
    """A sampled patient: patches of both classes every third cell of a diagonal, touching none."""
    rng = np.random.default_rng(seed)
    patient = folder.name
    for i in range(num_patches):
        label = i % 2
        x, y = 1 + 150 * i, 1 + 100 * (i % 3)
        write_png(folder / str(label) / f"{patient}_idx5_x{x}_y{y}_class{label}.png", patch(label, rng))


def _write_block(folder, columns=5, rows=4, seed=2):
    """A complete patient: a block of patches, the right two columns malignant."""
    rng = np.random.default_rng(seed)
    patient = folder.name
    for column in range(columns):
        for row in range(rows):
            label = int(column >= columns - 2)
            x, y = 1 + 50 * column, 1 + 50 * row
            write_png(folder / str(label) / f"{patient}_idx5_x{x}_y{y}_class{label}.png", patch(label, rng))


def test_tiling_statistics_golden():
    block = measure_tiling(1 + 50 * np.repeat(np.arange(5), 4), 1 + 50 * np.tile(np.arange(4), 5))
    assert (block.num_cells, block.touching, block.hull_fill, block.tiles_its_tissue) == (20, 1.0, 1.0, True)
    # cells (0, 0), (2, 0), (0, 2): none touches; hull (0,0) (3,0) (3,1) (1,3) (0,3) has area 7
    corners = measure_tiling([1, 101, 1], [1, 1, 101])
    assert (corners.num_cells, corners.touching, corners.hull_fill) == (3, 0.0, pytest.approx(3 / 7))
    assert not corners.tiles_its_tissue
    # an L of 3 cells: all touch, hull (0,0) (2,0) (2,1) (1,2) (0,2) has area 3.5; an edge patch
    # smaller than 50 px sits in its cell all the same
    ell = measure_tiling([1, 51, 1, 1], [1, 1, 51, 51])
    assert (ell.num_cells, ell.touching, ell.hull_fill, ell.tiles_its_tissue) == (3, 1.0, pytest.approx(3 / 3.5), True)
    assert judge_patient([1, 51], [1, 1], [0, 1]) is None
    assert judge_patient([1, 101, 1], [1, 1, 101], [0, 1, 1]) == (
        "scattered: 0% of its 3 patches touch another, and they fill 43% of their convex hull")
    assert judge_patient([1, 51], [1, 1], [1, 1]) == "one class only: all 2 patches malignant"


def test_rebuild_takes_the_block_and_skips_the_scattered_patient(tmp_path, caplog):
    root = tmp_path / "idc"
    _write_block(root / "20001")
    _write_scattered(root / "20002")
    with caplog.at_level("INFO", logger="histoclass.slides.rebuild"):
        result = rebuild_slides(root, tmp_path / "slides", progress=False)
    assert [(r.patient_id, r.num_patches, r.num_malignant) for r in result.slides] == [("20001", 20, 8)]
    (skipped,) = result.skipped_patients
    assert (skipped.patient_id, skipped.num_patches) == ("20002", 8)
    assert skipped.reason.startswith("scattered: 0% of its 8 patches touch another, and they fill ")
    assert ("skipped 1 of 2 patients, not whole slides (a whole slide's patches: >= 75% touch another and they "
            "fill >= 15% of their convex hull; --all rebuilds them): 1 scattered") in caplog.text
    assert not (tmp_path / "slides" / "20002.tiff").exists()
    (tumor,) = _shapes(json.loads((tmp_path / "slides" / "20001.geojson").read_text()))
    assert tumor.bounds == (150, 0, 250, 200)
    everyone = rebuild_slides(root, tmp_path / "all", all_patients=True, progress=False)
    assert [r.patient_id for r in everyone.slides] == ["20001", "20002"]


def _kinds(data) -> dict[str, str]:
    """patients.csv of idc-sample: this folder's own record of which patients are complete (a
    user's copy of the Kaggle set has none; `rebuild` does not read it)."""
    with open(data / "patients.csv", newline="", encoding="utf-8") as handle:
        return {row["patient"]: row["kind"] for row in csv.DictReader(handle)}


COMPLETE_IDC_SAMPLE = ["8864", "8865", "8913", "8916", "8917", "8918", "8950", "8951", "8955", "8957", "8974",
                       "8980", "8984", "9022", "9023", "9035", "9124", "9125", "10253", "14082", "14306"]


def test_rebuild_picks_the_complete_patients_of_idc_sample():
    data = shared_data("idc-sample")
    dataset = discover(data)  # reads the names, decodes no image
    by_patient = {}
    for record in dataset.records:
        by_patient.setdefault(record.group, []).append(record)
    chosen, skipped = choose_patients(by_patient)
    # the 21 complete patients and the 2 partial ones (one class complete: their tissue is tiled)
    assert chosen == sorted(COMPLETE_IDC_SAMPLE + ["8956", "8959"], key=int)
    kinds = _kinds(data)
    assert sorted((p for p, kind in kinds.items() if kind == "complete"), key=int) == COMPLETE_IDC_SAMPLE
    assert {kinds[p] for p in chosen} == {"complete", "partial"}
    assert len(skipped) == 130 and {kinds[s.patient_id] for s in skipped} == {"sampled"}
    assert all(s.reason.startswith(("scattered: ", "one class only")) for s in skipped)
    assert sum(s.reason.startswith("one class only") for s in skipped) == 7


def test_rebuild_idc_sample(tmp_path):
    import openslide
    data = shared_data("idc-sample")
    with open(data / "patches.csv") as handle:
        rows = [r for r in csv.DictReader(handle) if r["patient"] in ("8957", "9175")]
    root = tmp_path / "idc"  # a complete patient (8957) and the sampled one whose patches touch most (9175)
    for row in rows:
        (root / row["path"]).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(data / row["path"], root / row["path"])
    result = rebuild_slides(root, tmp_path / "slides", progress=False, flat_glass=True)
    assert [r.patient_id for r in result.slides] == ["8957"]
    assert [s.patient_id for s in result.skipped_patients] == ["9175"]
    assert result.skipped_patients[0].reason == ("scattered: 92% of its 37 patches touch another, and they fill 9% "
                                                 "of their convex hull")
    rows = [r for r in rows if r["patient"] == "8957"]
    slide = openslide.OpenSlide(str(tmp_path / "slides" / "8957.tiff"))
    assert float(slide.properties["openslide.mpp-x"]) == pytest.approx(4.0)
    for row in rows[::7]:
        x, y, w, h = (int(row[k]) for k in ("x", "y", "width", "height"))
        region = np.asarray(slide.read_region((x - 1, y - 1), 0, (w, h)).convert("RGB"))
        np.testing.assert_array_equal(region, _png(data / row["path"]))
    shapes = _shapes(json.loads((tmp_path / "slides" / "8957.geojson").read_text()))
    assert all(s.is_valid for s in shapes)
    malignant_area = sum(int(r["width"]) * int(r["height"]) for r in rows if r["label"] == "malignant")
    assert sum(s.area for s in shapes) == malignant_area > 0
