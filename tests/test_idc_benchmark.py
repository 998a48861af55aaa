"""benchmarks/idc.py's pure parts: row specs, folds by patient, the out-of-fold threshold and the
seeds' mean metric its intervals are drawn on."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from histoclass.evaluation.metrics import roc_auc

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "idc.py"
spec = importlib.util.spec_from_file_location("idc_benchmark", SCRIPT)
idc = importlib.util.module_from_spec(spec)
spec.loader.exec_module(idc)


def test_row_specs_name_a_recipe_and_its_settings():
    assert idc.parse_row("strong") == ("strong", "strong", {})
    assert idc.parse_row("strong-ema=strong:ema_momentum=0.998:augmentation=dihedral") == \
        ("strong-ema", "strong", {"ema_momentum": 0.998, "augmentation": "dihedral"})
    assert idc.parse_row("reference") == ("reference", "reference", {})


@pytest.mark.parametrize("spec, message", [("x=nosuch", "unknown recipe"), ("x=strong:bogus=1", "unknown setting"),
                                           ("x=strong:mixup", "is not SETTING=VALUE")])
def test_bad_row_specs_fail_before_any_training(spec, message):
    with pytest.raises((SystemExit, Exception), match=message):
        idc.parse_row(spec)


def test_folds_keep_each_patient_whole():
    rng = np.random.default_rng(0)
    rows = [{"patient": f"p{p}", "label": int(rng.random() < 0.3), "path": f"{p}/{i}.png"}
            for p in range(30) for i in range(rng.integers(3, 20))]
    folds = idc.make_folds(rows, 5, seed=0)
    assert set(folds) == set(range(5))
    for patient in {r["patient"] for r in rows}:
        assert len({f for r, f in zip(rows, folds) if r["patient"] == patient}) == 1


def test_the_out_of_fold_threshold_comes_from_the_other_folds_only():
    fold_rows = {0: [{"label": 0}, {"label": 1}], 1: [{"label": 0}, {"label": 1}]}
    results = {0: {"prob": [0.1, 0.3]}, 1: {"prob": [0.6, 0.9]}}
    thresholds = idc.out_of_fold_thresholds(results, fold_rows)
    assert 0.6 < thresholds[0] <= 0.9  # fold 1's benign 0.6 and malignant 0.9
    assert 0.1 < thresholds[1] <= 0.3
    assert idc.out_of_fold_thresholds({0: results[0]}, {0: fold_rows[0]}) == {}


def test_the_seeds_mean_metric_is_the_mean_of_each_seeds_own():
    labels = np.array([0, 1, 0, 1, 0, 1, 0, 1])
    prob = np.array([0.2, 0.9, 0.4, 0.3, 0.8, 0.7, 0.1, 0.6])  # seed 0: AUC 0.75; seed 1: AUC 0.5
    scores = np.column_stack([prob, prob >= 0.5, [0, 0, 0, 0, 1, 1, 1, 1]])
    mean_auc = idc._seed_mean(lambda y, s: roc_auc(y, s[:, 0]))(labels, scores)
    assert mean_auc == pytest.approx((0.5 + 0.75) / 2)
    assert mean_auc != pytest.approx(roc_auc(labels, prob))  # not one AUC over both seeds mixed
