"""A validation part of one class that the user insisted on (their split file): the run trains,
warns at the start, stops early on validation loss, and says in calibration.json, metrics and
the report why the temperature and threshold fell back."""
from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import make_idc_tree, patch, write_png
from test_bad_inputs import run_cli


@pytest.mark.slow
def test_one_class_validation_from_a_split_file_trains_loudly(tmp_path):
    data = make_idc_tree(tmp_path / "data", num_patients=4, per_class=6)
    rng = np.random.default_rng(1)
    for i in range(6):  # patient 10010: malignant patches only
        write_png(data / "10010" / "1" / f"10010_idx5_x{1 + 50 * i}_y1_class1.png", patch(1, rng))
    split = tmp_path / "split.csv"
    split.write_text("group,split\n10010,val\n10003,test\n")  # names no train part: the rest trains
    run = tmp_path / "run"
    code, _, stderr = run_cli(["train", "--data", data, "--out", run, "--split-file", split, "--recipe", "original",
                               "--epochs", "2", "--batch-size", "8", "--image-size", "32", "--learning-rate", "0.003",
                               "--cache-dir", tmp_path / "cache", "--quiet"])
    assert code == 0, stderr
    log = (run / "train.log").read_text()
    assert "36 images of 3 patients/groups not in the split file train" in log
    assert "THE VAL PART HOLDS MALIGNANT IMAGES ONLY (6, as the split file gives it)" in log
    assert log.index("THE VAL PART") < log.index("training original")  # at the start
    assert "early stopping and the best model watch val_loss instead of val_auc" in log
    assert "split by patient/group, val: 1 patients/groups, 0 benign and 6 malignant images" in log
    assert json.loads((run / "metadata.json").read_text())["monitor"] == "val_loss"
    calibration = json.loads((run / "calibration.json").read_text())
    assert calibration["threshold_method"] == "fixed"
    assert calibration["threshold"] == 0.5 and calibration["temperature"] == 1.0
    assert calibration["reason"] == ("the validation part holds only malignant images (6): a temperature and "
                                     "a threshold need both classes, so temperature 1 (none) and the fixed "
                                     "threshold 0.5 are used")
    code, _, stderr = run_cli(["report", run, "--cache-dir", tmp_path / "cache", "--quiet"])
    assert code == 0, stderr
    page = (run / "report" / "report.html").read_text()
    assert "Calibration fell back: the validation part holds only malignant images (6)" in page
    assert json.loads((run / "report" / "report.json").read_text())["threshold"]["reason"] == calibration["reason"]
