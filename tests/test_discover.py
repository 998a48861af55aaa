from pathlib import Path

import numpy as np
import pytest

from histoclass.data import discover, parse_idc_name
from histoclass.errors import HistoclassError

from conftest import make_idc_tree, patch, shared_data, write_png


def test_parse_idc_name():
    parsed = parse_idc_name("10253_idx5_x1001_y1351_class1.png")
    assert (parsed.patient_id, parsed.x, parsed.y, parsed.label) == ("10253", 1001, 1351, 1)
    assert parse_idc_name("10253_idx5_x1001_y1351_class2.png") is None
    assert parse_idc_name("image.png") is None


def test_idc_layout_gives_patient_and_coordinates(idc_tree):
    dataset = discover(idc_tree)
    assert dataset.layout == "idc"
    assert len(dataset.records) == 6 * 2 * 6
    for record in dataset.records:  # every record carries what its own file name says
        name = Path(record.source).name
        assert name == f"{record.group}_idx5_x{record.x}_y{record.y}_class{record.label}.png"
        assert Path(record.source).parent.name == str(record.label)
    assert set(dataset.labels.tolist()) == {0, 1}


def test_idc_nested_copy_counted_once(tmp_path):
    root = tmp_path / "kaggle"
    make_idc_tree(root, num_patients=2, per_class=2)
    make_idc_tree(root / "IDC_regular_ps50_idx5", num_patients=2, per_class=2)
    dataset = discover(root)
    assert len(dataset.records) == 2 * 2 * 2
    assert sum("duplicate" in reason for _, reason in dataset.skipped) == 8


def test_seed_layout_keeps_its_split(tmp_path):
    rng = np.random.default_rng(0)
    for part in ("trainSet", "testSet"):
        for label in (0, 1):
            for i in range(3):
                write_png(tmp_path / "images" / part / str(label) / f"{i}.png", patch(label, rng))
    dataset = discover(tmp_path)
    assert dataset.layout == "trainSet/testSet"
    parts = [r.part for r in dataset.records]
    assert parts.count("train") == 6 and parts.count("test") == 6
    # Same file names in trainSet and testSet are different images, not one patient.
    train_groups = {r.group for r in dataset.records if r.part == "train"}
    assert not train_groups & {r.group for r in dataset.records if r.part == "test"}


def test_class_folders_any_case_recursive(tmp_path):
    rng = np.random.default_rng(0)
    write_png(tmp_path / "site_a" / "Benign" / "slide1" / "a.png", patch(0, rng))
    write_png(tmp_path / "site_a" / "MALIGNANT" / "slide2" / "b.png", patch(1, rng))
    write_png(tmp_path / "site_b" / "malignant" / "c.png", patch(1, rng))
    dataset = discover(tmp_path)
    by_name = {r.source.split("/")[-1]: r for r in dataset.records}
    assert by_name["a.png"].label == 0 and by_name["b.png"].label == 1
    assert by_name["a.png"].group == "site_a/slide1"
    assert by_name["c.png"].group == "site_b/c"


def test_manifest_relative_paths_and_groups(tmp_path):
    rng = np.random.default_rng(0)
    write_png(tmp_path / "img" / "a.png", patch(0, rng))
    write_png(tmp_path / "img" / "b.png", patch(1, rng))
    (tmp_path / "manifest.csv").write_text("path,label,patient\nimg/a.png,Benign,p1\nimg/b.png,1,p2\n")
    dataset = discover(tmp_path)
    assert [(r.label, r.group) for r in dataset.records] == [(0, "p1"), (1, "p2")]
    assert discover(tmp_path / "manifest.csv").records == dataset.records


def test_manifest_without_label_column_is_refused(tmp_path):
    (tmp_path / "manifest.csv").write_text("path,class\na.png,0\n")
    with pytest.raises(HistoclassError, match="no label column"):
        discover(tmp_path)


def test_missing_path_and_empty_folder(tmp_path):
    with pytest.raises(HistoclassError, match="no such file or folder"):
        discover(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(HistoclassError, match="found no images"):
        discover(tmp_path / "empty")


def test_images_without_class_folders_are_refused(tmp_path):
    write_png(tmp_path / "x" / "a.png", patch(0, np.random.default_rng(0)))
    with pytest.raises(HistoclassError, match="could not tell their labels"):
        discover(tmp_path)


def test_npz_breastmnist_labels_are_mapped(tmp_path):
    images = np.zeros((4, 28, 28), np.uint8)
    np.savez(tmp_path / "breastmnist.npz", train_images=images, train_labels=np.array([[0], [1], [1], [0]]))
    dataset = discover(tmp_path / "breastmnist.npz")
    # MedMNIST: 0 = malignant; the project: 1 = malignant.
    assert dataset.labels.tolist() == [1, 0, 0, 1]
    assert {r.part for r in dataset.records} == {"train"}


def test_real_lc25000_manifest():
    dataset = discover(shared_data("lc25000-lung"))
    assert dataset.layout == "manifest"
    assert len(dataset.records) == 11092
    assert int(dataset.labels.sum()) == 7492
    assert len(set(dataset.groups.tolist())) == 577


def test_real_breastmnist_mapping():
    dataset = discover(shared_data("breastmnist") / "breastmnist_trainval.npz")
    # BreastMNIST is about 27 % malignant; reading its labels unmapped would give 73 %.
    assert 0.2 < dataset.labels.mean() < 0.35
    assert len(dataset.records) == 624
