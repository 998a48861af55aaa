"""Stain normalization before the model: fitted per patient or slide on many tiles, a fixed
transform for every tile of the group, a bounded one-tile estimate where there is no context,
and the same normalization on every path (training, evaluate, predict, slide, serve, ONNX)."""
from __future__ import annotations

import json
import zipfile

import cv2
import numpy as np
import pytest

from conftest import make_idc_tree, shared_data, write_png
from histoclass.cli import main
from histoclass.config import config_for_recipe
from histoclass.errors import HistoclassError
from histoclass.stain import macenko, reinhard
from histoclass.stain.context import (MIN_CONTEXT_TILES, StainError, StainNormalizer, StainReference,
                                      fit_reference, read_reference)
from histoclass.stain.maths import density_table, intensity, optical_density
from histoclass.synth.restain import restain_like_another_lab

METHODS = ("macenko", "reinhard")
TOLERANCE = 1e-5


# ---- tiles a stain normalizer meets: built in RGB, not from either method's model ------------

def _field(seed: int, side: int = 50) -> np.ndarray:
    rng = np.random.default_rng(seed)
    coarse = rng.random((side // 6 + 2, side // 6 + 2))
    f = cv2.resize(coarse, (side, side), interpolation=cv2.INTER_CUBIC)
    return np.clip((f - f.min()) / (np.ptp(f) + 1e-9), 0, 1)[..., None]


def _blend(light, dark, seed: int, noise: float = 4.0) -> np.ndarray:
    """A textured tile between two RGB colours (linear in RGB, with noise)."""
    f = _field(seed)
    rgb = np.array(light) * (1 - f) + np.array(dark) * f + np.random.default_rng(seed + 1).normal(0, noise, f.shape[:2] + (3,))
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


DEGENERATE = {
    "eosin_only": lambda: _blend((245, 185, 215), (215, 80, 165), 0),
    "dense_haematoxylin": lambda: _blend((125, 75, 165), (55, 25, 105), 1),
    "pale": lambda: _blend((244, 238, 244), (225, 200, 220), 2, noise=2),
    "black": lambda: np.random.default_rng(3).integers(0, 6, (50, 50, 3)).astype(np.uint8),
    "flat_grey_noise_3": lambda: np.clip(128 + np.random.default_rng(4).integers(-3, 4, (50, 50, 3)), 0, 255).astype(np.uint8),
    "flat_pink_noise_3": lambda: np.clip(np.array([230, 150, 200]) + np.random.default_rng(5).integers(-3, 4, (50, 50, 3)),
                                         0, 255).astype(np.uint8),
}


def _read(path) -> np.ndarray:
    image = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    return image if image.shape[:2] == (50, 50) else cv2.resize(image, (50, 50), interpolation=cv2.INTER_AREA)


@pytest.fixture(scope="module")
def idc_patients() -> dict[str, np.ndarray]:
    """Up to 120 real patches of each of four idc-sample patients."""
    root = shared_data("idc-sample")
    chosen = {}
    for patient in ("10253", "10262", "10264", "8913"):
        files = sorted((root / patient).glob("*/*.png"))[::3][:120]
        if files:
            chosen[patient] = np.stack([_read(f) for f in files])
    if len(chosen) < 3:
        pytest.skip("idc-sample lacks the patients these tests read")
    return chosen


@pytest.fixture(scope="module")
def references(idc_patients) -> dict[str, StainReference]:
    pooled = np.concatenate([images[::4] for images in idc_patients.values()])
    return {method: fit_reference(method, pooled, "test") for method in METHODS}


def _mean_od(images: np.ndarray) -> np.ndarray:
    return optical_density(images).reshape(len(images), -1).mean(axis=1)


# ---- the one optical density -----------------------------------------------------------------

def test_optical_density_is_one_convention_everywhere():
    levels = np.arange(256)
    assert optical_density(255) == 0.0 and np.isfinite(optical_density(0))
    np.testing.assert_allclose(intensity(optical_density(levels)), levels, atol=1e-9)
    np.testing.assert_allclose(density_table(), optical_density(levels))
    from histoclass.models import augment
    from histoclass.synth import restain
    from histoclass.stain import maths
    assert augment.RGB_FROM_HED is maths.RGB_FROM_HED and restain.RGB_FROM_HED is maths.RGB_FROM_HED


def test_reinhard_colour_space_round_trips():
    rgb = np.random.default_rng(0).integers(3, 256, (500, 3))
    np.testing.assert_allclose(reinhard.lab_to_rgb(reinhard.rgb_to_lab(rgb)), rgb, atol=1e-6)


# ---- the reference, from real tiles ----------------------------------------------------------

def test_macenko_reference_of_real_tiles_is_haematoxylin_and_eosin(references):
    target = references["macenko"].target
    h, e = target.stain_vectors
    np.testing.assert_allclose(np.linalg.norm(target.stain_vectors, axis=1), 1.0, atol=1e-9)
    assert (h > 0).all() and (e > 0).all()
    assert h[0] > e[0] and e[1] > h[1] * 0.9  # haematoxylin absorbs red; eosin green most
    assert 10 < np.degrees(np.arccos(h @ e)) < 60


def test_a_reference_of_glass_or_black_is_refused():
    for empty in (np.full((40, 40, 3), 255, np.uint8), np.zeros((40, 40, 3), np.uint8)):
        for method in METHODS:
            with pytest.raises(StainError, match="almost no tissue"):
                fit_reference(method, empty)
    with pytest.raises(StainError, match="not one of"):
        fit_reference("vahadane", np.zeros((4, 4, 3), np.uint8))


def test_the_reference_round_trips_through_json(references, tmp_path):
    for method, reference in references.items():
        (tmp_path / "stain.json").write_text(json.dumps(reference.to_dict()))
        back = read_reference(tmp_path)
        assert back.method == method
        assert back.to_dict() == reference.to_dict()
    (tmp_path / "stain.json").write_text('{"method": "macenko", "target": {"stain_vectors": [1, 2]}}')
    with pytest.raises(StainError, match="damaged"):
        read_reference(tmp_path)


# ---- degenerate tiles with no context: a bounded change --------------------------------------

@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("kind", sorted(DEGENERATE))
def test_a_degenerate_tile_alone_changes_by_a_bounded_amount(references, method, kind):
    tile = DEGENERATE[kind]()
    out = StainNormalizer(references[method]).fit_tile(tile).apply(tile)
    change = np.abs(out.astype(int) - tile.astype(int))
    mean_shift = np.abs(out.reshape(-1, 3).mean(0) - tile.reshape(-1, 3).mean(0))
    if kind in ("black", "pale") or kind.startswith("flat"):
        assert change.max() <= 6, (kind, change.max())  # no stain to estimate: left nearly as it is
    else:
        assert mean_shift.max() <= 20, (kind, mean_shift)  # one stain: not recoloured
        ratio = _mean_od(out[None])[0] / _mean_od(tile[None])[0]
        assert 2 / 3 - 0.01 <= ratio <= 3 / 2 + 0.01  # its stain amount (cellularity) kept within bounds
    if kind == "black":
        assert out.max() <= 10  # never purple (an earlier Reinhard made it (167, 92, 200))


@pytest.mark.parametrize("method", METHODS)
def test_a_patients_transform_leaves_black_white_and_flat_tiles_nearly_alone(references, idc_patients, method):
    transform = StainNormalizer(references[method]).fit_group(next(iter(idc_patients.values())))
    assert transform.confidence > 0.5
    black, flat = DEGENERATE["black"](), DEGENERATE["flat_grey_noise_3"]()
    white = np.full((50, 50, 3), 255, np.uint8)
    assert transform.apply(black).max() <= 10
    np.testing.assert_array_equal(transform.apply(white), white)
    out = transform.apply(flat).astype(int)
    assert np.ptp(out.reshape(-1, 3), axis=0).max() <= 2 * np.ptp(flat.reshape(-1, 3), axis=0).max() + 1  # noise not blown up


# ---- real patients: one transform per patient, the signal kept -------------------------------

@pytest.mark.parametrize("method", METHODS)
def test_one_patients_transform_is_the_same_for_all_its_tiles(references, idc_patients, method):
    normalizer = StainNormalizer(references[method])
    names = list(idc_patients)[:2]
    images = np.concatenate([idc_patients[n] for n in names])
    groups = np.repeat(names, [len(idc_patients[n]) for n in names])
    transforms, which = normalizer.transforms(images, groups=groups)
    assert len(transforms) == 2
    for name in names:
        assert len(set(which[groups == name].tolist())) == 1
    normalized = normalizer.normalize(images, groups)
    first = transforms[which[0]]
    np.testing.assert_array_equal(normalized[:5], first.apply(images[:5]))
    # A patient's transform does not depend on which other patients are normalized with it.
    alone = normalizer.transforms(idc_patients[names[0]], groups=[names[0]] * len(idc_patients[names[0]]))[0][0]
    assert alone.record() == first.record()


@pytest.mark.parametrize("method", METHODS)
def test_per_patient_keeps_each_tiles_stain_amount_in_order(references, idc_patients, method):
    normalizer = StainNormalizer(references[method])
    for name, images in idc_patients.items():
        before = _mean_od(images)
        after = _mean_od(normalizer.normalize(images, [name] * len(images)))
        rank = lambda v: np.argsort(np.argsort(v))  # noqa: E731
        assert np.corrcoef(rank(before), rank(after))[0, 1] > 0.97, name  # dense stays denser than pale
        tiles = normalizer.normalize(images)
        change = np.abs(tiles.astype(int) - images.astype(int)).reshape(len(images), -1).mean(1)
        assert change.max() < 40, name  # even alone, a real tile changes by a bounded amount


@pytest.mark.parametrize("method", METHODS)
def test_a_restained_patient_is_undone_better_per_patient_than_per_tile(references, idc_patients, method):
    normalizer = StainNormalizer(references[method])
    per_patient, per_tile, untouched = [], [], []
    for name, images in idc_patients.items():
        restained = np.stack([restain_like_another_lab(image, seed=3) for image in images])
        groups = [name] * len(images)
        original = normalizer.normalize(images, groups).astype(float)
        per_patient.append(np.abs(normalizer.normalize(restained, groups) - original).mean())
        per_tile.append(np.abs(normalizer.normalize(restained) - normalizer.normalize(images).astype(float)).mean())
        untouched.append(np.abs(restained.astype(float) - images).mean())
    assert np.mean(per_patient) < np.mean(per_tile)
    assert np.mean(per_patient) < 0.7 * np.mean(untouched)


def test_a_group_too_small_for_context_is_normalized_tile_by_tile(references, idc_patients):
    normalizer = StainNormalizer(references["macenko"])
    images = next(iter(idc_patients.values()))[:MIN_CONTEXT_TILES - 1]
    transforms, which = normalizer.transforms(images, groups=["p"] * len(images))
    assert len(transforms) == len(images) and len(set(which.tolist())) == len(images)


# ---- runs: training, predict, slide, serve, ONNX, export ------------------------------------

@pytest.fixture(scope="module")
def macenko_run(tmp_path_factory):
    from histoclass.training.train import train
    base = tmp_path_factory.mktemp("stain")
    data = make_idc_tree(base / "data", num_patients=6, per_class=6)
    config = config_for_recipe("original", num_epochs=1, batch_size=16, stain_normalization="macenko")
    return train(data, base / "run", config, cache_dir=base / "cache", progress=False)


def test_training_stores_the_reference_and_the_model_does_not_normalize(macenko_run):
    import histoclass
    stored = json.loads((macenko_run / "stain.json").read_text())
    assert stored["method"] == "macenko" and stored["fitted_on"].endswith("training patches")
    run = histoclass.load_run(macenko_run)
    assert run.stain is not None and run.stain.reference.to_dict() == stored
    assert not [layer for layer in run.models[0].layers if "stain_normalization" in layer.name]


def test_evaluate_normalizes_per_patient_as_training_did(macenko_run):
    import histoclass
    from histoclass.inference.scoring import score
    from histoclass.stain.transform import StainTransform
    run = histoclass.load_run(macenko_run)
    val = score(run, part="val", reuse=False)
    raw = np.stack([val.images[i] for i in range(len(val.records))])
    by_hand = run.stain.normalize(raw, [r.group for r in val.records])
    np.testing.assert_array_equal(np.stack([val.seen_by_model[i] for i in range(len(raw))]), by_hand)
    identity = StainTransform()
    np.testing.assert_allclose(val.prob_model, run.model_probabilities(by_hand, stain_transform=identity),
                               atol=TOLERANCE)


def test_predict_files_groups_by_patient_or_folder(tmp_path):
    from pathlib import Path
    from histoclass.inference.files import stain_group
    assert stain_group(Path("a/b/8913_idx5_x1_y2_class0.png")) == "patient 8913"
    assert stain_group(Path("slides/one/tile.png")) == "folder slides/one"
    assert stain_group("slides/one/tile.png") == "folder slides/one"  # walk_images gives text


def test_slide_serve_and_onnx_normalize_the_same_way(macenko_run, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient
    import histoclass
    from histoclass.serve.app import create_app
    from histoclass.slides.pipeline import fit_slide_stain, predict_plan, run_slides
    from histoclass.slides.reader import open_slide
    from histoclass.slides.tiling import plan_tiles, read_tiles
    from histoclass.synth.slide_file import write_pyramid_tiff
    from histoclass.synth.tissue import render_slide
    run = histoclass.load_run(macenko_run)
    rgb, _, _ = render_slide(np.random.default_rng(4), 400, 300, tumour_fraction=0.4)
    path = write_pyramid_tiff(tmp_path / "slide.tiff", restain_like_another_lab(rgb), run.config.mpp, tile=64)
    with open_slide(path) as slide:
        plan = plan_tiles(slide, run.config.mpp, run.image_size)
        stain = fit_slide_stain(run, slide, plan)
        from_slide, failed = predict_plan(run, slide, plan, batch_size=8, progress=False)
        tiles, _ = read_tiles(slide, plan, np.arange(plan.num_tiles))
    assert not failed and plan.num_tiles >= MIN_CONTEXT_TILES and stain is not None
    # One transform for the whole slide, the same as fitting it again.
    expected = run.calibrated(run.model_probabilities(tiles, stain_transform=stain))
    np.testing.assert_allclose(from_slide, expected, atol=TOLERANCE)
    onnx_run = histoclass.load_run(macenko_run, engine="onnx")
    np.testing.assert_allclose(onnx_run.calibrated(onnx_run.model_probabilities(tiles, stain_transform=stain)),
                               expected, atol=TOLERANCE)
    # The service has no context: each image alone, as Run.predict without groups.
    files = [("files", (f"{i}.png", cv2.imencode(".png", tile[..., ::-1])[1].tobytes(), "image/png"))
             for i, tile in enumerate(tiles[:8])]
    with TestClient(create_app(run)) as client:
        answer = client.post("/predict", files=files).json()
    np.testing.assert_allclose([r["prob_malignant"] for r in answer["results"]], run.predict(tiles[:8]),
                               atol=TOLERANCE)
    summary, = run_slides(run, [path], tmp_path / "out", progress=False)
    assert summary["stain"]["method"] == "macenko" and summary["stain"]["fitted_on_tiles"] == 64
    assert summary["stain"]["scale"] == stain.record()["scale"]
    assert (tmp_path / "out" / "slide.tiff" / "thumbnail_normalized.png").is_file()
    assert "thumbnail_normalized.png" in (tmp_path / "out" / "index.html").read_text()


def test_export_card_says_normalization_is_not_in_the_graph(macenko_run, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("tf2onnx")
    from histoclass.export.export import export_run
    out = export_run(macenko_run, "onnx", tmp_path / "model.onnx")
    card = json.loads(out.with_name(out.name + ".card.json").read_text()) if out.with_name(
        out.name + ".card.json").exists() else json.loads(next(tmp_path.glob("*card*")).read_text())
    assert card["stain_normalization"]["in_graph"] is False
    assert card["stain_normalization"]["method"] == "macenko"
    assert "normalize" in card["stain_normalization"]["note"]


def test_a_run_with_the_old_in_model_layer_is_refused_with_retrain(tmp_path):
    from histoclass.runs.model_file import load_model
    path = tmp_path / "model.keras"
    config = {"class_name": "Functional", "config": {"layers": [
        {"module": "histoclass", "class_name": "StainNormalization", "config": {"method": "macenko"}}]}}
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("config.json", json.dumps(config))
        archive.writestr("metadata.json", json.dumps({"keras_version": __import__("keras").__version__}))
    with pytest.raises(HistoclassError, match="stain normalization layer inside the model.*Retrain"):
        load_model(path)


def test_cli_takes_a_stain_reference_image(tmp_path, capsys, idc_patients):
    data = make_idc_tree(tmp_path / "data", num_patients=6, per_class=4)
    reference_image = np.concatenate(list(idc_patients["10253"][:16]), axis=1)
    reference = write_png(tmp_path / "reference.png", reference_image)
    out = tmp_path / "run"
    assert main(["train", "--data", str(data), "--out", str(out), "--epochs", "1", "--batch-size", "16",
                 "--stain-normalization", "reinhard", "--stain-reference", str(reference), "-q",
                 "--cache-dir", str(tmp_path / "cache")]) == 0
    stored = json.loads((out / "stain.json").read_text())
    assert stored["fitted_on"] == str(reference.resolve())
    assert stored["target"] == fit_reference("reinhard", reference_image).to_dict()["target"]
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "r2"), "--stain-normalization",
                 "reinhard", "--stain-reference", str(tmp_path / "absent.png")]) == 2
    assert "--stain-reference" in capsys.readouterr().err


def test_bad_settings_are_refused():
    with pytest.raises(HistoclassError, match="'vahadane' is not none, reinhard or macenko"):
        config_for_recipe("original", stain_normalization="vahadane")
    with pytest.raises(HistoclassError, match="needs --stain-normalization"):
        config_for_recipe("original", stain_reference="ref.png")
    with pytest.raises(HistoclassError, match="--stain-augmentation must be between"):
        config_for_recipe("original", stain_augmentation=2.0)


def test_stain_augmentation_strength_reaches_the_jitter_layer():
    from histoclass.models.registry import create_model
    model = create_model("original_cnn", 32, augmentation="tissue", stain_augmentation=0.3)
    layer = model.get_layer("random_stain")
    assert layer.scale == 0.3 and layer.shift == 0.3
    assert config_for_recipe("strong").stain_augmentation == 0.05  # Tellez et al.'s "light" until measured


@pytest.mark.slow
def test_slide_on_ray_normalizes_per_slide_as_the_local_path(local_ray, macenko_run, tmp_path):
    pytest.importorskip("ray")
    from test_cluster_slides import assert_same_outputs
    from test_slides import painted_slide, write_slide
    from histoclass.cluster.ray_slides import run_slides_on_ray
    from histoclass.slides.pipeline import run_slides
    folder = tmp_path / "slides"
    rgb, _, _ = painted_slide(seed=3)
    write_slide(folder / "restained.tiff", restain_like_another_lab(rgb), 4.0)
    local, = run_slides(macenko_run, [folder], tmp_path / "local", stride=25, batch_size=16, progress=False)
    (ray_summary,), _ = run_slides_on_ray(macenko_run, [folder], tmp_path / "ray", "auto", stride=25,
                                          batch_size=16, num_workers=1)
    assert local["stain"]["per_tile"] is False and ray_summary["stain"] == local["stain"]
    assert_same_outputs(tmp_path / "ray", tmp_path / "local")


# ---- ensembles and files: each member its own reference, each patient one transform ----------

def _colour_model(weights):
    """A tiny hand-set model whose answer is the tiles' mean colour: normalization matters to it."""
    import keras
    model = keras.Sequential([keras.Input((50, 50, 3)), keras.layers.Rescaling(1 / 255),
                              keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(2, activation="softmax")])
    model.layers[-1].set_weights([np.array([[0.0, w] for w in weights], np.float32), np.zeros(2, np.float32)])
    return model


def _hand_made_ensemble(folder):
    """A cv folder by hand: two members with different hand-set models and Reinhard references
    fitted on different hand-made tiles (pink and purple), as two training folds would give."""
    from histoclass.runs.ensemble import write_members
    from histoclass.runs.folder import write_config
    config = config_for_recipe("original", stain_normalization="reinhard", test_time_augmentation=False)
    tiles = {"pink": [_blend((240, 200, 225), (200, 90, 160), s) for s in range(6)],
             "purple": [_blend((215, 190, 235), (90, 50, 150), s) for s in range(6, 12)]}
    members = []
    for k, (colour, weights) in enumerate(zip(tiles, ((6.0, -3.0, -4.0), (20.0, 0.0, -15.0)))):
        member = folder / f"fold-{k}"
        member.mkdir(parents=True)
        _colour_model(weights).save(member / "model.keras")
        reference = fit_reference("reinhard", np.stack(tiles[colour]), fitted_on=colour)
        (member / "stain.json").write_text(json.dumps(reference.to_dict()))
        write_config(member, config, {})
        members.append(member)
    write_config(folder, config, {})
    write_members(folder, members)
    return folder


def test_each_ensemble_member_normalizes_with_its_own_reference(tmp_path):
    import histoclass
    import keras
    from histoclass.runs.model_file import load_model
    run = histoclass.load_run(_hand_made_ensemble(tmp_path / "cv"))
    assert [n.reference.fitted_on for n in run.member_stains] == ["pink", "purple"]
    assert run.stain.reference.fitted_on == "pink"  # what `normalized` and Grad-CAM on run.model use
    images = np.stack([restain_like_another_lab(_blend((235, 205, 230), (150, 70, 150), s), seed=1)
                       for s in range(20, 40)])
    groups = ["patient 1"] * 10 + ["patient 2"] * 10
    members = [load_model(tmp_path / "cv" / f"fold-{k}" / "model.keras") for k in range(2)]

    def by_hand(normalizers):
        return np.mean([keras.ops.convert_to_numpy(m(n.normalize(images, groups).astype(np.float32)))[:, 1]
                        for m, n in zip(members, normalizers)], axis=0)
    own, first_for_all = by_hand(run.member_stains), by_hand([run.member_stains[0]] * 2)
    assert np.abs(own - first_for_all).max() > 0.02  # the references differ enough to tell
    np.testing.assert_allclose(run.model_probabilities(images, groups=groups), own, atol=TOLERANCE)
    # A slide's transform: one per member, the same as the group's.
    one = run.fit_stain_group(images[:10])
    assert isinstance(one, list) and len(one) == 2
    np.testing.assert_allclose(run.model_probabilities(images[:10], stain_transform=one),
                               run.model_probabilities(images[:10], groups=groups[:10]), atol=TOLERANCE)
    with pytest.raises(ValueError, match="one per member"):
        run.model_probabilities(images[:10], stain_transform=one[0])
    with pytest.raises(HistoclassError, match="as read"):
        run.model_probabilities(run.normalized(images, groups=groups))


def test_predict_files_gives_a_patient_one_transform_whatever_the_chunks(tmp_path, monkeypatch):
    import histoclass
    from histoclass.inference import files as files_module
    run = histoclass.load_run(_hand_made_ensemble(tmp_path / "cv"))
    rng = np.random.default_rng(7)
    paths = []
    for i in range(20):  # two patients of 10 files, interleaved, and 3 loose files of a folder
        tile = restain_like_another_lab(_blend((235, 205, 230), (150, 70, 150), 40 + i), seed=i % 2)
        paths.append(write_png(tmp_path / "in" / f"{8900 + i % 2}_idx5_x{i}_y0_class0.png", tile))
    for i in range(3):
        paths.append(write_png(tmp_path / "in" / "loose" / f"t{i}.png", rng.integers(90, 250, (50, 50, 3), np.uint8)))
    whole = {p.path: p.prob_malignant for p in run.predict_files([tmp_path / "in"])}
    assert len(whole) == 23 and None not in whole.values()
    for chunk in (6, 9):  # smaller than a patient: packed by patient, or fitted first (6 < 10)
        monkeypatch.setattr(files_module, "CHUNK", chunk)
        got = run.predict_files([tmp_path / "in"])
        assert sorted(p.path for p in got) == sorted(whole)
        np.testing.assert_allclose([p.prob_malignant for p in got], [whole[p.path] for p in got], atol=TOLERANCE)


def test_report_captions_say_which_images_are_stain_normalized(tmp_path):
    from types import SimpleNamespace
    import histoclass
    from histoclass.report.report import as_read_note, seen_by_model_note
    folder = _hand_made_ensemble(tmp_path / "cv")
    normalized, as_read = SimpleNamespace(model_images=object()), SimpleNamespace(model_images=None)
    single, ensemble = histoclass.load_run(folder / "fold-0"), histoclass.load_run(folder)
    assert "after Reinhard stain normalization" in seen_by_model_note(single, normalized)
    assert "first member" in seen_by_model_note(ensemble, normalized)
    assert seen_by_model_note(single, as_read) == "" and as_read_note(as_read) == ""
    assert "before the run's stain normalization" in as_read_note(normalized)
