"""Glass as scanners show it (uneven light, vignetting, tint, noise, dust, a coverslip edge): the
painter, and the tissue mask on it; a hole in tissue stays a hole; ink over real tissue is
flagged and real dense haematoxylin and eosin are not."""
import csv

import cv2
import numpy as np
import pytest
from conftest import shared_data

from histoclass.slides.qc import MAX_INK_FRACTION, measure_tiles
from histoclass.slides.reader import open_slide
from histoclass.slides.tiling import MIN_TISSUE_FRACTION, plan_tiles
from histoclass.slides.tissue import glass_background, region_fractions, tissue_mask
from histoclass.synth.artifacts import INK_TRANSMITTANCE
from histoclass.synth.glass import add_scanner_glass
from histoclass.synth.tissue import render_slide

GLASS = (243, 243, 243)


def _blob_slide(width=900, height=640):
    """Flat glass with two stained blobs of tissue, and their true mask."""
    rgb = np.empty((height, width, 3), np.uint8)
    rgb[:] = GLASS
    truth = np.zeros((height, width), np.uint8)
    cv2.ellipse(truth, (300, 320), (200, 150), 20, 0, 360, 1, -1)
    cv2.circle(truth, (620, 250), 110, 1, -1)
    rgb[truth > 0] = (214, 150, 196)  # eosin-pale stroma
    return rgb, truth.astype(bool)


def test_scanner_glass_is_uneven_dusty_and_has_a_coverslip_edge():
    rgb, truth = _blob_slide()
    scanned = add_scanner_glass(rgb, seed=3)
    np.testing.assert_array_equal(scanned, add_scanner_glass(rgb, seed=3))
    assert not np.array_equal(scanned, add_scanner_glass(rgb, seed=4))
    grey = scanned.astype(np.float32).mean(axis=2)
    smooth = cv2.blur(grey, (31, 31))
    glass = cv2.erode((~truth).astype(np.uint8), np.ones((41, 41), np.uint8)) > 0
    # about ten grey levels of light across the glass, and over the tissue too
    assert 6 <= np.percentile(smooth[glass], 99) - np.percentile(smooth[glass], 1) <= 25
    assert abs(scanned[truth].astype(int).mean() - rgb[truth].astype(int).mean()) <= 15
    assert scanned[truth].astype(int).std() > 1
    # dust: small dark specks on the glass
    specks = (grey < 225) & glass
    specks[450:] = specks[:, 740:] = False  # away from the coverslip edge
    count, _, stats, _ = cv2.connectedComponentsWithStats(specks.astype(np.uint8))
    assert count - 1 >= 5 and stats[1:, cv2.CC_STAT_AREA].max() < 400
    # the coverslip edge: a thin dark line in the glass along one side, brighter glass beyond
    columns, rows = grey.min(axis=0), grey.min(axis=1)
    assert min(columns[750:].min(), rows[470:].min()) < 215


