"""Tests of the synthetic IDC generator: tree layout and names, coordinates, labels, determinism,
refusals, and that the benign/malignant signal is there. Tiny slides keep the file fast."""

import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from histoclass.errors import HistoclassError
from histoclass.synth import (
    SynthSummary,
    generate_idc_dataset,
    patch_grid,
    patient_ids,
    render_patient_slide,
    render_slide,
)

NAME = re.compile(r"^(?P<patient>\d+)_idx5_x(?P<x>\d+)_y(?P<y>\d+)_class(?P<label>[01])\.png$")
TINY = 0.15  # slide_scale: ~300x300 px slides, a few dozen patches each


def tree_files(root: Path) -> dict[str, bytes]:
    """Every file under root, relative path -> bytes."""
    return {str(p.relative_to(root)): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory) -> SynthSummary:
    out = tmp_path_factory.mktemp("tiny") / "idc"
    return generate_idc_dataset(out, num_patients=3, seed=7, slide_scale=TINY, workers=1,
                                progress=False)


@pytest.fixture(scope="module")
def medium_set(tmp_path_factory) -> SynthSummary:
    out = tmp_path_factory.mktemp("medium") / "idc"
    return generate_idc_dataset(out, num_patients=16, seed=3, slide_scale=0.25, workers=2,
                                progress=False)


def test_tree_holds_only_patient_folders_with_idc_names(tiny_set):
    root = tiny_set.out_dir
    assert sorted(p.name for p in root.iterdir()) == sorted(tiny_set.patient_ids)
    assert len(set(tiny_set.patient_ids)) == 3
    files = 0
    for patient in tiny_set.patient_ids:
        assert patient.isdigit()
        assert sorted(p.name for p in (root / patient).iterdir()) == ["0", "1"]
        for label in ("0", "1"):
            for path in (root / patient / label).iterdir():
                match = NAME.match(path.name)
                assert match, path.name
                assert match["patient"] == patient and match["label"] == label
                files += 1
    assert files == tiny_set.num_patches > 0
    positives = sum(1 for _ in root.glob("*/1/*.png"))
    assert positives == tiny_set.num_positive


def test_patches_are_50px_rgb_pngs(tiny_set):
    for path in list(tiny_set.out_dir.rglob("*.png"))[:20]:
        with Image.open(path) as image:
            assert image.format == "PNG" and image.mode == "RGB" and image.size == (50, 50)


def test_every_patient_has_tissue_patches(tiny_set):
    for patient in tiny_set.patient_ids:
        assert any((tiny_set.out_dir / patient).rglob("*.png")), patient


def test_patches_are_cut_from_the_rendered_slide_at_their_coordinates(tiny_set):
    """Re-assembling patch 0's files at their 1-based coordinates gives back its slide."""
    patient = tiny_set.patient_ids[0]
    rgb, tumour, tissue = render_patient_slide(seed=7, index=0, slide_scale=TINY)
    tops, lefts, labels = patch_grid(tissue, tumour, 50)
    expected = {(int(t) + 1, int(l) + 1): int(c) for t, l, c in zip(tops, lefts, labels)}
    found = {}
    for path in (tiny_set.out_dir / patient).rglob("*.png"):
        match = NAME.match(path.name)
        x, y, label = int(match["x"]), int(match["y"]), int(match["label"])
        assert (x - 1) % 50 == 0 and (y - 1) % 50 == 0, path.name  # on the grid: no overlap
        patch = np.asarray(Image.open(path).convert("RGB"))
        np.testing.assert_array_equal(patch, rgb[y - 1:y + 49, x - 1:x + 49])
        found[(y, x)] = label
    assert found == expected


def test_patch_labels_follow_the_tumour_mask():
    tissue = np.zeros((100, 150), dtype=bool)
    tumour = np.zeros_like(tissue)
    tissue[:, :110] = True  # third column: 10 of 50 columns of tissue -> glass, skipped
    tumour[:50, :25] = True  # top-left patch: half tumour -> class 1
    tumour[50:, 50:74] = True  # bottom-middle patch: 24 of 50 columns -> class 0
    tops, lefts, labels = patch_grid(tissue, tumour, 50)
    assert list(zip(tops.tolist(), lefts.tolist(), labels.tolist())) == [
        (0, 0, 1), (0, 50, 0), (50, 0, 0), (50, 50, 0)]


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(8, 40))
def test_patch_grid_keeps_tissue_patches_on_the_grid(seed, patch_size):
    rng = np.random.default_rng(seed)
    tissue = rng.random((97, 131)) < rng.random()
    tumour = tissue & (rng.random(tissue.shape) < rng.random())
    tops, lefts, labels = patch_grid(tissue, tumour, patch_size)
    for top, left, label in zip(tops, lefts, labels):
        assert top % patch_size == 0 and left % patch_size == 0
        assert top + patch_size <= 97 and left + patch_size <= 131
        window = (slice(top, top + patch_size), slice(left, left + patch_size))
        assert tissue[window].mean() >= 0.4
        assert label == (tumour[window].sum() >= 0.5 * tissue[window].sum())


