import csv
import functools
from pathlib import Path

import numpy as np
import pytest

from histoclass.crossval.folds import plan_folds
from histoclass.data import discover
from histoclass.data.records import LABEL_WORDS, PARTS, ImageRecord
from histoclass.data.splits import (apply_split_file, check_no_leakage, describe_parts, fold_by_group,
                                    read_split_file,
                                    split_by_group)
from histoclass.errors import HistoclassError

from conftest import patch, shared_data, write_png
from test_bad_inputs import refused


def test_split_is_by_group_stratified_and_seeded():
    rng = np.random.default_rng(0)
    groups = np.repeat([f"p{i}" for i in range(60)], 20)
    labels = (rng.random(len(groups)) < 0.3).astype(int)
    parts = split_by_group(labels, groups, seed=1)
    check_no_leakage(groups, parts)
    for part, fraction in (("train", 0.7), ("val", 0.15), ("test", 0.15)):
        share = (parts == part).mean()
        assert abs(share - fraction) < 0.05, (part, share)
        assert abs(labels[parts == part].mean() - labels.mean()) < 0.08
    assert (split_by_group(labels, groups, seed=1) == parts).all()
    assert (split_by_group(labels, groups, seed=2) != parts).any()


def test_given_parts_are_kept_and_missing_ones_carved_from_train():
    groups = np.array([f"g{i}" for i in range(100)])
    labels = np.arange(100) % 2
    given = ["test"] * 20 + ["train"] * 80
    parts = split_by_group(labels, groups, seed=0, given=given)
    assert (parts[:20] == "test").all()
    assert set(parts[20:]) == {"train", "val"}


def test_leakage_is_an_error():
    with pytest.raises(HistoclassError, match="in both the train and the test part"):
        check_no_leakage(["p1", "p1"], ["train", "test"])


def test_published_case_lists(tmp_path):
    (tmp_path / "cases_train.txt").write_text("8863\n10253\n")
    (tmp_path / "cases_val.txt").write_text("9036\n")
    (tmp_path / "cases_test.txt").write_text("12345\n")
    assignment = read_split_file(tmp_path)
    assert assignment == {"8863": "train", "10253": "train", "9036": "val", "12345": "test"}
    parts = apply_split_file(["8863", "9036", "99999"], assignment)
    assert parts.tolist() == ["train", "val", ""]


def test_patient_in_two_lists_is_an_error(tmp_path):
    (tmp_path / "cases_train.txt").write_text("8863\n")
    (tmp_path / "cases_test.txt").write_text("8863\n")
    with pytest.raises(HistoclassError, match="both train and test"):
        read_split_file(tmp_path / "cases_train.txt")


def test_lc25000_split_by_group_has_no_leak():
    dataset = discover(shared_data("lc25000-lung"))
    parts = split_by_group(dataset.labels, dataset.groups, seed=0)
    check_no_leakage(dataset.groups, parts)
    for part in ("train", "val", "test"):
        assert set(dataset.labels[parts == part].tolist()) == {0, 1}


# ---- both classes in every part and fold ------------------------------------------------------

@functools.cache
def _idc_sample() -> tuple[np.ndarray, np.ndarray]:
    """Labels and patients of idc-sample from its patches.csv (no image is decoded)."""
    with open(shared_data("idc-sample") / "patches.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    return (np.array([LABEL_WORDS[r["label"]] for r in rows]),
            np.array([r["patient"] for r in rows], dtype=object))


def _class_counts(labels, parts, part) -> tuple[int, int]:
    """(benign, malignant) images of `part`."""
    chosen = labels[np.asarray(parts) == part]
    return int((chosen == 0).sum()), int((chosen == 1).sum())


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_idc_sample_default_split_gives_every_part_both_classes(seed):
    labels, groups = _idc_sample()
    parts = split_by_group(labels, groups, (0.7, 0.15, 0.15), seed=seed)
    check_no_leakage(groups, parts)
    assert set(parts) == {"train", "val", "test"}  # every patient in one part
    for part in ("train", "val", "test"):
        benign, malignant = _class_counts(labels, parts, part)
        assert benign > 0 and malignant > 0, (part, benign, malignant)
        # 153 patients, 111 of them holding both classes: the shares are met to the image
        assert abs((parts == part).mean() - {"train": 0.7, "val": 0.15, "test": 0.15}[part]) < 0.01
        assert abs(labels[parts == part].mean() - labels.mean()) < 0.01
        assert len(set(groups[parts == part])) >= 20
    assert (split_by_group(labels, groups, (0.7, 0.15, 0.15), seed=seed) == parts).all()  # seeded