def test_glass_background_follows_uneven_light():
    rgb, truth = _blob_slide()
    scanned = add_scanner_glass(rgb, seed=1, dust=False, coverslip=False)
    background = glass_background(scanned)
    light = cv2.blur(scanned.astype(np.float32), (15, 15))
    glass = cv2.erode((~truth).astype(np.uint8), np.ones((31, 31), np.uint8)) > 0
    assert np.abs(background[glass] - light[glass]).mean() < 1.5  # within a grey level or two


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_tissue_mask_on_realistic_glass(seed):
    rgb, truth = _blob_slide()
    scanned = add_scanner_glass(rgb, seed=seed, gradient_levels=14)
    small = cv2.resize(scanned, (300, 213), interpolation=cv2.INTER_AREA)
    small_truth = cv2.resize(truth.astype(np.uint8), (300, 213), interpolation=cv2.INTER_NEAREST) > 0
    mask = tissue_mask(small, max_hole_pixels=16)
    inner = cv2.erode(small_truth.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
    outer = cv2.dilate(small_truth.astype(np.uint8), np.ones((5, 5), np.uint8)) == 0
    assert mask[inner].mean() > 0.98  # the tissue
    assert mask[outer].mean() < 0.002  # not the shaded glass, dust or coverslip edge


def test_tissue_mask_on_a_painted_slide_with_scanner_glass():
    rgb, _, tissue = render_slide(np.random.default_rng(2), 700, 560, tumour_fraction=0.4)
    flat = tissue_mask(rgb, max_hole_pixels=150)
    mask = tissue_mask(add_scanner_glass(rgb, seed=9), max_hole_pixels=150)
    far = cv2.dilate(tissue.astype(np.uint8), np.ones((9, 9), np.uint8)) == 0
    assert mask[far].mean() < 0.002
    assert mask[tissue].mean() > 0.85 and mask[tissue].mean() > flat[tissue].mean() - 0.03


def _lung_mosaic(cell=200, cells=6, hole=(2, 2)):
    """Real lung tissue (LC25000) in `cells` x `cells` cells of `cell` px, glass in a 2x2-cell
    hole at `hole` (column, row)."""
    root = shared_data("lc25000-lung")
    with open(root / "manifest.csv", newline="") as handle:
        paths = [root / row["path"] for row in csv.DictReader(handle)][:400:11]
    rgb = np.empty((cells * cell, cells * cell, 3), np.uint8)
    rgb[:] = GLASS
    k = 0
    for row in range(cells):
        for column in range(cells):
            if hole[0] <= column < hole[0] + 2 and hole[1] <= row < hole[1] + 2:
                continue
            image = cv2.imread(str(paths[k % len(paths)]))[..., ::-1]
            rgb[row * cell:(row + 1) * cell, column * cell:(column + 1) * cell] = cv2.resize(image, (cell, cell))
            k += 1
    return rgb


@pytest.mark.parametrize("scanner", [False, True])
def test_a_hole_in_tissue_stays_a_hole(tmp_path, scanner):
    """A 2x2-tile hole of glass inside real tissue at 1 µm/px: none of its tiles is planned, and
    their tissue share is well below --min-tissue (the mask does not spill into it)."""
    rgb = _lung_mosaic()
    if scanner:
        rgb = add_scanner_glass(rgb, seed=5, coverslip=False)
    path = tmp_path / "mosaic.png"
    cv2.imwrite(str(path), rgb[..., ::-1])
    with open_slide(path, slide_mpp=1.0) as slide:
        plan = plan_tiles(slide, model_mpp=4.0, image_size=50)  # 200 level-0 px a tile
    assert plan.tile_side == 200
    planned = set(zip(plan.xs.tolist(), plan.ys.tolist()))
    hole = [(x * 200, y * 200) for x in (2, 3) for y in (2, 3)]
    assert not planned & set(hole)
    xs, ys = np.array([h[0] for h in hole]), np.array([h[1] for h in hole])
    fractions = region_fractions(plan.tissue, plan.thumbnail_scale, xs, ys, 200)
    assert fractions.max() <= MIN_TISSUE_FRACTION / 2, fractions
    assert len(planned) >= 30  # the tissue tiles (lung's alveoli leave a pale one or two out)


# ---- ink over real tissue -------------------------------------------------------------------

def _real_tiles(step=9):
    root = shared_data("idc-sample")
    with open(root / "patches.csv", newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if (r["width"], r["height"]) == ("50", "50")][::step]
    return np.stack([cv2.imread(str(root / r["path"]))[..., ::-1] for r in rows])


def _ink_share(tiles):
    return measure_tiles(tiles)[:, 0]


def _od_shares(tiles):
    od = -np.log((tiles.reshape(len(tiles), -1, 3).astype(np.float64) + 1) / 256)
    tissue = tiles.reshape(len(tiles), -1, 3).mean(axis=2) < 215
    total = (od * tissue[..., None]).sum(axis=1)
    return total / np.maximum(total.sum(axis=1, keepdims=True), 1e-9), tissue.mean(axis=1)


def test_dense_bluish_haematoxylin_and_saturated_eosin_are_not_ink():
    tiles = _real_tiles()
    shares, tissue = _od_shares(tiles)
    full = tissue > 0.8
    grey = tiles.reshape(len(tiles), -1, 3).mean(axis=(1, 2))
    dense = full & (grey < np.percentile(grey[full], 10))  # the darkest tenth: packed nuclei
    bluish = full & (shares[:, 0] > np.percentile(shares[full, 0], 95))  # most red absorbed: bluest
    eosin = full & (shares[:, 0] < np.percentile(shares[full, 0], 5))  # least red absorbed: pinkest
    for name, chosen in (("dense", dense), ("bluish", bluish), ("eosin", eosin)):
        assert chosen.sum() >= 15, name
        flagged = _ink_share(tiles[chosen]) >= MAX_INK_FRACTION
        assert flagged.mean() <= 0.05, (name, int(flagged.sum()), int(chosen.sum()))


@pytest.mark.parametrize("color,strength", [("blue", 0.5), ("green", 0.35), ("black", 0.35),
                                            ("blue", 1.0), ("red", 1.0)])
def test_ink_over_dense_real_tissue_is_flagged(color, strength):
    tiles = _real_tiles()
    _, tissue = _od_shares(tiles)
    grey = tiles.reshape(len(tiles), -1, 3).mean(axis=(1, 2))
    dense = tiles[(tissue > 0.8) & (grey < np.percentile(grey[tissue > 0.8], 30))]
    transmittance = np.asarray(INK_TRANSMITTANCE[color], np.float32) ** strength
    inked = dense.astype(np.float32)
    inked[:, :, 10:25] *= transmittance  # a stroke across each tile, 30 % of it
    inked = np.clip(np.rint(inked), 0, 255).astype(np.uint8)
    assert (_ink_share(inked) >= MAX_INK_FRACTION).mean() >= 0.9


def test_ink_over_tissue_is_planned_then_set_aside_by_qc(tmp_path):
    """A semi-transparent stroke over tissue stays in the tissue mask (its tiles are planned) and
    the tile QC flags them, so summary.json counts them; the stroke on the glass is no tissue."""
    from histoclass.slides.qc import tile_qc
    from histoclass.slides.tiling import read_tiles
    from histoclass.synth.artifacts import add_pen_ink
    from histoclass.synth.slide_file import write_pyramid_tiff
    rgb, _, tissue = render_slide(np.random.default_rng(4), 800, 600, tumour_fraction=0.4)
    inked, ink = add_pen_ink(rgb, seed=2, colors=("blue",), strength=(0.4, 0.6))
    path = write_pyramid_tiff(tmp_path / "inked.tiff", add_scanner_glass(inked, seed=2), 4.0)
    with open_slide(path) as slide:
        plan = plan_tiles(slide, model_mpp=4.0, image_size=50)
        batch, _ = read_tiles(slide, plan, np.arange(plan.num_tiles))
    reasons = tile_qc(measure_tiles(batch))
    cells = [(ink[y:y + 50, x:x + 50].mean(), tissue[y:y + 50, x:x + 50].mean()) for x, y in zip(plan.xs, plan.ys)]
    inked_tissue = np.array([i >= 0.1 and t >= 0.5 for i, t in cells])
    clean = np.array([i == 0 for i, _ in cells])
    grid = [(x, y) for x in range(0, 751, 50) for y in range(0, 551, 50)
            if ink[y:y + 50, x:x + 50].mean() >= 0.1 and tissue[y:y + 50, x:x + 50].mean() >= 0.5]
    assert len(grid) >= 5 and inked_tissue.sum() >= 0.9 * len(grid)  # planned, not dropped as "no tissue"
    assert (reasons[inked_tissue] == "ink").mean() >= 0.9
    assert (reasons[clean] == "ink").mean() <= 0.02


def test_a_wide_semi_transparent_red_stroke_over_dense_real_tissue_is_mostly_flagged():
    """Red ink has the colour of blood lakes; only a wide stroke is flagged (here 70 % of each
    tile at 0.6 of full strength), and then on most dense tiles."""
    tiles = _real_tiles()
    _, tissue = _od_shares(tiles)
    grey = tiles.reshape(len(tiles), -1, 3).mean(axis=(1, 2))
    dense = tiles[(tissue > 0.8) & (grey < np.percentile(grey[tissue > 0.8], 30))]
    inked = dense.astype(np.float32)
    inked[:, :, 5:40] *= np.asarray(INK_TRANSMITTANCE["red"], np.float32) ** 0.6
    inked = np.clip(np.rint(inked), 0, 255).astype(np.uint8)
    assert (_ink_share(inked) >= MAX_INK_FRACTION).mean() >= 0.75
