"""The Python API: load_run, Run.predict, Run.predict_files, Run.evaluate, train; and that the
commands, the report and the API give the same numbers for the same run."""
from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest

import histoclass
from histoclass.cli import main
from histoclass.errors import HistoclassError

from conftest import make_idc_tree, patch, write_png


@pytest.fixture(scope="module")
def run(trained_run):
    return histoclass.load_run(trained_run)


def test_import_is_quick_and_light():
    import subprocess
    import sys
    code = "import sys, histoclass; print(sorted(m for m in ('keras', 'tensorflow') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_run_exposes_what_training_chose(run, trained_run):
    calibration = json.loads((trained_run / "calibration.json").read_text())
    assert run.threshold == calibration["threshold"]
    assert run.temperature == calibration["temperature"]
    assert run.config.model == "original_cnn" and run.image_size == 50
    assert "original_cnn" in repr(run)


def test_predict_one_image_gives_a_float_and_a_batch_an_array(run):
    rng = np.random.default_rng(3)
    images = np.stack([patch(label, rng) for label in (0, 1, 0, 1)])
    batch = run.predict(images)
    assert batch.shape == (4,) and batch.dtype == np.float64
    one = run.predict(images[1])
    assert isinstance(one, float)
    assert one == pytest.approx(batch[1], abs=1e-6)
    as_list = run.predict(list(images))
    np.testing.assert_allclose(as_list, batch, atol=1e-6)


def test_predict_resizes_and_takes_grey_and_rgba_like_decoding_files(run, tmp_path):
    rng = np.random.default_rng(4)
    big = np.repeat(np.repeat(patch(1, rng), 3, 0), 3, 1)  # 150x150, resized as a file would be
    grey = patch(0, rng)[..., 0]
    rgba = np.concatenate([patch(1, rng), np.full((50, 50, 1), 255, np.uint8)], axis=2)
    paths = [write_png(tmp_path / "big.png", big), write_png(tmp_path / "grey.png", grey),
             write_png(tmp_path / "rgba.png", rgba[..., :3])]
    from_arrays = run.predict([big, grey, rgba])
    from_files = [p.prob_malignant for p in run.predict_files(paths)]
    np.testing.assert_allclose(from_arrays, from_files, atol=1e-6)


@pytest.mark.parametrize("images, match", [
    (np.zeros((50, 50, 3), np.float32), "must be uint8"),
    (np.zeros((2, 3, 50, 50, 3), np.uint8), "are not images"),
    (np.zeros((0, 50, 50, 3), np.uint8), "empty batch"),
    ([], "empty list"),
    (np.zeros((2, 50, 50, 2), np.uint8), "are not images"),
])
def test_predict_refuses_what_is_not_uint8_images(run, images, match):
    with pytest.raises(HistoclassError, match=match):
        run.predict(images)


def test_api_probabilities_equal_the_predict_commands_csv(run, trained_run, tmp_path):
    rng = np.random.default_rng(5)
    folder = tmp_path / "in"
    arrays = {f"{i}.png": patch(i % 2, rng) for i in range(6)}
    for name, image in arrays.items():
        write_png(folder / name, image)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    assert main(["predict", str(trained_run), str(folder), "--output", str(tmp_path / "p.csv"), "--quiet"]) == 0
    rows = {r["path"].rsplit("/", 1)[-1]: r for r in csv.DictReader(open(tmp_path / "p.csv"))}
    api = {p.path.rsplit("/", 1)[-1]: p for p in run.predict_files([folder])}
    assert set(rows) == set(api) == {*arrays, "broken.png"}
    assert rows["broken.png"]["status"].startswith("skipped:") and not api["broken.png"].ok
    assert api["broken.png"].prob_malignant is None and api["broken.png"].status == rows["broken.png"]["status"]
    names = sorted(arrays)
    direct = run.predict(np.stack([arrays[n] for n in names]))
    for name, prob in zip(names, direct):
        assert float(rows[name]["prob_malignant"]) == pytest.approx(prob, abs=5e-7)
        assert api[name].prob_malignant == pytest.approx(prob, abs=1e-9)
        assert int(rows[name]["predicted_label"]) == api[name].label == int(prob >= run.threshold)
        assert rows[name]["predicted_class"] == api[name].class_name


def test_evaluate_api_equals_metrics_json_and_the_report(run, trained_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(trained_run, copy, ignore=shutil.ignore_patterns("evaluation", "report"))
    assert main(["evaluate", str(copy), "--quiet"]) == 0
    written = json.loads((copy / "evaluation" / "metrics.json").read_text())
    assert histoclass.load_run(copy).evaluate() == written
    assert main(["report", str(copy), "--quiet"]) == 0
    report = json.loads((copy / "report" / "report.json").read_text())
    assert report["predictions_reused"] == {"test": True, "val": True}
    assert report["threshold"]["threshold"] == written["threshold"] == run.threshold
    for name, interval in report["metrics"].items():
        assert interval["point"] == pytest.approx(written[name], abs=1e-12), name


def test_report_predicts_again_when_the_model_changed(trained_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(trained_run, copy, ignore=shutil.ignore_patterns("report"))
    assert main(["evaluate", str(copy), "--quiet"]) == 0
    shutil.copyfile(copy / "last.keras", copy / "model.keras")  # another model than the one scored
    assert main(["report", str(copy), "--quiet"]) == 0
    report = json.loads((copy / "report" / "report.json").read_text())
    # Unless the best epoch was the last, the stored numbers belong to another model file.
    same = (copy / "last.keras").read_bytes() == (trained_run / "model.keras").read_bytes()
    assert report["predictions_reused"] == {"test": same, "val": same}


def test_report_with_target_sensitivity_says_it_is_not_the_runs_threshold(trained_run, tmp_path):
    out = tmp_path / "report"
    assert main(["report", str(trained_run), "--out", str(out), "--target-sensitivity", "1.0", "--quiet"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["threshold"]["method"] == "sensitivity"
    assert "Not the run&#x27;s own" in (out / "report.html").read_text()


def test_train_api_with_no_test_part_uses_every_image(tmp_path):
    data = make_idc_tree(tmp_path / "data", num_patients=6, per_class=4)
    run = histoclass.train(data, tmp_path / "run", num_epochs=1, batch_size=16, test_fraction=0,
                           cache_dir=tmp_path / "cache")
    parts = [row["part"] for row in csv.DictReader(open(tmp_path / "run" / "split.csv"))]
    assert len(parts) == 6 * 2 * 4 and "test" not in parts and parts.count("val") > 0
    assert isinstance(run, histoclass.Run) and run.config.test_fraction == 0
    with pytest.raises(HistoclassError, match="no test images.*--test-fraction 0"):
        run.evaluate()


def test_train_api_refuses_unknown_settings(tmp_path):
    with pytest.raises(HistoclassError, match="unknown setting.*epochs"):
        histoclass.train(tmp_path, tmp_path / "run", epochs=3)
