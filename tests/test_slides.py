"""Whole slides: reading, tissue, tiling at the model's µm/px, maps and regions, the CLI end to end,
and tile-vs-patch parity on a synthetic slide."""
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from histoclass.cli import main
from histoclass.slides.reader import open_slide
from histoclass.slides.regions import areas_mm2, probability_map, region_features
from histoclass.slides.tiling import TilePlan, choose_level, plan_tiles, read_tiles
from histoclass.slides.tissue import region_fractions, tissue_mask
from histoclass.synth.slide_file import write_pyramid_tiff
from histoclass.synth.tissue import render_slide


def painted_slide(width=420, height=340, seed=3):
    rgb, tumour, tissue = render_slide(np.random.default_rng(seed), width, height, tumour_fraction=0.4)
    return rgb, tumour, tissue


def write_slide(path: Path, rgb: np.ndarray, mpp: float, tile: int = 64) -> Path:
    return write_pyramid_tiff(path, rgb, mpp, tile=tile)


# ---- reading -------------------------------------------------------------------------------

def test_pyramidal_tiff_has_levels_and_resolution(tmp_path):
    rgb, _, _ = painted_slide()
    with open_slide(write_slide(tmp_path / "s.tiff", rgb, 4.0)) as slide:
        assert slide.vendor == "generic-tiff"
        assert slide.mpp == pytest.approx(4.0)
        assert slide.mpp_source == "file"
        assert slide.dimensions == (420, 340)
        assert slide.level_count >= 3 and slide.level_downsamples[1] == pytest.approx(2, rel=0.01)
        np.testing.assert_array_equal(slide.read_region((30, 40), 0, (50, 60)), rgb[40:100, 30:80])
        thumb = slide.thumbnail(100)
        assert max(thumb.shape[:2]) <= 100 and thumb.dtype == np.uint8


def test_plain_image_is_a_one_level_slide(tmp_path):
    rgb, _, _ = painted_slide(200, 150)
    path = tmp_path / "plain.png"
    cv2.imwrite(str(path), rgb[..., ::-1])
    with open_slide(path, slide_mpp=2.0) as slide:
        assert slide.level_count == 1 and slide.mpp == 2.0 and slide.mpp_source == "--slide-mpp"
        np.testing.assert_array_equal(slide.read_region((190, 140), 0, (20, 20))[:10, :10], rgb[140:150, 190:200])
        assert (slide.read_region((190, 140), 0, (20, 20))[10:, 10:] == 255).all()  # outside: white
    with open_slide(path) as slide:
        assert slide.mpp is None


def test_choose_level_is_the_coarsest_finer_than_needed():
    downsamples = (1.0, 4.0, 16.0, 64.0)
    assert choose_level(downsamples, 16.0) == 2
    assert choose_level(downsamples, 15.9) == 1
    assert choose_level(downsamples, 1.0) == 0
    assert choose_level(downsamples, 100.0) == 3


# ---- tissue --------------------------------------------------------------------------------

def test_tissue_mask_finds_stained_tissue_and_not_glass():
    glass = np.full((200, 300, 3), 242, np.uint8) + np.random.default_rng(0).integers(0, 6, (200, 300, 3), dtype=np.uint8)
    assert not tissue_mask(glass).any()
    slide = glass.copy()
    cv2.circle(slide, (150, 100), 60, (230, 140, 190), -1)  # eosin pink
    mask = tissue_mask(slide)
    truth = np.zeros((200, 300), np.uint8)
    cv2.circle(truth, (150, 100), 60, 1, -1)
    assert (mask == truth.astype(bool)).mean() > 0.99


def test_region_fractions_golden():
    mask = np.zeros((10, 10), bool)
    mask[:5, :] = True
    # level-0 squares of 40 px on a mask at 1/10 scale: fully in, half in, out
    fractions = region_fractions(mask, (10.0, 10.0), np.array([0, 0, 0]), np.array([0, 30, 60]), 40)
    np.testing.assert_allclose(fractions, [1.0, 0.5, 0.0])