def test_idc_sample_split_seed_0_is_golden():
    labels, groups = _idc_sample()
    parts = split_by_group(labels, groups, seed=0)
    assert {p: sorted(set(groups[parts == p]), key=int) for p in ("val", "test")} == {
        "val": ["8916", "8957", "8984", "9022", "9035", "9291", "9320", "9383", "10262", "10269", "10300", "10301",
                "12823", "12877", "12892", "12948", "13689", "14079", "14082", "14191", "14210", "15510", "16569"],
        "test": ["8865", "8955", "8959", "9029", "9255", "9258", "9265", "9323", "9382", "10253", "10264", "10275",
                 "10277", "10288", "10308", "12242", "12875", "12905", "13020", "14306", "14321", "15840", "16895"]}
    assert [len(set(groups[parts == p])) for p in ("train", "val", "test")] == [107, 23, 23]
    assert [_class_counts(labels, parts, p) for p in ("train", "val", "test")] == [
        (11234, 4048), (2408, 867), (2407, 867)]


@pytest.mark.parametrize("seed", [0, 1])
def test_idc_sample_split_by_patients_shares_out_patients_and_images_alike(seed):
    # 21 patients with hundreds of patches and 130 with about 30: shared out by images alone, the
    # train part gets 70 % of the images from far fewer than 70 % of the patients.
    labels, groups = _idc_sample()
    num_patients = len(set(groups))
    by_images = split_by_group(labels, groups, (0.7, 0.15, 0.15), seed=seed, balance="images")
    by_patients = split_by_group(labels, groups, (0.7, 0.15, 0.15), seed=seed, balance="patients")
    check_no_leakage(groups, by_patients)
    for part, fraction in {"train": 0.7, "val": 0.15, "test": 0.15}.items():
        assert abs((by_patients == part).mean() - fraction) < 0.01, part
        assert abs(labels[by_patients == part].mean() - labels.mean()) < 0.01, part
        assert abs(len(set(groups[by_patients == part])) - fraction * num_patients) <= 2, part
        assert min(_class_counts(labels, by_patients, part)) > 0, part
    assert len(set(groups[by_images == "train"])) < 0.5 * num_patients  # what "patients" is for
    assert (split_by_group(labels, groups, (0.7, 0.15, 0.15), seed=seed, balance="patients") == by_patients).all()


def test_idc_sample_folds_by_patients_share_out_patients_and_images_alike():
    labels, groups = _idc_sample()
    folds = fold_by_group(labels, groups, 5, seed=0, balance="patients")
    for k in range(5):
        assert len(set(groups[folds == k])) in (30, 31)  # 153 / 5
        assert abs((folds == k).mean() - 0.2) < 0.01
        assert abs(labels[folds == k].mean() - labels.mean()) < 0.01
    records = [ImageRecord(f"{g}_{i}.png", int(y), str(g)) for i, (y, g) in enumerate(zip(labels, groups))]
    plan = plan_folds(records, 4, test_fraction=0.15, seed=0, balance="patients")
    held_out = sum(1 for fold in plan.values() if fold == "test")
    assert abs(held_out - 0.15 * len(plan)) <= 2


def test_split_by_patients_trades_no_class_share_for_the_patient_count():
    # 7 patients of 100 images and 30 of 10, half of each class in every patient: 70/15/15 % of
    # the images fits 16/6/15 patients as well as 25/6/6 (the shares of the 37 patients);
    # "patients" must find the second kind, "images" need not.
    sizes = [100] * 7 + [10] * 30
    groups = np.array([f"p{i}" for i, size in enumerate(sizes) for _ in range(size)], dtype=object)
    labels = np.array([k % 2 for size in sizes for k in range(size)])
    for seed in range(3):
        parts = split_by_group(labels, groups, seed=seed, balance="patients")
        assert [len(set(groups[parts == part])) for part in PARTS] == [25, 6, 6]
        assert [_class_counts(labels, parts, part) for part in PARTS] == [(350, 350), (75, 75), (75, 75)]
    by_images = split_by_group(labels, groups, seed=0, balance="images")
    assert len(set(groups[by_images == "train"])) < 20
    with pytest.raises(HistoclassError, match="split balance 'cases' is not one of patients, images"):
        split_by_group(labels, groups, balance="cases")


@pytest.mark.parametrize("num_folds", [2, 4, 5])
@pytest.mark.parametrize("seed", [0, 1])
def test_idc_sample_folds_each_hold_both_classes(num_folds, seed):
    labels, groups = _idc_sample()
    folds = fold_by_group(labels, groups, num_folds, seed=seed)
    check_no_leakage(groups, folds.astype(str))
    assert sorted(set(folds)) == list(range(num_folds))
    for k in range(num_folds):
        benign, malignant = _class_counts(labels, folds, k)
        assert benign > 0 and malignant > 0, (k, benign, malignant)
        assert abs((folds == k).mean() - 1 / num_folds) < 0.1


