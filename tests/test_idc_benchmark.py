"""benchmarks/idc.py's pure parts: row specs, folds by patient, the out-of-fold threshold and the
seeds' mean metric its intervals are drawn on; and benchmarks/context_input.py's mosaics."""
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


CONTEXT_SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "context_input.py"
context_spec = importlib.util.spec_from_file_location("context_input_benchmark", CONTEXT_SCRIPT)
context_input = importlib.util.module_from_spec(context_spec)
context_spec.loader.exec_module(context_input)


def test_context_mosaics_put_each_neighbour_in_its_place_and_glass_where_none_is(tmp_path):
    import cv2
    data, out = tmp_path / "idc", tmp_path / "context"
    colours = {}
    # Patient 7 on a 3 x 2 grid with (x 101, y 51) missing; a 50 x 5 sliver at (x 151, y 1).
    places = [(1, 1), (51, 1), (101, 1), (1, 51), (51, 51)]
    for i, (x, y) in enumerate(places):
        colours[(x, y)] = (10 + 20 * i, 200 - 20 * i, 5 * i)
        image = np.full((50, 50, 3), colours[(x, y)], np.uint8)
        path = data / "7" / str(i % 2) / f"7_idx5_x{x}_y{y}_class{i % 2}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    sliver = data / "7" / "0" / "7_idx5_x151_y1_class0.png"
    cv2.imwrite(str(sliver), np.full((5, 50, 3), 77, np.uint8))
    counts = context_input.write_context_folder(data, out)
    assert counts["patches"] == 5  # the sliver is no centre
    assert not (out / sliver.relative_to(data)).exists()
    def mosaic_at(x, y):
        [path] = out.rglob(f"7_idx5_x{x}_y{y}_class*.png")
        return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    mosaic = mosaic_at(51, 1)
    assert mosaic.shape == (150, 150, 3)
    glass = mosaic[0, 0]  # no patch above the top row: the patient's glass colour
    assert (mosaic[:50] == glass).all()
    assert (mosaic[50:100, 50:100] == colours[(51, 1)]).all()  # the centre
    assert (mosaic[50:100, :50] == colours[(1, 1)]).all()  # left
    assert (mosaic[50:100, 100:150] == colours[(101, 1)]).all()  # right
    assert (mosaic[100:150, :50] == colours[(1, 51)]).all()  # below left
    assert (mosaic[100:150, 50:100] == colours[(51, 51)]).all()  # below
    assert (mosaic[100:150, 100:150] == glass).all()  # (101, 51) is missing
    corner = mosaic_at(101, 1)
    assert (corner[50:55, 100:150] == 77).all() and (corner[55:100, 100:150] == corner[0, 0]).all()  # the sliver
    assert (glass >= np.array(list(colours.values())).max(axis=0)).all()  # the brightest, per channel