# ---- tiling --------------------------------------------------------------------------------

def test_tiles_at_the_slides_own_resolution_are_its_pixels(tmp_path):
    rgb, _, _ = painted_slide()
    with open_slide(write_slide(tmp_path / "s.tiff", rgb, 4.0)) as slide:
        plan = plan_tiles(slide, model_mpp=4.0, image_size=50)
        assert plan.level == 0 and plan.read_side == 50 and plan.tile_side == 50
        batch, failed = read_tiles(slide, plan, np.arange(plan.num_tiles))
    assert not failed and plan.num_tiles > 10
    for tile, x, y in zip(batch, plan.xs, plan.ys):
        np.testing.assert_array_equal(tile, rgb[y:y + 50, x:x + 50])


def test_finer_slides_are_read_from_the_level_just_finer_and_resized(tmp_path):
    rgb, _, _ = painted_slide(800, 640)
    with open_slide(write_slide(tmp_path / "fine.tiff", rgb, 1.0)) as slide:
        plan = plan_tiles(slide, model_mpp=4.0, image_size=50)  # 200 level-0 px a tile
        assert (plan.tile_side, plan.level, plan.read_side) == (200, 2, 50)
        plan3 = plan_tiles(slide, model_mpp=3.0, image_size=50)  # 150 px: level 1 (x2) is just finer
        assert (plan3.tile_side, plan3.level, plan3.read_side) == (150, 1, 75)
        batch, _ = read_tiles(slide, plan3, [0])
    x, y = plan3.xs[0], plan3.ys[0]
    expected = cv2.resize(rgb[y:y + 150, x:x + 150], (50, 50), interpolation=cv2.INTER_AREA)
    assert np.abs(batch[0].astype(int) - expected).mean() < 4  # the same place, resized twice


def _plan(xs, ys, tile_side, stride, grid_shape):
    n = len(xs)
    return TilePlan("s", 1.0, 1.0, 50, 0, 1.0, tile_side, tile_side, stride, (1000, 1000), grid_shape,
                    np.array(xs), np.array(ys), np.ones(n, np.float32), np.zeros((10, 10, 3), np.uint8),
                    np.ones((10, 10), bool))


def test_probability_map_averages_overlapping_tiles():
    # two tiles of 100 px at stride 50 overlap on one column of cells
    plan = _plan([0, 50], [0, 0], 100, 50, (1, 2))
    grid = probability_map(plan, np.array([0.2, 0.6]))
    np.testing.assert_allclose(grid, [[0.2, 0.4, 0.6], [0.2, 0.4, 0.6]], rtol=1e-6)
    grid = probability_map(plan, np.array([0.2, np.nan]))  # a failed tile is left out
    np.testing.assert_allclose(grid, [[0.2, 0.2, np.nan], [0.2, 0.2, np.nan]])


def test_regions_are_polygons_with_holes_in_level0_pixels():
    grid = np.full((5, 6), np.nan, np.float32)
    grid[1:4, 1:4] = 0.9
    grid[2, 2] = 0.1  # a hole
    grid[0, 5] = 0.8  # a second, one-cell region
    features = region_features(grid, 0.5, cell=50, slide_mpp=4.0)
    assert [f["properties"]["classification"]["name"] for f in features] == ["Malignant"] * 2
    big, small = features
    outer, hole = big["geometry"]["coordinates"]
    assert sorted(map(tuple, outer[:-1])) == [(50, 50), (50, 200), (200, 50), (200, 200)]
    assert sorted(map(tuple, hole[:-1])) == [(100, 100), (100, 150), (150, 100), (150, 150)]
    assert outer[0] == outer[-1] and hole[0] == hole[-1]
    assert big["properties"]["area_mm2"] == pytest.approx(8 * 0.2 ** 2)  # 8 cells of 200 µm
    assert big["properties"]["mean_prob_malignant"] == pytest.approx(0.9)
    assert sorted(map(tuple, small["geometry"]["coordinates"][0][:-1])) == [(250, 0), (250, 50), (300, 0), (300, 50)]
    assert areas_mm2(grid, 0.5, 50, 4.0) == pytest.approx((10 * 0.04, 9 * 0.04))  # 10 cells with a tile, 9 malignant
    assert region_features(grid, 0.95, 50, 4.0) == []