@pytest.mark.parametrize("num_folds", [2, 4])
def test_idc_sample_cv_plan_with_a_test_part_gives_every_part_both_classes(num_folds):
    labels, groups = _idc_sample()
    records = [ImageRecord(f"{i}.png", int(label), str(group)) for i, (label, group) in enumerate(zip(labels, groups))]
    plan = plan_folds(records, num_folds, test_fraction=0.15, seed=0)
    parts = np.array([plan[g] for g in groups])
    for part in ["test", *map(str, range(num_folds))]:
        benign, malignant = _class_counts(labels, parts, part)
        assert benign > 0 and malignant > 0, (part, benign, malignant)


def _four_benign_holders() -> tuple[np.ndarray, np.ndarray]:
    """16 patients as the old 17-patient idc-sample had them: benign images in only 4 (b1-b4: 10
    benign and 5 malignant each), 12 malignant-only (m1-m12: 8 each)."""
    sizes = {**{f"b{i}": (10, 5) for i in range(1, 5)}, **{f"m{i}": (0, 8) for i in range(1, 13)}}
    labels = np.concatenate([[0] * b + [1] * m for b, m in sizes.values()])
    groups = np.concatenate([[g] * (b + m) for g, (b, m) in sizes.items()]).astype(object)
    return labels, groups


def test_five_folds_of_four_benign_holders_are_refused_with_the_counts_and_the_fix():
    labels, groups = _four_benign_holders()
    with pytest.raises(HistoclassError, match=r"cannot give each of the 5 folds both classes: fold \d would "
                       r"hold 0 benign and \d+ malignant images .*benign images are in 4 and "
                       r"malignant images in 16.*give fewer --folds \(at most 4\)"):
        fold_by_group(labels, groups, 5, seed=0)
    folds = fold_by_group(labels, groups, 4, seed=0)  # one benign holder in each
    assert [_class_counts(labels, folds, k)[0] for k in range(4)] == [10] * 4


def test_four_folds_beside_a_test_part_of_four_benign_holders_are_refused():
    labels, groups = _four_benign_holders()
    records = [ImageRecord(f"{i}.png", int(label), str(group)) for i, (label, group) in enumerate(zip(labels, groups))]
    with pytest.raises(HistoclassError, match=r"cannot give each of the 5 parts both classes: .*would hold 0 benign"
                       r".*give fewer --folds \(at most 3 beside the test part\), or carve no test part"):
        plan_folds(records, 4, test_fraction=0.15, seed=0)
    plan = plan_folds(records, 3, test_fraction=0.15, seed=0)
    assert sorted(set(plan.values())) == ["0", "1", "2", "test"]


def _hand_made() -> tuple[np.ndarray, np.ndarray]:
    """8 groups, 80 benign and 80 malignant images: 2 benign-only (20), 2 malignant-only (20),
    4 half and half (10 + 10)."""
    sizes = {"n1": (20, 0), "n2": (20, 0), "p1": (0, 20), "p2": (0, 20),
             "m1": (10, 10), "m2": (10, 10), "m3": (10, 10), "m4": (10, 10)}
    labels = np.concatenate([[0] * b + [1] * m for b, m in sizes.values()])
    groups = np.concatenate([[g] * (b + m) for g, (b, m) in sizes.items()]).astype(object)
    return labels, groups


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_hand_made_split_meets_the_class_shares_exactly(seed):
    labels, groups = _hand_made()
    parts = split_by_group(labels, groups, (0.5, 0.25, 0.25), seed=seed)
    check_no_leakage(groups, parts)
    assert [_class_counts(labels, parts, p) for p in ("train", "val", "test")] == [(40, 40), (20, 20), (20, 20)]
    folds = fold_by_group(labels, groups, 4, seed=seed)
    assert [_class_counts(labels, folds, k) for k in range(4)] == [(20, 20)] * 4


def test_impossible_split_names_the_parts_the_counts_and_the_fix():
    # Only one patient holds benign images: val and test cannot both get one.
    labels = np.array([0] * 5 + [1] * 5 + [1] * 40)
    groups = np.array(["a"] * 10 + [f"m{i}" for i in range(8) for _ in range(5)], dtype=object)
    with pytest.raises(HistoclassError, match=r"cannot give each of the 3 parts both classes: the \w+ part "
                       r"would hold 0 benign and \d+ malignant images \(\d patients/groups\).*Of the 9 patients/"
                       r"groups, benign images are in 1 and malignant images in 9.*--split-file.*"
                       r"--test-fraction 0"):
        split_by_group(labels, groups, (0.7, 0.15, 0.15), seed=0)
    with pytest.raises(HistoclassError, match=r"both classes: fold \d would hold 0 benign.*; add patients"):
        fold_by_group(labels, groups, 2, seed=0)