def test_render_slide_returns_tissue_on_white_glass():
    rgb, tumour, tissue = render_slide(np.random.default_rng(1), 400, 300, tumour_fraction=0.3)
    assert rgb.shape == (300, 400, 3) and rgb.dtype == np.uint8
    assert tumour.shape == tissue.shape == (300, 400) and tumour.dtype == tissue.dtype == bool
    assert not (tumour & ~tissue).any()
    assert 0.3 < tissue.mean() < 0.85 and tumour.any()
    glass = rgb[~tissue].mean(axis=1)
    assert glass.mean() > 225  # slide background is near white
    assert rgb[tumour].mean() < rgb[tissue & ~tumour].mean() < glass.mean()


@pytest.mark.parametrize("size, fraction, message", [
    ((8, 300), None, "at least 16x16"),
    ((300, 300), 1.5, "tumour_fraction"),
])
def test_render_slide_refuses_bad_arguments(size, fraction, message):
    with pytest.raises(HistoclassError, match=message):
        render_slide(np.random.default_rng(0), *size, tumour_fraction=fraction)


def test_refuses_an_output_path_that_is_a_file(tmp_path):
    out = tmp_path / "idc"
    out.write_text("not a folder")
    with pytest.raises(HistoclassError, match="is an existing file"):
        generate_idc_dataset(out, num_patients=1, slide_scale=TINY, progress=False)


def test_positive_share_and_signal_on_a_medium_run(medium_set):
    """~28 % positives (IDC's share), and class 1 is darker and more nuclear than class 0."""
    share = medium_set.num_positive / medium_set.num_patches
    assert 0.2 <= share <= 0.36, share
    stats = {0: [], 1: []}
    for path in medium_set.out_dir.rglob("*.png"):
        pixels = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32)
        red, green, blue = pixels[..., 0], pixels[..., 1], pixels[..., 2]
        nuclear = ((red < 150) & (blue > green)).mean()  # dark purple hematoxylin
        stats[int(path.parent.name)].append((pixels.mean(), nuclear))
    benign, malignant = np.array(stats[0]), np.array(stats[1])
    assert malignant[:, 0].mean() < benign[:, 0].mean() - 10  # darker
    assert malignant[:, 1].mean() > 2 * benign[:, 1].mean()  # more nuclei
    # ... but not separable by brightness alone: the task must stay a learning problem.
    overlap = (benign[:, 0] < np.median(malignant[:, 0])).mean()
    assert overlap > 0.05


def test_same_seed_same_bytes_whatever_the_workers(tiny_set, tmp_path):
    again = generate_idc_dataset(tmp_path / "again", num_patients=3, seed=7, slide_scale=TINY,
                                 workers=2, progress=False)
    assert again.patient_ids == tiny_set.patient_ids
    assert tree_files(again.out_dir) == tree_files(tiny_set.out_dir)


def test_another_seed_gives_another_set(tiny_set, tmp_path):
    other = generate_idc_dataset(tmp_path / "other", num_patients=3, seed=8, slide_scale=TINY,
                                 workers=1, progress=False)
    assert other.patient_ids != tiny_set.patient_ids
    assert tree_files(other.out_dir) != tree_files(tiny_set.out_dir)


def test_patient_ids_are_distinct_and_stable_prefixes():
    ids = patient_ids(0, 279)
    assert len(set(ids)) == 279 and all(i.isdigit() and 4 <= len(i) <= 5 for i in ids)
    assert patient_ids(0, 5) == ids[:5]


def test_refuses_a_non_empty_output_folder(tmp_path):
    out = tmp_path / "idc"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(HistoclassError, match="not empty"):
        generate_idc_dataset(out, num_patients=1, slide_scale=TINY, progress=False)
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


def test_accepts_an_existing_empty_folder_and_writes_only_inside_it(tmp_path):
    out = tmp_path / "idc"
    out.mkdir()
    summary = generate_idc_dataset(out, num_patients=1, slide_scale=TINY, workers=1,
                                   progress=False)
    assert [p.name for p in tmp_path.iterdir()] == ["idc"]
    assert summary.num_patches == len(list(out.rglob("*.png")))


@pytest.mark.parametrize("arguments, message", [
    ({"num_patients": 0}, "num_patients"),
    ({"patch_size": 4}, "patch_size"),
    ({"slide_scale": 0.0}, "slide_scale"),
    ({"workers": 0}, "workers"),
    ({"seed": -1}, "seed"),
])
def test_refuses_bad_arguments_before_writing(tmp_path, arguments, message):
    out = tmp_path / "idc"
    with pytest.raises(HistoclassError, match=message):
        generate_idc_dataset(out, **{"slide_scale": TINY, "progress": False, **arguments})
    assert not out.exists()