def test_regions_are_valid_where_cells_meet_at_a_corner():
    from shapely.geometry import shape
    grid = np.zeros((6, 6), np.float32)
    grid[np.add.outer(np.arange(6), np.arange(6)) % 2 == 0] = 0.9  # a checkerboard
    grid[4:, 4:] = 0.9  # a block, with (3, 5) and (5, 3) on its edges and (3, 3) at its corner
    features = region_features(grid, 0.5, cell=50, slide_mpp=4.0)
    shapes = [shape(f["geometry"]) for f in features]
    assert all(s.is_valid and s.geom_type == "Polygon" for s in shapes)
    assert sum(s.area for s in shapes) == (np.nan_to_num(grid) >= 0.5).sum() * 50 ** 2
    assert sum(f["properties"]["area_mm2"] for f in features) == pytest.approx(20 * 0.04)
    # 14 single cells that meet others only at corners, and the block of 6 cells
    assert len(features) == 15 and features[0]["properties"]["area_mm2"] == pytest.approx(6 * 0.04)


# ---- end to end ----------------------------------------------------------------------------

def test_slide_cli_writes_every_output(trained_run, tmp_path, capsys):
    slides = tmp_path / "slides"
    rgb, _, _ = painted_slide()
    write_slide(slides / "case one.tiff", rgb, 4.0)
    write_slide(slides / "fine.tiff", cv2.resize(rgb, (840, 680), interpolation=cv2.INTER_CUBIC), 2.0)
    plain = tmp_path / "plain.png"
    cv2.imwrite(str(plain), rgb[..., ::-1])
    out = tmp_path / "out"
    code = main(["slide", str(trained_run), str(slides), str(plain), "--out", str(out), "--slide-mpp", "4",
                 "--stride", "25", "--batch-size", "32", "--quiet"])
    assert code == 0, capsys.readouterr()
    summaries = json.loads((out / "slides.json").read_text())
    assert [s["slide"] for s in summaries] == ["case one.tiff", "fine.tiff", "plain.png"]
    for s in summaries:
        folder = out / s["slide"]
        assert s["status"] == "ok"
        assert {p.name for p in folder.iterdir()} == {"tiles.csv", "summary.json", "thumbnail.png", "heatmap.png",
                                                      "regions.geojson"}
        header = (folder / "tiles.csv").read_text().splitlines()[0]
        # the fixture's run has a neighbourhood (fitted on its validation patients' patch grids)
        from histoclass.slides.pipeline import USE_NEIGHBOURHOOD
        assert s["calls"].startswith("prob_smoothed") == USE_NEIGHBOURHOOD
        assert header == ("x,y,width,height,tissue_fraction,prob_malignant,"
                          + ("prob_smoothed," if USE_NEIGHBOURHOOD else "") + "label,qc")
        assert s["tiles_qc"] == {} and s["qc_warning"] is None  # clean painted tissue: nothing flagged
        assert s["tiles_classified"] == s["tiles_on_tissue"]
        assert s["tiles_on_tissue"] == len((folder / "tiles.csv").read_text().splitlines()) - 1
        assert s["model_mpp"] == 4.0 and s["stride"] * 2 == s["tile_side"]
        assert 0 <= s["tiles_malignant"] <= s["tiles_on_tissue"] <= s["tiles_in_grid"]
        assert json.loads((folder / "regions.geojson").read_text())["type"] == "FeatureCollection"
    fine = summaries[1]
    assert (fine["slide_mpp"], fine["tile_side"], fine["level_read"], fine["read_side"]) == (2.0, 100, 1, 50)
    assert summaries[2]["slide_mpp_source"] == "--slide-mpp"
    assert summaries[0]["slide_mpp_source"] == "file"
    html = (out / "index.html").read_text()
    assert "case one.tiff" in html and html.count("<img") == 6
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_tiles_give_the_probabilities_of_the_synth_patches(trained_run, tmp_path):
    """The same pixels, the same probabilities: tiles cut by `slide` at the model's µm/px and the
    patches `synth` wrote for the same places."""
    import histoclass
    from histoclass.data.records import parse_idc_name
    from histoclass.slides.pipeline import predict_plan
    from histoclass.synth import generate_idc_dataset
    data, slides = tmp_path / "data", tmp_path / "data-slides"
    summary = generate_idc_dataset(data, num_patients=1, seed=5, slide_scale=0.35, workers=1, progress=False,
                                   slides_dir=slides, flat_glass=True)  # the very pixels of the patches
    patient = summary.patient_ids[0]
    run = histoclass.load_run(trained_run)
    patches = {}
    for path in sorted((data / patient).rglob("*.png")):
        idc = parse_idc_name(path.name)
        patches[(idc.x - 1, idc.y - 1)] = cv2.imread(str(path))[..., ::-1]
    with open_slide(slides / f"{patient}.tiff") as slide:
        plan = plan_tiles(slide, 4.0, 50)
        prob, failed = predict_plan(run, slide, plan, batch_size=64, progress=False)
        batch, _ = read_tiles(slide, plan, np.arange(plan.num_tiles))
    assert not failed
    shared = [i for i, (x, y) in enumerate(zip(plan.xs, plan.ys)) if (x, y) in patches]
    assert len(shared) >= 0.8 * len(patches)
    for i in shared:
        np.testing.assert_array_equal(batch[i], patches[(plan.xs[i], plan.ys[i])])
    from_patches = run.predict(np.stack([patches[(plan.xs[i], plan.ys[i])] for i in shared]))
    np.testing.assert_allclose(prob[shared], from_patches, atol=1e-5)
    truth = cv2.imread(str(slides / "truth" / f"{patient}.png"), cv2.IMREAD_GRAYSCALE)
    assert truth.shape == (slide.dimensions[1], slide.dimensions[0]) and set(np.unique(truth)) <= {0, 255}


