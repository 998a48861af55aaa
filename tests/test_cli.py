"""The CLI end to end on tiny images built in tmp_path, and its one-line errors."""
import csv
import json

import numpy as np
import pytest

from histoclass.cli import main

from conftest import make_idc_tree, patch, write_png


def test_train_writes_a_complete_run(tmp_path):
    data = make_idc_tree(tmp_path / "data", num_patients=6, per_class=5)
    out = tmp_path / "run"
    code = main(["train", "--data", str(data), "--out", str(out), "--epochs", "2", "--batch-size", "8",
                 "--quiet", "--cache-dir", str(tmp_path / "cache")])
    assert code == 0
    for name in ("model.keras", "config.json", "split.csv", "history.csv", "metadata.json",
                 "calibration.json", "train.log"):
        assert (out / name).is_file(), name
    rows = list(csv.DictReader(open(out / "split.csv")))
    assert len(rows) == 6 * 2 * 5
    parts_of = {}
    for row in rows:
        parts_of.setdefault(row["group"], set()).add(row["part"])
    assert all(len(parts) == 1 for parts in parts_of.values())  # no patient in two parts
    metadata = json.loads((out / "metadata.json").read_text())
    assert metadata["status"] == "complete" and metadata["seed"] == 0
    assert "keras" in metadata["versions"]
    config = json.loads((out / "config.json").read_text())
    assert config["train"]["model"] == "original_cnn" and config["data"]["layout"] == "idc"
    assert len(list(csv.DictReader(open(out / "history.csv")))) == 2


def test_evaluate_writes_metrics_and_figures(trained_run, tmp_path, capsys):
    out = tmp_path / "eval"
    assert main(["evaluate", str(trained_run), "--out", str(out), "--quiet"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("accuracy", "precision", "recall", "f1", "specificity", "balanced_accuracy", "roc_auc",
                "confusion_matrix", "threshold", "n"):
        assert key in metrics
    (tn, fp), (fn, tp) = metrics["confusion_matrix"]
    assert tn + fp + fn + tp == metrics["n"] > 0
    # The toy classes are trivially separable: a model that learnt anything gets them right.
    assert metrics["roc_auc"] > 0.9
    assert (out / "predictions_grid.png").stat().st_size > 10_000
    assert (out / "probability_bars.png").stat().st_size > 10_000
    printed = capsys.readouterr().out
    assert "balanced_accuracy" in printed
    # The toy patients' IDC names place their patches in rows on their slides, and the run
    # fitted a neighbourhood on its validation patients: both ways are reported.
    smoothed = metrics["neighbourhood"]
    assert smoothed["n"] == metrics["n"] and smoothed["num_groups_with_places"] == metrics["num_groups"]
    assert smoothed["threshold"] == json.loads((trained_run / "calibration.json").read_text())["neighbourhood"]["threshold"]
    assert "With the neighbourhood" in printed


def test_predict_any_size_and_mode(trained_run, tmp_path):
    rng = np.random.default_rng(1)
    folder = tmp_path / "new"
    write_png(folder / "big.png", np.repeat(np.repeat(patch(1, rng), 3, 0), 3, 1))  # 150x150
    write_png(folder / "grey.png", patch(0, rng)[..., 0])
    write_png(folder / "sub" / "small.png", patch(0, rng)[:20, :20])
    output = tmp_path / "out.csv"
    assert main(["predict", str(trained_run), str(folder), "--output", str(output), "--quiet"]) == 0
    rows = {r["path"].split("/")[-1]: r for r in csv.DictReader(open(output))}
    assert set(rows) == {"big.png", "grey.png", "small.png"}
    for row in rows.values():
        assert row["status"] == "ok"
        assert float(row["prob_benign"]) + float(row["prob_malignant"]) == pytest.approx(1, abs=1e-5)
        assert row["predicted_label"] in ("0", "1")
    assert rows["big.png"]["predicted_label"] == "1"


def test_report_cli(trained_run, tmp_path):
    out = tmp_path / "report"
    assert main(["report", str(trained_run), "--out", str(out), "--quiet"]) == 0
    text = (out / "report.html").read_text()
    for key in ("summary", "metrics", "neighbourhood", "threshold", "calibration", "gradcam", "patients", "slides"):
        assert f'id="{key}"' in text
    threshold = json.loads((trained_run / "calibration.json").read_text())["neighbourhood"]["threshold"]
    assert f"neighbourhood threshold {threshold:.3f}" in text


@pytest.mark.parametrize("make_args, message", [
    (lambda t: ["train", "--data", str(t / "missing"), "--out", str(t / "r")], "no such file or folder"),
    (lambda t: ["train", "--data", str((t / "empty").mkdir() or t / "empty"), "--out", str(t / "r")],
     "found no images"),
    (lambda t: ["evaluate", str(t)], "not a histoclass run"),
    (lambda t: ["train", "--data", str(t), "--out", str(t / "r"), "--threshold", "dice"],
     "threshold_method 'dice' is not youden, f1 or fixed"),
    (lambda t: ["predict", str(t / "nope"), str(t)], "does not exist"),
])
def test_errors_are_one_line(tmp_path, capsys, make_args, message):
    assert main(make_args(tmp_path)) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err
    assert err.strip().count("\n") == 0 or err.strip().splitlines()[-1].startswith("error:")


def test_one_class_only_is_refused(tmp_path, capsys):
    rng = np.random.default_rng(0)
    for i in range(4):
        write_png(tmp_path / "d" / "benign" / f"{i}.png", patch(0, rng))
    assert main(["train", "--data", str(tmp_path / "d"), "--out", str(tmp_path / "r"), "--quiet"]) == 2
    assert "only benign images" in capsys.readouterr().err


def test_manifest_without_columns_is_refused(tmp_path, capsys):
    (tmp_path / "m.csv").write_text("file,y\na.png,1\n")
    assert main(["train", "--data", str(tmp_path / "m.csv"), "--out", str(tmp_path / "r")]) == 2
    assert "no path or label column" in capsys.readouterr().err


def test_model_file_that_is_not_a_model_is_refused(trained_run, tmp_path, capsys):
    import shutil
    fake = tmp_path / "fake_run"
    shutil.copytree(trained_run, fake, ignore=shutil.ignore_patterns("*.keras"))
    (fake / "model.keras").write_bytes(b"not a zip file")
    assert main(["predict", str(fake), str(tmp_path)]) == 2
    assert "not a Keras model file" in capsys.readouterr().err


def test_unknown_model_lists_known_ones(tmp_path, capsys):
    data = make_idc_tree(tmp_path / "data", num_patients=4, per_class=2)
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "r"), "--model", "vgg99"]) == 2
    assert "original_cnn" in capsys.readouterr().err


def test_predict_real_breakhis_images_of_mixed_sizes(trained_run, tmp_path):
    from conftest import shared_data
    folder = shared_data("breakhis-sample")
    output = tmp_path / "breakhis.csv"
    assert main(["predict", str(trained_run), str(folder), "--output", str(output), "--quiet"]) == 0
    rows = list(csv.DictReader(open(output)))
    assert len(rows) == 92  # 14 originals at 700x460 and 78 at 224x224, resized to the model's input
    assert all(row["status"] == "ok" for row in rows)
    assert all(0.0 <= float(row["prob_malignant"]) <= 1.0 for row in rows)
