"""Cross-validation: folds by group and label, out-of-fold predictions, resume, the cv folder as
an ensemble run, and the out-of-fold calibration's numbers."""
from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest

from conftest import make_idc_tree
from histoclass.config import config_for_recipe
from histoclass.crossval.folds import fold_split, plan_folds
from histoclass.crossval.summary import mean_and_spread, out_of_fold_calibration, pooled_metrics
from histoclass.data.records import ImageRecord
from histoclass.data.splits import fold_by_group
from histoclass.errors import HistoclassError
from histoclass.fileio import file_sha256, read_json


def _records(num_groups: int = 40, seed: int = 0, test_groups: int = 0) -> list[ImageRecord]:
    rng = np.random.default_rng(seed)
    records = []
    for g in range(num_groups):
        label = int(g % 3 == 0)  # a third of the groups malignant
        for i in range(int(rng.integers(1, 6))):
            part = "test" if g < test_groups else ("val" if g % 7 == 1 else "train")
            records.append(ImageRecord(f"/d/{g}/{i}.png", label, f"patient-{g}", part=part))
    return records


def test_folds_are_grouped_stratified_and_cover_every_image_once():
    records = _records()
    plan = plan_folds(records, num_folds=4, test_fraction=0.0, seed=3)
    assert set(plan) == {r.group for r in records}  # one fold per group: no group in two folds
    folds = np.array([int(plan[r.group]) for r in records])
    labels = np.array([r.label for r in records])
    assert sorted(set(folds)) == [0, 1, 2, 3]
    counts = np.bincount(folds)
    assert counts.max() - counts.min() <= 5  # images shared out evenly (groups hold 1-5)
    positive_share = [labels[folds == k].mean() for k in range(4)]
    assert max(positive_share) - min(positive_share) < 0.2  # stratified by label
    # Each fold's run validates on its own fold and trains on all the others.
    for k in range(4):
        split = fold_split(plan, k)
        assert {g for g, p in split.items() if p == "val"} == {g for g, f in plan.items() if f == str(k)}
        assert set(split.values()) == {"train", "val"}
    assert plan == plan_folds(records, num_folds=4, test_fraction=0.0, seed=3)  # seeded


def test_the_data_test_part_is_held_out_of_every_fold_and_its_val_part_pooled():
    records = _records(test_groups=8)
    plan = plan_folds(records, num_folds=3, test_fraction=0.2, seed=0)
    assert {g for g, f in plan.items() if f == "test"} == {f"patient-{g}" for g in range(8)}
    assert {plan[r.group] for r in records if r.part == "val"} <= {"0", "1", "2"}


def test_a_test_part_is_carved_when_the_data_has_none():
    plan = plan_folds(_records(), num_folds=3, test_fraction=0.25, seed=0)
    assert 5 <= sum(f == "test" for f in plan.values()) <= 15


def test_too_many_folds_is_a_clear_error():
    with pytest.raises(HistoclassError, match="--folds 9 does not fit data with 4 patients"):
        fold_by_group(np.array([0, 1, 0, 1]), np.array(list("abcd")), 9)


def test_out_of_fold_calibration_golden_numbers():
    # Every image's log-odds is +-log 4 (p = 0.8 or 0.2) and 3 of 4 are right, so the likelihood is
    # best at sigmoid(log 4 / T) = 3/4: T = log 4 / log 3; then the probabilities are 0.75 / 0.25,
    # exactly the share of malignant ones at each: ECE 0 (0.05 before); Youden's best interval
    # (0.25, 0.75] holds 0.5. Balanced classes: no prior shift.
    fold_0 = (np.array([1, 1, 0, 0]), np.array([0.8, 0.8, 0.2, 0.2]))
    fold_1 = (np.array([1, 0, 0, 1]), np.array([0.8, 0.8, 0.2, 0.2]))
    config = config_for_recipe("original")
    calibration = out_of_fold_calibration([fold_0[0], fold_1[0]], [fold_0[1], fold_1[1]], config)
    assert calibration["temperature"] == pytest.approx(math.log(4) / math.log(3), abs=1e-5)
    assert calibration["prior_shift"] == 0.0
    assert calibration["threshold"] == 0.5
    assert calibration["val_ece_before"] == pytest.approx(0.05)
    assert calibration["val_ece_after"] == pytest.approx(0.0, abs=1e-5)
    assert calibration["fitted_on"] == "out-of-fold" and calibration["num_val"] == 8


def test_mean_spread_and_pooled_golden_numbers():
    spread = mean_and_spread([{"roc_auc": 0.8}, {"roc_auc": 0.9}, {"roc_auc": 1.0}], names=("roc_auc",))
    assert spread["roc_auc"]["mean"] == pytest.approx(0.9)
    assert spread["roc_auc"]["std"] == pytest.approx(0.1)  # sample standard deviation
    pooled = pooled_metrics(np.array([0, 1, 1, 0]), np.array([0.1, 0.9, 0.8, 0.3]), 0.5, num_resamples=50)
    assert pooled["accuracy"]["point"] == 1.0 and pooled["roc_auc"]["point"] == 1.0
    assert pooled["ece"] == pytest.approx((0.1 + 0.1 + 0.2 + 0.3) / 4)


# ---- end to end: tiny models, few epochs -------------------------------------------------------

@pytest.fixture(scope="module")
def cv_folder(tmp_path_factory) -> Path:
    from histoclass.crossval.cv import cross_validate
    base = tmp_path_factory.mktemp("cv")
    data = make_idc_tree(base / "data", num_patients=8, per_class=5)
    config = config_for_recipe("original", num_epochs=2, batch_size=16, test_fraction=0.25)
    return cross_validate(data, base / "cv", config, num_folds=3, cache_dir=base / "cache", progress=False)


