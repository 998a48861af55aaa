"""Slides as they come: tissue with fat, pen ink and blur (tile QC), slides that are not H&E
brightfield, implausible resolutions and --slide-mpp as a CSV."""
import csv
import json

import cv2
import numpy as np
import pytest
from conftest import shared_data

from histoclass.cli import main
from histoclass.slides.qc import check_brightfield, ink_mask, measure_tiles, tile_qc
from histoclass.slides.reader import SlideError, open_slide
from histoclass.slides.tiling import plan_tiles, read_tiles
from histoclass.slides.tissue import tissue_mask
from histoclass.synth.artifacts import add_blur_band, add_pen_ink
from histoclass.synth.slide_file import write_pyramid_tiff
from histoclass.synth.tissue import render_slide


def painted(width=420, height=340, seed=3):
    return render_slide(np.random.default_rng(seed), width, height, tumour_fraction=0.4)


def fluorescence_like(width=400, height=320, seed=0):
    """A DAPI-like image: dark background, blue glowing nuclei and faint green cytoplasm."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 12, (height, width, 3)).astype(np.float32)
    glow = np.zeros((height, width), np.float32)
    for _ in range(500):
        cv2.circle(glow, (int(rng.integers(60, width - 60)), int(rng.integers(50, height - 50))),
                   int(rng.integers(2, 5)), float(rng.uniform(0.5, 1.0)), -1)
    glow = cv2.GaussianBlur(glow, (0, 0), 1.5)
    image += glow[..., None] * np.array([40, 90, 255], np.float32) + cv2.GaussianBlur(glow, (0, 0), 6)[..., None] \
        * np.array([10, 120, 20], np.float32)
    return np.clip(image, 0, 255).astype(np.uint8)


# ---- the artefact generators --------------------------------------------------------------

def test_pen_ink_is_deterministic_and_only_changes_its_mask():
    rgb = painted()[0]
    inked, mask = add_pen_ink(rgb, seed=4)
    again, mask_again = add_pen_ink(rgb, seed=4)
    np.testing.assert_array_equal(inked, again)
    np.testing.assert_array_equal(mask, mask_again)
    assert inked.dtype == np.uint8 and inked.shape == rgb.shape and mask.dtype == bool
    assert 0.02 < mask.mean() < 0.3
    np.testing.assert_array_equal(inked[~mask], rgb[~mask])
    assert (inked[mask].astype(int) <= rgb[mask]).all()  # ink absorbs light, never adds it
    assert not np.array_equal(add_pen_ink(rgb, seed=5)[1], mask)
    with pytest.raises(ValueError, match="unknown ink colour"):
        add_pen_ink(rgb, colors=("purple",))


def test_blur_band_covers_its_fraction_and_blurs_only_there():
    rgb = painted()[0]
    blurred, band = add_blur_band(rgb, seed=2, sigma=3.0, fraction=0.25)
    assert band.mean() == pytest.approx(0.25, abs=0.01)
    np.testing.assert_array_equal(blurred[~band], rgb[~band])
    inside = cv2.Laplacian(cv2.cvtColor(blurred, cv2.COLOR_RGB2GRAY), cv2.CV_32F)[band].var()
    before = cv2.Laplacian(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), cv2.CV_32F)[band].var()
    assert inside < 0.2 * before
    np.testing.assert_array_equal(add_blur_band(rgb, seed=2)[0], add_blur_band(rgb, seed=2)[0])


# ---- pixels and tiles ---------------------------------------------------------------------

def test_ink_mask_finds_every_colour_and_not_stained_tissue():
    rgb = painted()[0]
    assert ink_mask(rgb).mean() == 0.0
    for color in ("blue", "green", "black", "red"):
        inked, mask = add_pen_ink(rgb, seed=1, colors=(color,))
        found = ink_mask(inked)
        assert found[mask].mean() > 0.7, color
        assert found[~mask].mean() < 0.001, color


def test_tile_qc_golden():
    measures = np.array([[0.0, 100.0], [0.5, 100.0], [0.003, 90.0], [0.0, 20.0], [0.0, 26.0],
                         [0.0, 110.0], [0.0, 95.0], [0.0, 105.0], [0.0, 98.0], [0.0, 1.0]], np.float32)
    read_ok = np.array([True] * 9 + [False])
    # median of the 8 judged tiles' sharpness (read, not ink): 96.5 -> blur below 24.125
    assert tile_qc(measures, read_ok).tolist() == ["", "ink", "", "blur", "", "", "", "", "", ""]
    assert tile_qc(measures[:5]).tolist() == ["", "ink", "", "", ""]  # too few tiles to judge blur


def test_measure_tiles_flags_ink_and_blur_on_a_painted_slide():
    rgb, _, tissue = painted(600, 500)
    inked, ink = add_pen_ink(rgb, seed=3, colors=("blue",))
    both, band = add_blur_band(inked, seed=1, sigma=2.0)
    ys, xs = np.mgrid[0:10, 0:12]
    xs, ys = xs.ravel() * 50, ys.ravel() * 50
    on_tissue = np.array([tissue[y:y + 50, x:x + 50].mean() >= 0.2 for x, y in zip(xs, ys)])
    xs, ys = xs[on_tissue], ys[on_tissue]
    batch = np.stack([both[y:y + 50, x:x + 50] for x, y in zip(xs, ys)])
    reasons = tile_qc(measure_tiles(batch))
    inked_tiles = np.array([ink[y:y + 50, x:x + 50].mean() >= 0.05 for x, y in zip(xs, ys)])
    blurred = np.array([band[y:y + 50, x:x + 50].all() for x, y in zip(xs, ys)]) & ~inked_tiles
    clean = np.array([not ink[y:y + 50, x:x + 50].any() and not band[y:y + 50, x:x + 50].any()
                      for x, y in zip(xs, ys)])
    assert (reasons[inked_tiles] != "").all()  # ink, or blur where the band blurred the ink too
    assert (reasons[inked_tiles] == "ink").mean() >= 0.7
    assert (reasons[blurred] == "blur").mean() >= 0.9
    assert (reasons[clean] == "").all()


def test_tissue_keeps_fat_and_drops_glass_and_ink():
    rng = np.random.default_rng(0)
    slide = np.full((300, 400, 3), 240, np.uint8) + rng.integers(0, 5, (300, 400, 3), dtype=np.uint8)
    cv2.rectangle(slide, (40, 40), (260, 260), (200, 120, 170), -1)  # stroma
    # fat: white cells with thin pink walls, a lobule inside the stroma and one at its edge
    for cx, cy in [(x, y) for x in range(90, 210, 14) for y in range(90, 210, 14)] + \
                  [(x, y) for x in range(250, 320, 14) for y in range(100, 170, 14)]:
        cv2.circle(slide, (cx, cy), 6, (242, 238, 240), -1)
        cv2.circle(slide, (cx, cy), 7, (225, 185, 210), 1)
    cv2.line(slide, (300, 220), (390, 290), (25, 70, 190), 8)  # blue ink on glass
    mask = tissue_mask(slide, max_hole_pixels=150)  # as plan_tiles: a quarter of a tile (here 25 px a side)
    assert mask[60:240, 60:240].mean() > 0.99  # the lobule inside the stroma
    assert mask[100:160, 262:310].mean() > 0.9  # the fat at its edge (no spill past its last walls)
    assert not mask[5:30, 5:395].any() and not mask[270:300, 5:200].any()  # glass
    ink = np.zeros(mask.shape, np.uint8)
    cv2.line(ink, (300, 220), (390, 290), 1, 8)
    assert not mask[ink.astype(bool)].any()


# ---- real tissue is not flagged -----------------------------------------------------------

def test_clean_real_tissue_passes_qc():
    root = shared_data("idc-sample")
    with open(root / "patches.csv", newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if (r["width"], r["height"]) == ("50", "50")][::12]
    patches = np.stack([cv2.imread(str(root / r["path"]))[..., ::-1] for r in rows])
    reasons = tile_qc(measure_tiles(patches))
    assert (reasons != "").mean() <= 0.03, {r: int((reasons == r).sum()) for r in ("ink", "blur")}
    assert (reasons == "ink").mean() <= 0.005


def test_real_svs_is_brightfield_and_its_tiles_pass_qc():
    path = shared_data("wsi-sample") / "CMU-1-Small-Region.svs"
    with open_slide(path) as slide:
        plan = plan_tiles(slide, 2.0, 50)  # 4x coarser than the scan: ~80 tiles
        tiles, failed = read_tiles(slide, plan, np.arange(plan.num_tiles))
    assert not failed and plan.num_tiles >= 60
    reasons = tile_qc(measure_tiles(tiles))
    assert (reasons != "").mean() <= 0.03, reasons.tolist()


# ---- slides the model is not for ----------------------------------------------------------

def test_fluorescence_is_not_brightfield():
    with pytest.raises(SlideError, match="not an H&E brightfield slide"):
        check_brightfield(fluorescence_like())
    rgb, _, tissue = painted()
    check_brightfield(rgb, tissue)  # H&E passes
    brown = rgb.copy()
    brown[tissue] = (150, 95, 50)  # DAB-brown: IHC, not H&E
    with pytest.raises(SlideError, match="pink-to-purple"):
        check_brightfield(brown, tissue)


def test_refused_slides_get_their_reason(trained_run, tmp_path):
    folder = tmp_path / "slides"
    rgb = painted()[0]
    write_pyramid_tiff(folder / "dapi.tiff", fluorescence_like(), 4.0)
    write_pyramid_tiff(folder / "units.tiff", rgb, 0.005)  # 100x too fine: a units mix-up
    write_pyramid_tiff(folder / "fine.tiff", rgb, 4.0)
    out = tmp_path / "out"
    assert main(["slide", str(trained_run), str(folder), "--out", str(out), "--quiet"]) == 1
    summaries = {s["slide"]: s for s in json.loads((out / "slides.json").read_text())}
    assert summaries["fine.tiff"]["status"] == "ok"
    assert summaries["dapi.tiff"]["status"] == "failed"
    assert summaries["dapi.tiff"]["error"].startswith("not an H&E brightfield slide")
    error = summaries["units.tiff"]["error"]
    assert error.startswith("implausible resolution") and "0.005 µm/px" in error and "--slide-mpp" in error
    # --slide-mpp replaces the implausible value (and only fills in where the file has a plausible one)
    out2 = tmp_path / "out2"
    assert main(["slide", str(trained_run), str(folder / "units.tiff"), str(folder / "fine.tiff"),
                 "--slide-mpp", "4", "--out", str(out2), "--quiet"]) == 0
    summaries = {s["slide"]: s for s in json.loads((out2 / "slides.json").read_text())}
    assert summaries["units.tiff"]["slide_mpp"] == 4.0 and summaries["units.tiff"]["slide_mpp_source"] == "--slide-mpp"
    assert summaries["fine.tiff"]["slide_mpp_source"] == "file"


def test_slide_mpp_csv_for_mixed_scanners(trained_run, tmp_path, capsys):
    folder = tmp_path / "slides"
    folder.mkdir()
    rgb = painted()[0]
    for name in ("a.png", "b.png", "c.png"):
        cv2.imwrite(str(folder / name), rgb[..., ::-1])
    table = tmp_path / "mpp.csv"
    table.write_text("slide,mpp\na.png,4\nb,2.0\nother.svs,0.25\n")  # by file name, by stem; one not given
    out = tmp_path / "out"
    assert main(["slide", str(trained_run), str(folder), "--slide-mpp", str(table), "--out", str(out),
                 "--quiet"]) == 1
    summaries = {s["slide"]: s for s in json.loads((out / "slides.json").read_text())}
    assert summaries["a.png"]["slide_mpp"] == 4.0 and summaries["b.png"]["slide_mpp"] == 2.0
    assert summaries["b.png"]["tile_side"] == 100
    assert "records no µm/px" in summaries["c.png"]["error"]
    for bad, message in [("slide,mpp\na.png,0.001\n", "line 2: mpp 0.001 is not a µm/px between 0.05 and 100"),
                         ("name,resolution\na.png,4\n", "needs a header with the columns slide,mpp")]:
        table.write_text(bad)
        assert main(["slide", str(trained_run), str(folder), "--slide-mpp", str(table), "--out",
                     str(tmp_path / "never"), "--quiet"]) == 2
        assert message in capsys.readouterr().err
    assert main(["slide", str(trained_run), str(folder), "--slide-mpp", "0.01", "--out", str(tmp_path / "never"),
                 "--quiet"]) == 2
    assert "implausible" in capsys.readouterr().err
    assert main(["slide", str(trained_run), str(folder), "--slide-mpp", str(tmp_path / "missing.csv"), "--out",
                 str(tmp_path / "never"), "--quiet"]) == 2
    assert "neither a number" in capsys.readouterr().err
    assert not (tmp_path / "never").exists()


# ---- end to end ---------------------------------------------------------------------------

def test_inked_and_blurred_tiles_are_not_classified(trained_run, tmp_path):
    rgb = painted(700, 600, seed=7)[0]
    inked, ink = add_pen_ink(rgb, seed=2, colors=("blue", "green", "black"))
    both, band = add_blur_band(inked, seed=3, sigma=3.0, fraction=0.3)
    folder = tmp_path / "slides"
    write_pyramid_tiff(folder / "marked.tiff", both, 4.0)
    write_pyramid_tiff(folder / "clean.tiff", rgb, 4.0)
    out = tmp_path / "out"
    assert main(["slide", str(trained_run), str(folder), "--out", str(out), "--min-tissue", "0.3", "--quiet"]) == 0
    summaries = {s["slide"]: s for s in json.loads((out / "slides.json").read_text())}
    clean, marked = summaries["clean.tiff"], summaries["marked.tiff"]
    assert clean["tiles_qc"] == {} and not (out / "clean.tiff" / "qc.png").exists()
    with open(out / "marked.tiff" / "tiles.csv", newline="") as handle:
        tiles = list(csv.DictReader(handle))
    assert len(tiles) == marked["tiles_on_tissue"]
    assert set(marked["tiles_qc"]) == {"ink", "blur"}
    for reason in ("ink", "blur"):
        assert marked["tiles_qc"][reason] == sum(t["qc"] == reason for t in tiles) > 0
    assert marked["tiles_classified"] == sum(t["qc"] == "" for t in tiles)
    for t in tiles:
        assert (t["prob_malignant"] == "" and t["label"] == "") == (t["qc"] != "")

    def tile_share(mask, t):
        x, y = int(t["x"]), int(t["y"])
        return mask[y:y + 50, x:x + 50].mean()
    inked_tiles = [t for t in tiles if tile_share(ink, t) >= 0.05]
    assert inked_tiles and all(t["qc"] != "" for t in inked_tiles)  # ink, or blur where the band blurred it
    assert sum(t["qc"] == "ink" for t in inked_tiles) >= 0.7 * len(inked_tiles)
    blurred = [t for t in tiles if tile_share(band, t) == 1 and tile_share(ink, t) == 0]
    assert blurred and sum(t["qc"] == "blur" for t in blurred) >= 0.8 * len(blurred)
    untouched = [t for t in tiles if tile_share(ink, t) == 0 and tile_share(band, t) == 0]
    assert sum(t["qc"] != "" for t in untouched) <= 0.03 * len(untouched)
    assert (out / "marked.tiff" / "qc.png").exists()
    html = (out / "index.html").read_text(encoding="utf-8")
    assert "Tiles left unclassified by quality control" in html
    assert ("class=\"warning\"" in html) == (marked["qc_warning"] is not None)
    assert marked["qc_warning"] is not None  # a third of the slide is out of focus or inked


def test_min_tissue_is_checked_and_used(trained_run, tmp_path, capsys):
    write_pyramid_tiff(tmp_path / "s.tiff", painted()[0], 4.0)
    assert main(["slide", str(trained_run), str(tmp_path / "s.tiff"), "--min-tissue", "1.5", "--out",
                 str(tmp_path / "never"), "--quiet"]) == 2
    assert "--min-tissue must be a share of a tile in (0, 1]" in capsys.readouterr().err
    counts = []
    for share in ("0.2", "0.9"):
        out = tmp_path / share
        assert main(["slide", str(trained_run), str(tmp_path / "s.tiff"), "--min-tissue", share, "--out", str(out),
                     "--quiet"]) == 0
        summary = json.loads((out / "s.tiff" / "summary.json").read_text())
        counts.append(summary["tiles_on_tissue"])
        with open(out / "s.tiff" / "tiles.csv", newline="") as handle:
            assert min(float(r["tissue_fraction"]) for r in csv.DictReader(handle)) >= float(share)
    assert counts[0] > counts[1]


# ---- focus, judged against the run's training patches ------------------------------------------

def test_tile_qc_with_a_focus_reference_golden():
    focus = {"percentiles": {"p01": 50.0, "p02": 60.0, "p50": 100.0}}  # blurred below 0.5 x 60 = 30
    measures = np.array([[0.0, 100.0], [0.5, 10.0], [0.0, 29.0], [0.0, 31.0], [0.0, np.nan]] + [[0.0, 25.0]] * 8,
                        np.float32)
    # the slide's median (8 tiles at 25 among 12 judged) is 25: no tile lies below a quarter of it
    assert (tile_qc(measures) == "blur").sum() == 0
    assert tile_qc(measures, focus=focus).tolist() == ["", "ink", "blur", "", ""] + ["blur"] * 8
    assert tile_qc(measures, focus={"percentiles": {}}).tolist() == tile_qc(measures).tolist()  # no reference


def test_focus_reference_of_real_patches_flags_them_blurred_not_sharp():
    """The reference of some idc-sample patients judges other patients' patches: clean ones pass,
    the same patches out of focus (a Gaussian of 1.5 px at 4 µm/px) are blurred."""
    from histoclass.data.sharpness import focus_reference, sharpness
    from histoclass.slides.qc import focus_threshold
    root = shared_data("idc-sample")
    with open(root / "patches.csv", newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if (r["width"], r["height"]) == ("50", "50")]
    patients = sorted({r["patient"] for r in rows})
    reference_rows = [r for r in rows if r["patient"] in patients[::2]][::10]
    judged_rows = [r for r in rows if r["patient"] not in patients[::2]][::20]
    load = lambda chosen: np.stack([cv2.imread(str(root / r["path"]))[..., ::-1] for r in chosen])  # noqa: E731
    focus = focus_reference(load(reference_rows))
    assert focus["num_patches"] > 300 and focus["percentiles"]["p02"] < focus["percentiles"]["p50"]
    patches = load(judged_rows)
    threshold = focus_threshold(focus)
    values = sharpness(patches)
    assert np.nanmean(values < threshold) <= 0.01
    blurred = np.stack([cv2.GaussianBlur(p, (0, 0), 1.5) for p in patches])
    assert np.nanmean(sharpness(blurred) < threshold) >= 0.95
    # a slide wholly out of focus: the slide's own median flags almost nothing, the reference all
    measures = measure_tiles(blurred)
    assert (tile_qc(measures) == "blur").mean() < 0.05
    assert (tile_qc(measures, focus=focus) == "blur").mean() >= 0.95


def test_sharpness_checks_its_input_and_skips_glass():
    from histoclass.data.sharpness import sharpness
    glass = np.full((2, 20, 20, 3), 240, np.uint8)
    assert np.isnan(sharpness(glass)).all()
    with pytest.raises(ValueError, match="expected uint8 RGB images"):
        sharpness(np.zeros((2, 20, 20), np.uint8))


def test_training_stores_its_patches_focus(trained_run):
    from histoclass.data.sharpness import focus_reference
    from histoclass.fileio import read_json
    from histoclass.runs.folder import read_focus
    stored = read_json(trained_run.parent / "focus_from_training.json")  # what training wrote (conftest)
    from histoclass.runs.folder import read_split
    records, parts = read_split(trained_run)
    train_patches = np.stack([cv2.imread(r.source)[..., ::-1] for r, part in zip(records, parts) if part == "train"])
    assert stored["image_size"] == 50 and stored["num_patches"] == len(train_patches)
    assert stored == focus_reference(train_patches)  # the training patches', no model involved
    assert read_focus(trained_run)["percentiles"]["p02"] > 0  # the fixture's, painted tissue
    (trained_run.parent / "damaged").mkdir(exist_ok=True)
    (trained_run.parent / "damaged" / "focus.json").write_text('{"percentiles": {"p02": "x"}}')
    assert read_focus(trained_run.parent / "damaged") is None and read_focus(trained_run.parent) is None


def test_a_slide_wholly_out_of_focus_is_warned(trained_run, tmp_path, capsys):
    import shutil
    rgb = painted(600, 500, seed=8)[0]
    folder = tmp_path / "slides"
    write_pyramid_tiff(folder / "blurred.tiff", cv2.GaussianBlur(rgb, (0, 0), 2.0), 4.0)
    write_pyramid_tiff(folder / "sharp.tiff", rgb, 4.0)
    out = tmp_path / "out"
    assert main(["slide", str(trained_run), str(folder), "--out", str(out), "--quiet"]) == 0
    lines = {line.split(":")[0]: line for line in capsys.readouterr().out.splitlines()}
    assert "OUT OF FOCUS" in lines["blurred.tiff"] and "OUT OF FOCUS" not in lines["sharp.tiff"]
    summaries = {s["slide"]: s for s in json.loads((out / "slides.json").read_text())}
    blurred, sharp = summaries["blurred.tiff"], summaries["sharp.tiff"]
    assert blurred["out_of_focus"] and blurred["qc_warning"].startswith("out of focus: ")
    assert blurred["tiles_qc"]["blur"] >= 0.9 * blurred["tiles_on_tissue"]
    assert not sharp["out_of_focus"] and sharp["qc_warning"] is None
    assert "training patches (focus.json)" in blurred["focus_reference"]
    html = (out / "index.html").read_text(encoding="utf-8")
    assert "OUT OF FOCUS" in html and "Warning: out of focus" in html
    # a run from before focus.json: blur against the slide alone, which a wholly blurred slide
    # passes, and the summary says so
    old_run = tmp_path / "old-run"
    shutil.copytree(trained_run, old_run)
    (old_run / "focus.json").unlink()
    assert main(["slide", str(old_run), str(folder / "blurred.tiff"), "--out", str(tmp_path / "old"), "--quiet"]) == 0
    old = json.loads((tmp_path / "old" / "blurred.tiff" / "summary.json").read_text())
    assert not old["out_of_focus"] and old["focus_reference"].startswith("the slide alone: the run has no focus.json")