def test_folds_are_no_further_from_their_shares_than_scikit_learns_stratified_group_kfold():
    from sklearn.model_selection import StratifiedGroupKFold
    rng = np.random.default_rng(5)
    groups = np.repeat([f"p{i}" for i in range(40)], rng.integers(5, 60, 40)).astype(object)
    labels = (rng.random(len(groups)) < np.where(rng.random(40) < 0.4, 0.9, 0.1)[
        np.unique(groups, return_inverse=True)[1]]).astype(int)

    def distance(folds):
        return sum(abs(_class_counts(labels, folds, k)[c] - [(labels == 0).sum(), labels.sum()][c] / 4)
                   for k in range(4) for c in (0, 1))

    ours = fold_by_group(labels, groups, 4, seed=0)
    theirs = np.zeros(len(labels), dtype=int)
    for k, (_, held) in enumerate(StratifiedGroupKFold(4, shuffle=True, random_state=0).split(
            labels, labels, groups)):
        theirs[held] = k
    assert distance(ours) <= distance(theirs)


def _one_benign_patient_tree(root: Path) -> Path:
    """Six tiny patients; only 10000 holds benign patches, so val and test cannot both get one."""
    rng = np.random.default_rng(0)
    for p in range(6):
        patient = str(10000 + p)
        for label in ((0, 1) if p == 0 else (1,)):
            for i in range(3):
                write_png(root / patient / str(label) / f"{patient}_idx5_x{1 + 50 * i}_y{1 + 50 * label}_class{label}.png",
                          patch(label, rng, size=16))
    return root


def test_train_and_cv_refuse_data_whose_parts_cannot_hold_both_classes(tmp_path):
    data = _one_benign_patient_tree(tmp_path / "data")
    message = refused(["train", "--data", data, "--out", tmp_path / "run", "--epochs", "1", "--quiet"],
                      r"cannot give each of the 3 parts both classes: the (val|test) part would hold 0 benign .*"
                      r"benign images are in 1 and malignant images in 6.*--split-file")
    assert "--test-fraction 0" in message
    assert not (tmp_path / "run" / "model.keras").exists()
    refused(["cv", data, "--folds", "2", "--out", tmp_path / "cv", "--epochs", "1", "--quiet"],
            r"cannot give each of the 3 parts both classes: .*benign images are in 1 and malignant "
            r"images in 6.*--test-fraction 0")
    refused(["cv", data, "--folds", "2", "--test-fraction", "0", "--out", tmp_path / "cv2", "--epochs", "1",
             "--quiet"], r"cannot give each of the 2 folds both classes: fold \d would hold 0 benign .*"
                         r"; add patients/groups that hold the missing class")


# ---- split files that name only some patients -------------------------------------------------

def test_a_split_file_naming_only_val_patients_trains_the_rest(tmp_path, caplog):
    labels, groups = _hand_made()
    (tmp_path / "split.csv").write_text("group,split\nn1,val\nm3,val\n")
    with caplog.at_level("INFO", logger="histoclass.data.splits"):
        parts = apply_split_file(groups, read_split_file(tmp_path / "split.csv"))
    assert set(groups[parts == "val"]) == {"n1", "m3"}
    assert (parts[~np.isin(groups, ["n1", "m3"])] == "train").all()
    assert _class_counts(labels, parts, "val") == (30, 10)
    assert "120 images of 6 patients/groups not in the split file train (it names no train part)" in caplog.text


def test_a_split_file_naming_a_train_part_leaves_the_unnamed_out(caplog):
    with caplog.at_level("INFO", logger="histoclass.data.splits"):
        parts = apply_split_file(["a", "b", "c", "c"], {"a": "train", "b": "val"})
    assert parts.tolist() == ["train", "val", "", ""]
    assert "2 images of 1 patients/groups not in the split file are left out (it names a train part)" in caplog.text


def test_describe_parts_golden():
    labels = np.array([0, 1, 1, 0, 1, 1, 1, 0])
    groups = np.array(["a", "a", "b", "c", "c", "d", "e", "f"], dtype=object)
    parts = np.array(["train"] * 5 + ["val"] * 2 + ["test"])
    assert describe_parts(labels, groups, parts) == [
        "train: 3 patients/groups, 2 benign and 3 malignant images (60% malignant)",
        "val: 2 patients/groups, 0 benign and 2 malignant images (100% malignant)",
        "test: 1 patients/groups, 1 benign and 0 malignant images (0% malignant)"]