def _rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.slow
def test_every_training_image_is_out_of_fold_exactly_once(cv_folder):
    plan = {r["group"]: r["fold"] for r in _rows(cv_folder / "folds.csv")}
    oof = _rows(cv_folder / "oof_predictions.csv")
    pool = [r for r in _rows(cv_folder / "fold-0" / "split.csv") if r["part"] != "test"]
    assert sorted(r["path"] for r in oof) == sorted(r["source"] for r in pool)
    for row in oof:
        assert row["fold"] == plan[row["group"]]
    for k in range(3):  # fold k's member never trained on the images it scored
        member_split = _rows(cv_folder / f"fold-{k}" / "split.csv")
        trained = {r["source"] for r in member_split if r["part"] == "train"}
        assert not trained & {r["path"] for r in oof if r["fold"] == str(k)}
    metrics = read_json(cv_folder / "cv_metrics.json")
    assert len(metrics["folds"]) == 3 and metrics["out_of_fold"]["n"] == len(oof)
    assert metrics["calibration"]["threshold"] == read_json(cv_folder / "calibration.json")["threshold"]


@pytest.mark.slow
def test_the_cv_folder_is_a_run_whose_probability_is_the_calibrated_member_mean(cv_folder):
    import histoclass
    from histoclass.evaluation.calibration import calibrate
    run = histoclass.load_run(cv_folder)
    members = [histoclass.load_run(cv_folder / f"fold-{k}") for k in range(3)]
    assert len(run.models) == 3
    images = np.random.default_rng(0).integers(0, 256, (5, 50, 50, 3), dtype=np.uint8)
    raw = np.mean([m.model_probabilities(images) for m in members], axis=0)
    expected = calibrate(raw, run.temperature, run.prior_shift)
    np.testing.assert_allclose(run.predict(images), expected, rtol=1e-5, atol=1e-6)
    calibration = read_json(cv_folder / "calibration.json")
    assert calibration["fitted_on"] == "out-of-fold"
    metrics = run.evaluate()  # on the test part held out of every fold
    assert metrics["n"] == sum(r["part"] == "test" for r in _rows(cv_folder / "split.csv"))


@pytest.mark.slow
def test_resume_trains_only_the_unfinished_folds(cv_folder, monkeypatch):
    from histoclass.crossval import cv as cv_module
    from histoclass.training import train as training
    config = config_for_recipe("original", num_epochs=2, batch_size=16, test_fraction=0.25)
    data = read_json(cv_folder / "cv_plan.json")["data"]
    before = {k: file_sha256(cv_folder / f"fold-{k}" / "model.keras") for k in range(3)}
    metadata = read_json(cv_folder / "fold-1" / "metadata.json")
    (cv_folder / "fold-1" / "metadata.json").write_text('{"status": "interrupted"}')
    calls = []
    monkeypatch.setattr(training, "train", lambda *a, **k: calls.append("train") or pytest.fail("retrained"))
    real_resume = training.resume
    monkeypatch.setattr(training, "resume", lambda folder, **k: calls.append(Path(folder).name) or real_resume(folder, **k))
    cv_module.cross_validate(data, cv_folder, config, num_folds=3, cache_dir=cv_folder.parent / "cache", progress=False)
    assert calls == ["fold-1"]  # folds 0 and 2 were complete: not touched
    assert file_sha256(cv_folder / "fold-0" / "model.keras") == before[0]
    assert file_sha256(cv_folder / "fold-2" / "model.keras") == before[2]
    assert read_json(cv_folder / "fold-1" / "metadata.json")["status"] == "complete"
    del metadata
    import histoclass
    assert len(histoclass.load_run(cv_folder).models) == 3  # members.json was rewritten


@pytest.mark.slow
def test_other_settings_in_the_same_folder_are_refused(cv_folder):
    from histoclass.crossval.cv import cross_validate
    data = read_json(cv_folder / "cv_plan.json")["data"]
    config = config_for_recipe("original", num_epochs=3, batch_size=16, test_fraction=0.25)
    with pytest.raises(HistoclassError, match="other settings .*num_epochs"):
        cross_validate(data, cv_folder, config, num_folds=3, progress=False)


@pytest.mark.slow
def test_cli_cv_then_evaluate_and_report(tmp_path, capsys):
    from histoclass.cli import main
    data = make_idc_tree(tmp_path / "data", num_patients=6, per_class=4)
    out = tmp_path / "cv"
    assert main(["cv", str(data), "--folds", "2", "--out", str(out), "--epochs", "1",
                 "--test-fraction", "0.3", "--cache-dir", str(tmp_path / "cache"), "-q"]) == 0
    assert "out of fold" in capsys.readouterr().out
    # the ensemble's neighbourhood threshold, like its own, is fitted on the out-of-fold predictions
    neighbourhood = read_json(out / "calibration.json")["neighbourhood"]
    assert neighbourhood["fitted_on"] == "out-of-fold"
    assert neighbourhood["num_val"] == sum(1 for _ in open(out / "oof_predictions.csv")) - 1
    assert main(["evaluate", str(out), "-q", "--cache-dir", str(tmp_path / "cache")]) == 0
    metrics = read_json(out / "evaluation" / "metrics.json")
    assert metrics["neighbourhood"]["threshold"] == neighbourhood["threshold"]
    assert main(["report", str(out), "-q", "--cache-dir", str(tmp_path / "cache")]) == 0
    html = (out / "report" / "report.html").read_text()
    assert "Cross-validation" in html and "fold-1" in html


@pytest.mark.slow
def test_train_resume_refuses_a_cv_folder(cv_folder):
    from histoclass.training.train import resume
    with pytest.raises(HistoclassError, match="cross-validation's ensemble, not one run"):
        resume(cv_folder, progress=False)
