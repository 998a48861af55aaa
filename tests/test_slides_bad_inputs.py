"""Bad input to `histoclass slide`: each gets one clear line; one bad slide never stops the others;
nothing is written half."""
import json

import cv2
import numpy as np
import pytest
import tifffile

from histoclass.cli import main
from histoclass.slides.reader import open_slide
from histoclass.synth.slide_file import write_pyramid_tiff
from histoclass.synth.tissue import render_slide


def painted(width=320, height=260, seed=1):
    return render_slide(np.random.default_rng(seed), width, height, tumour_fraction=0.3)[0]


def corrupt_one_tile(path, level0_tile_index):
    """Overwrite the compressed bytes of one level-0 tile with garbage."""
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        offset, count = page.dataoffsets[level0_tile_index], page.databytecounts[level0_tile_index]
    with open(path, "r+b") as handle:
        handle.seek(offset)
        handle.write(bytes(range(256)) * (count // 256) + b"\x00" * (count % 256))


@pytest.fixture
def bad_slides(tmp_path):
    """A folder of slides, most of them bad in one way, and one good one."""
    folder = tmp_path / "slides"
    folder.mkdir()
    rgb = painted()
    write_pyramid_tiff(folder / "good.tiff", rgb, 4.0)
    write_pyramid_tiff(folder / "tumör é.tiff", rgb, 4.0)  # non-ASCII name: works
    (folder / "notes.svs").write_text("this is a text file, not a slide")
    data = (folder / "good.tiff").read_bytes()
    (folder / "truncated.tiff").write_bytes(data[:300])
    write_pyramid_tiff(folder / "bad-tile.tiff", rgb, 4.0, tile=64)
    corrupt_one_tile(folder / "bad-tile.tiff", 6)  # row 1, column 1: tissue
    cv2.imwrite(str(folder / "tiny.png"), rgb[:30, :30, ::-1])
    cv2.imwrite(str(folder / "glass.png"), np.full((300, 300, 3), 245, np.uint8))
    write_pyramid_tiff(folder / "coarse.tiff", rgb, 8.0)
    no_resolution = folder / "no-resolution.tiff"
    tifffile.imwrite(no_resolution, rgb, tile=(64, 64), photometric="rgb", compression="zlib")
    # a flat (untiled, one level) TIFF with its resolution in centimetres: read whole, used
    tifffile.imwrite(folder / "flat.tiff", rgb, photometric="rgb", resolution=(2500, 2500),
                     resolutionunit="CENTIMETER")
    # tiles compressed as JPEG 2000 (compression 34712), which OpenSlide's generic TIFF reader lacks
    jpeg2000 = folder / "jpeg2000.tiff"
    tifffile.imwrite(jpeg2000, rgb, tile=(64, 64), photometric="rgb", resolution=(2500, 2500),
                     resolutionunit="CENTIMETER")
    with tifffile.TiffFile(jpeg2000) as tif:
        offsets = [page.tags["Compression"].valueoffset for page in tif.pages]
    with open(jpeg2000, "r+b") as handle:
        for offset in offsets:
            handle.seek(offset)
            handle.write((34712).to_bytes(2, "little"))
    return folder


def test_every_bad_slide_gets_its_reason_and_the_others_go_on(trained_run, bad_slides, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["slide", str(trained_run), str(bad_slides), "--out", str(out), "--quiet"])
    assert code == 1  # some slides failed
    printed = capsys.readouterr().out
    summaries = {s["slide"]: s for s in json.loads((out / "slides.json").read_text())}
    reasons = {name: s.get("error") for name, s in summaries.items()}
    assert summaries["good.tiff"]["status"] == "ok"
    assert summaries["tumör é.tiff"]["status"] == "ok"
    assert (out / "tumör é.tiff" / "regions.geojson").exists()
    assert "not a slide" in reasons["notes.svs"]
    assert reasons["truncated.tiff"].startswith(("damaged", "not a slide"))
    assert "records no µm/px" in reasons["tiny.png"] and "records no µm/px" in reasons["glass.png"]
    assert "coarser than the model" in reasons["coarse.tiff"]
    assert "records no µm/px" in reasons["no-resolution.tiff"] and "--slide-mpp" in reasons["no-resolution.tiff"]
    assert summaries["flat.tiff"]["status"] == "ok" and summaries["flat.tiff"]["vendor"] == "image (TIFF)"
    assert reasons["jpeg2000.tiff"] == "damaged or unreadable slide (Unsupported TIFF compression: 34712)"
    bad_tile = summaries["bad-tile.tiff"]
    assert bad_tile["status"] == "ok" and bad_tile["tiles_failed"] >= 1
    assert "could not decode" in bad_tile["failed_tiles"][0]["why"]
    assert bad_tile["tiles_classified"] == bad_tile["tiles_on_tissue"] - bad_tile["tiles_failed"] > 0
    tiles = (out / "bad-tile.tiff" / "tiles.csv").read_text().splitlines()
    assert sum(line.endswith(",,,unreadable") for line in tiles) == bad_tile["tiles_failed"]
    for name, s in summaries.items():
        assert (out / name / "summary.json").exists()
        if s["status"] != "ok":
            assert "\n" not in s["error"] and f"{name}: failed: " in printed
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no half-written folder
    html = (out / "index.html").read_text(encoding="utf-8")
    assert "tumör é.tiff" in html and "coarser than the model" in html


def test_no_tissue_and_slide_mpp(trained_run, bad_slides, tmp_path):
    out = tmp_path / "out"
    assert main(["slide", str(trained_run), str(bad_slides / "glass.png"), str(bad_slides / "tiny.png"),
                 "--slide-mpp", "4", "--out", str(out), "--quiet"]) == 1
    summaries = {s["slide"]: s for s in json.loads((out / "slides.json").read_text())}
    assert "no tissue" in summaries["glass.png"]["error"]
    assert "smaller than one tile" in summaries["tiny.png"]["error"]


@pytest.mark.parametrize("case, message", [
    ("out-exists", "already exists"),
    ("same-name", "two slides are named"),
    ("no-slides", "no slides found"),
    ("bad-slide-mpp", "--slide-mpp must be a positive number"),
    ("bad-mpp", "--mpp must be a positive number"),
    ("bad-stride", "--stride must be between 1 and"),
])
def test_refused_before_anything_is_written(trained_run, tmp_path, capsys, case, message):
    rgb = painted()
    first, second = tmp_path / "a" / "s.tiff", tmp_path / "b" / "s.tiff"
    write_pyramid_tiff(first, rgb, 4.0)
    write_pyramid_tiff(second, rgb, 4.0)
    out = tmp_path / "out"
    args = ["slide", str(trained_run), str(first), "--out", str(out), "--quiet"]
    if case == "out-exists":
        out.mkdir()
        (out / "old.txt").write_text("keep me")
    elif case == "same-name":
        args.insert(3, str(second))
    elif case == "no-slides":
        (tmp_path / "empty").mkdir()
        args[2] = str(tmp_path / "empty")
    elif case == "bad-slide-mpp":
        args += ["--slide-mpp", "-1"]
    elif case == "bad-mpp":
        args += ["--mpp", "0"]
    elif case == "bad-stride":
        args += ["--stride", "51"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    if case == "out-exists":
        assert [p.name for p in out.iterdir()] == ["old.txt"]
    else:
        assert not out.exists()


def test_run_without_resolution_needs_mpp(trained_run, tmp_path, capsys):
    import shutil
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    config = json.loads((run / "config.json").read_text())
    config["train"]["mpp"] = None
    config["data"]["layout"] = "folders"
    (run / "config.json").write_text(json.dumps(config))
    slide = write_pyramid_tiff(tmp_path / "s.tiff", painted(), 4.0)
    assert main(["slide", str(run), str(slide), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    assert "does not record the µm/px" in capsys.readouterr().err
    assert main(["slide", str(run), str(slide), "--out", str(tmp_path / "out"), "--mpp", "4", "--quiet"]) == 0


def test_open_slide_errors_are_one_line(tmp_path):
    from histoclass.slides.reader import SlideError
    with pytest.raises(SlideError, match="does not exist"):
        open_slide(tmp_path / "missing.svs")
    (tmp_path / "x.ndpi").write_bytes(b"\x00" * 100)
    with pytest.raises(SlideError, match="not a slide"):
        open_slide(tmp_path / "x.ndpi")


def test_tissue_smaller_than_one_tile_says_so_with_sizes_and_fixes(tmp_path):
    from histoclass.slides.reader import SlideError
    from histoclass.slides.tiling import no_tiles_message, plan_tiles
    glass = np.full((400, 400, 3), 243, np.uint8)
    biopsy = glass.copy()
    biopsy[100:120, 100:120] = painted(400, 400, seed=2)[200:220, 200:220]  # 80 µm: 16 % of a 200 µm tile
    cv2.imwrite(str(tmp_path / "biopsy.png"), biopsy[..., ::-1])
    with open_slide(tmp_path / "biopsy.png", 4.0) as slide, pytest.raises(SlideError) as caught:
        plan_tiles(slide, 4.0, 50)
    message = str(caught.value)
    assert "smaller than one tile" in message and "thumbnail" not in message
    assert "a tile is 200 µm (50 px at 4 µm/px" in message and "--slide-mpp" in message
    assert "--min-tissue 0.1" in message  # the fullest tile holds 16 %
    with open_slide(tmp_path / "biopsy.png", 4.0) as slide:  # the fix it names works
        assert plan_tiles(slide, 4.0, 50, min_tissue_fraction=0.1).num_tiles >= 1

    # Golden sizes: a 10 x 5 px mask box at 3 level-0 px per mask px and 0.5 µm/px is 15 x 7.5 µm.
    mask = np.zeros((40, 40), bool)
    mask[10:15, 20:30] = True
    text = no_tiles_message(mask, (3.0, 3.0), 0.5, "file", 100, 0.123, 0.2)
    assert text.startswith("the tissue is smaller than one tile: 15 x 8 µm, where a tile is 50 µm (100 px at "
                           "0.5 µm/px, file) and needs 20 % tissue (--min-tissue 0.2)")
    assert "at 1.67 or more the tissue spans a tile" in text and "--min-tissue 0.12 or less" in text
    scattered = np.zeros((40, 40), bool)
    scattered[::13, ::13] = True  # specks spread wider than a tile
    assert "too thin or scattered" in no_tiles_message(scattered, (3.0, 3.0), 0.5, "file", 30, 0.02, 0.2)
    assert "blank, or not an H&E slide" in no_tiles_message(np.zeros((4, 4), bool), (1, 1), 0.5, "file", 10, 0, 0.2)
