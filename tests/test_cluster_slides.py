"""`histoclass slide --ray`: a real local Ray (2 CPUs) against the single-process path on tiny
synthetic pyramidal TIFFs: the same files and numbers, bad slides reported while the others
complete, and a model worker killed mid-job. No mocks."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import ActorKiller
from test_slides import painted_slide, write_slide
from test_slides_bad_inputs import bad_slides  # noqa: F401  (a fixture: good and bad slides)

ray = pytest.importorskip("ray")

from histoclass.cli import main  # noqa: E402
from histoclass.slides.pipeline import run_slides  # noqa: E402

ENV = {**os.environ, "RAY_memory_monitor_refresh_ms": "0", "RAY_USAGE_STATS_ENABLED": "0",
       "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
TIMING = {"seconds", "tiles_per_second"}  # the only summary keys allowed to differ


@pytest.fixture(scope="module")
def good_slides(tmp_path_factory) -> Path:
    """Three small slides: two at the model's µm/px, one twice as fine (read from level 1)."""
    import cv2
    folder = tmp_path_factory.mktemp("ray_slides")
    for seed in (3, 4):
        rgb, _, _ = painted_slide(seed=seed)
        write_slide(folder / f"case {seed}.tiff", rgb, 4.0)
    rgb, _, _ = painted_slide(seed=5)
    write_slide(folder / "fine.tiff", cv2.resize(rgb, (840, 680), interpolation=cv2.INTER_CUBIC), 2.0)
    return folder


@pytest.fixture(scope="module")
def marked_slides(tmp_path_factory) -> Path:
    """One slide with pen ink and a band out of focus: its QC decided on the driver."""
    from histoclass.synth.artifacts import add_blur_band, add_pen_ink
    folder = tmp_path_factory.mktemp("ray_marked")
    rgb, _, _ = painted_slide(600, 500, seed=6)
    rgb = add_blur_band(add_pen_ink(rgb, seed=1)[0], seed=1, fraction=0.3)[0]
    write_slide(folder / "marked.tiff", rgb, 4.0)
    return folder


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def assert_same_outputs(ray_out: Path, local_out: Path) -> None:
    """The same folders and files; tiles.csv the same but for prob_malignant within 1e-6 (both
    written rounded to 6 decimals, so 1e-6 is one step of the rounding); the same regions."""
    assert sorted(p.name for p in ray_out.iterdir()) == sorted(p.name for p in local_out.iterdir())
    ray_index = json.loads((ray_out / "slides.json").read_text())
    local_index = json.loads((local_out / "slides.json").read_text())
    assert [s["slide"] for s in ray_index] == [s["slide"] for s in local_index]
    for ray_s, local_s in zip(ray_index, local_index):
        name = local_s["slide"]
        assert sorted(p.name for p in (ray_out / name).iterdir()) == sorted(p.name for p in (local_out / name).iterdir())
        assert json.loads((ray_out / name / "summary.json").read_text()) == ray_s
        assert list(ray_s) == list(local_s)  # same keys, same order
        for key, value in local_s.items():
            if key in TIMING:
                continue
            if isinstance(value, float):
                assert ray_s[key] == pytest.approx(value, abs=1e-6), (name, key)
            else:
                assert ray_s[key] == value, (name, key)
        if local_s["status"] != "ok":
            continue
        ray_rows, local_rows = read_rows(ray_out / name / "tiles.csv"), read_rows(local_out / name / "tiles.csv")
        assert len(ray_rows) == len(local_rows) == local_s["tiles_on_tissue"]
        for column in ("x", "y", "width", "height", "tissue_fraction", "label", "qc"):
            assert [r[column] for r in ray_rows] == [r[column] for r in local_rows], (name, column)
        ray_p = np.array([float(r["prob_malignant"] or "nan") for r in ray_rows])
        local_p = np.array([float(r["prob_malignant"] or "nan") for r in local_rows])
        np.testing.assert_array_equal(np.isnan(ray_p), np.isnan(local_p))
        np.testing.assert_allclose(ray_p, local_p, atol=1e-6 + 1e-12, rtol=0)
        ray_regions = json.loads((ray_out / name / "regions.geojson").read_text())
        local_regions = json.loads((local_out / name / "regions.geojson").read_text())
        assert [f["geometry"] for f in ray_regions["features"]] == [f["geometry"] for f in local_regions["features"]]
        for ray_f, local_f in zip(ray_regions["features"], local_regions["features"]):
            assert ray_f["properties"]["area_mm2"] == local_f["properties"]["area_mm2"]
            assert ray_f["properties"]["mean_prob_malignant"] == pytest.approx(
                local_f["properties"]["mean_prob_malignant"], abs=1e-6)


