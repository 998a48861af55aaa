import numpy as np
import pytest

from histoclass.data import discover
from histoclass.data.splits import (apply_split_file, check_no_leakage, read_split_file,
                                    split_by_group)
from histoclass.errors import HistoclassError

from conftest import shared_data


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