@pytest.mark.slow
def test_index_opens_in_chromium(trained_run, tmp_path):
    from conftest import chromium_path
    browser_path = chromium_path()
    sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright
    rgb, _, _ = painted_slide()
    write_slide(tmp_path / "slides" / "a.tiff", rgb, 4.0)
    (tmp_path / "slides" / "broken.svs").write_text("not a slide")
    out = tmp_path / "out"
    assert main(["slide", str(trained_run), str(tmp_path / "slides"), "--out", str(out), "--quiet"]) == 1
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=browser_path,
                                             args=["--no-sandbox", "--disable-gpu", "--no-first-run"])
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            requests = []
            page.on("request", lambda request: requests.append(request.url))
            page.goto((out / "index.html").as_uri(), wait_until="load")
            sections = page.eval_on_selector_all("section[data-section]", "els => els.map(e => e.id)")
            assert sections == ["overview", "slide-1", "slide-2"]
            images = page.evaluate("Array.from(document.images).map(i => [i.dataset.file, i.complete && i.naturalWidth > 0])")
            assert sorted(name for name, _ in images) == ["heatmap.png", "thumbnail.png"]
            assert all(loaded for _, loaded in images)
            rows = page.eval_on_selector_all("#overview tbody tr", "els => els.map(e => e.innerText)")
            assert "ok" in rows[0] and "failed: not a slide" in rows[1]
            assert [u for u in requests if not u.startswith(("file:", "data:"))] == []
        finally:
            browser.close()