@pytest.mark.slow
def test_slide_on_ray_writes_the_local_files(local_ray, trained_run, good_slides, marked_slides, tmp_path):
    from histoclass.cluster.ray_slides import run_slides_on_ray
    inputs = [good_slides, marked_slides]
    truth = tmp_path / "annotations"  # one slide annotated, one with a broken file, the others without
    truth.mkdir()
    (truth / "case 3.geojson").write_text(json.dumps(
        {"type": "Polygon", "coordinates": [[[0, 0], [300, 0], [300, 200], [0, 200], [0, 0]]]}))
    (truth / "case 4.geojson").write_text("{")
    local = run_slides(trained_run, inputs, tmp_path / "local", stride=25, batch_size=16, progress=False,
                       truth=truth)
    summaries, throughput = run_slides_on_ray(trained_run, inputs, tmp_path / "ray", "auto", stride=25,
                                              batch_size=16, num_workers=2, truth=truth)
    assert [s["status"] for s in summaries] == ["ok"] * 4
    assert [sorted(s["truth"]) for s in summaries][1:] == [["error"]] * 3
    assert summaries[0]["truth"]["tiles_scored"] == summaries[0]["tiles_classified"]
    assert set(summaries[3]["tiles_qc"]) == {"ink", "blur"}  # the same QC as the local path's (below)
    assert_same_outputs(tmp_path / "ray", tmp_path / "local")
    assert sum(throughput.images.values()) == sum(s["tiles_on_tissue"] for s in local)
    assert "tiles in" in throughput.summary("tiles") and "worker(s)" in throughput.summary("tiles")
    fine = summaries[2]
    assert (fine["slide"], fine["level_read"], fine["read_side"]) == ("fine.tiff", 1, 50)


@pytest.mark.slow
def test_bad_slides_are_reported_and_the_others_complete(local_ray, trained_run, bad_slides, tmp_path, capsys):
    """Through the CLI: every bad slide gets the local path's reason, the good ones and the one
    with a damaged tile get the local numbers, and the exit code says some failed."""
    code = main(["slide", str(trained_run), str(bad_slides), "--out", str(tmp_path / "ray"), "--ray", "auto",
                 "--workers", "2", "--batch-size", "8", "--quiet"])
    assert code == 1
    printed = capsys.readouterr()
    assert "notes.svs: failed: " in printed.out and "good.tiff: " in printed.out
    assert "tiles in" in printed.err and "worker(s)" in printed.err  # the throughput summary
    assert main(["slide", str(trained_run), str(bad_slides), "--out", str(tmp_path / "local"),
                 "--batch-size", "8", "--quiet"]) == 1
    assert_same_outputs(tmp_path / "ray", tmp_path / "local")
    summaries = {s["slide"]: s for s in json.loads((tmp_path / "ray" / "slides.json").read_text())}
    assert summaries["good.tiff"]["status"] == "ok"
    assert summaries["bad-tile.tiff"]["status"] == "ok" and summaries["bad-tile.tiff"]["tiles_failed"] >= 1
    assert summaries["flat.tiff"]["status"] == "ok"  # an untiled TIFF is read whole
    good = ("good.tiff", "tumör é.tiff", "bad-tile.tiff", "flat.tiff")
    assert {s["status"] for name, s in summaries.items() if name not in good} == {"failed"}
    assert not [p for p in (tmp_path / "ray").iterdir() if p.name.startswith(".")]


@pytest.mark.slow
def test_a_killed_worker_is_restarted_and_the_slides_complete(local_ray, trained_run, good_slides, tmp_path):
    """The only model actor is killed (SIGKILL) as the first tiles come back: Ray restarts it,
    retries its batches, and every slide still gets the local files and numbers."""
    from histoclass.cluster.ray_slides import run_slides_on_ray
    kill_first_worker = ActorKiller()

    summaries, _ = run_slides_on_ray(trained_run, [good_slides], tmp_path / "ray", "auto", stride=25, batch_size=4,
                                     num_workers=1, on_batch=kill_first_worker)
    assert kill_first_worker.killed
    assert any(not w.endswith(f":{kill_first_worker.killed[0]}") for w in kill_first_worker.workers_after_kill), "no restarted worker answered"
    assert [s["status"] for s in summaries] == ["ok"] * 3
    run_slides(trained_run, [good_slides], tmp_path / "local", stride=25, batch_size=4, progress=False)
    assert_same_outputs(tmp_path / "ray", tmp_path / "local")


@pytest.mark.slow
def test_slide_without_ray_never_imports_it(trained_run, good_slides, tmp_path):
    code = ("import sys\nfrom histoclass.cli import main\n"
            f"code = main(['slide', {str(trained_run)!r}, {str(good_slides / 'case 3.tiff')!r}, '--out', "
            f"{str(tmp_path / 'out')!r}, '--quiet'])\n"
            "assert 'ray' not in sys.modules, 'ray was imported'\nsys.exit(code)")
    done = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "out" / "case 3.tiff" / "tiles.csv").is_file()


def test_workers_without_ray_still_means_reading_threads(trained_run, good_slides, tmp_path):
    assert main(["slide", str(trained_run), str(good_slides / "case 4.tiff"), "--out", str(tmp_path / "out"),
                 "--workers", "1", "--quiet"]) == 0


def test_zero_workers_is_a_clear_error_before_ray_starts(trained_run, good_slides, tmp_path, capsys):
    assert main(["slide", str(trained_run), str(good_slides), "--out", str(tmp_path / "out"), "--ray", "auto",
                 "--workers", "0", "--quiet"]) == 2
    assert "--batch-size and --workers must be at least 1 (got 256 and 0)" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
