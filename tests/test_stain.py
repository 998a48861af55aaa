"""Stain normalization: the layer against numpy's eigh and percentile and the published formulas,
safety on white and empty tiles, fitting at training, and the same numbers on every path
(predict, a slide's tiles, the ONNX engine, the service)."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from keras import ops

from conftest import make_idc_tree, write_png
from histoclass.cli import main
from histoclass.config import config_for_recipe
from histoclass.errors import HistoclassError
from histoclass.models.augment import RGB_FROM_HED
from histoclass.models.stain import (LAB_FROM_LOG_LMS, LMS_FROM_RGB, MACENKO_BETA, RGB_FROM_LMS, StainNormalization,
                                     fit_stain_target, macenko_concentrations, macenko_stains, masked_percentile,
                                     optical_density, rgb_to_lab, top_two_eigenvectors)
from histoclass.synth.restain import restain_like_another_lab
from histoclass.synth.tissue import render_slide

TOLERANCE = 1e-5


def he_image(seed: int, side: int = 40, h_vector=RGB_FROM_HED[0], e_vector=RGB_FROM_HED[1],
             low: float = 0.3, high: float = 1.5) -> np.ndarray:
    """Beer-Lambert H&E: random H and E concentrations (a third nearly pure H, a third nearly
    pure E, a third mixed), a tenth of the pixels glass."""
    rng = np.random.default_rng(seed)
    n = side * side
    conc = rng.uniform(low, high, (n, 2))
    kind = rng.integers(0, 3, n)
    conc[kind == 0, 1] *= 0.02
    conc[kind == 1, 0] *= 0.02
    conc[rng.random(n) < 0.1] = 0.0
    density = conc[:, :1] * np.asarray(h_vector) + conc[:, 1:] * np.asarray(e_vector)
    return np.clip(np.rint(256 * np.exp(-density) - 1), 0, 255).astype(np.uint8).reshape(side, side, 3)


def apply(layer, images: np.ndarray) -> np.ndarray:
    return np.asarray(layer(images.astype(np.float32) / 255.0))


# ---- the building blocks against numpy -----------------------------------------------------

def test_masked_percentile_is_numpys():
    rng = np.random.default_rng(0)
    values = rng.normal(size=(5, 300))
    mask = (rng.random((5, 300)) < np.array([0.9, 0.5, 0.1, 0.02, 1.0])[:, None]).astype(float)
    qs = (1.0, 50.0, 99.0)
    together = masked_percentile(ops.convert_to_tensor(values), ops.convert_to_tensor(mask), qs)
    for q, from_one_sort in zip(qs, together):
        got = np.asarray(masked_percentile(ops.convert_to_tensor(values), ops.convert_to_tensor(mask), q))
        expected = [np.percentile(v[m > 0], q) for v, m in zip(values, mask)]
        np.testing.assert_allclose(got, expected, atol=1e-12)
        np.testing.assert_array_equal(np.asarray(from_one_sort), got)


def test_top_two_eigenvectors_are_numpys():
    rng = np.random.default_rng(1)
    factors = rng.normal(size=(20, 3, 3))
    matrices = factors @ factors.transpose(0, 2, 1) + np.diag([0.0, 0.0, 1e-3])
    first, second = (np.asarray(v) for v in top_two_eigenvectors(ops.convert_to_tensor(matrices)))
    _, vectors = np.linalg.eigh(matrices)
    np.testing.assert_allclose(np.abs(np.sum(first * vectors[:, :, 2], 1)), 1.0, atol=1e-6)
    np.testing.assert_allclose(np.abs(np.sum(second * vectors[:, :, 1], 1)), 1.0, atol=1e-6)
    assert (first.sum(1) >= 0).all()


def test_reinhard_colour_space_is_the_papers():
    # Reinhard et al. 2001, eq. 4 and 6: the paper's printed inverse is the forward matrix's
    # only to about 0.02 (its last row); the exact inverse round-trips a colour to itself.
    paper = [[4.4679, -3.5873, 0.1193], [-1.2186, 2.3809, -0.1624], [0.0497, -0.2439, 1.2045]]
    np.testing.assert_allclose(RGB_FROM_LMS, paper, atol=0.02)
    np.testing.assert_allclose(RGB_FROM_LMS @ LMS_FROM_RGB, np.eye(3), atol=1e-12)
    log_lms = np.array([0.1, -0.2, 0.3])
    l, alpha, beta = LAB_FROM_LOG_LMS @ log_lms
    assert l == pytest.approx(0.2 / np.sqrt(3)) and alpha == pytest.approx(-0.7 / np.sqrt(6))
    assert beta == pytest.approx(0.3 / np.sqrt(2))


# ---- Macenko -------------------------------------------------------------------------------

def test_macenko_recovers_the_stain_vectors_of_a_beer_lambert_image():
    # Macenko keeps pixels with OD >= 0.15 in every channel: eosin (red OD 0.07 per unit) must be
    # dense enough, above 2.1, for its pure pixels to count.
    h_vector, e_vector = RGB_FROM_HED[0], RGB_FROM_HED[1]
    target = fit_stain_target("macenko", he_image(0, 80, low=2.2, high=3.0))
    found = np.array(target["stain_vectors"])
    assert found[0] @ h_vector > 0.999 and found[1] @ e_vector > 0.999
    assert 2.85 < target["max_concentrations"][0] < 3.15 and 2.85 < target["max_concentrations"][1] < 3.15


def test_macenko_layer_is_the_published_method_in_numpy_per_image():
    """Each image: stain vectors from numpy's eigh and percentile, concentrations by lstsq,
    scaled to the target's 99th percentiles, recomposed with the target's vectors."""
    target = fit_stain_target("macenko", he_image(0, 60))
    layer = StainNormalization("macenko", target)
    images = np.stack([he_image(1), restain_like_another_lab(he_image(2)), he_image(3, e_vector=[0.2, 0.9, 0.4])])
    got = apply(layer, images)
    for image, out in zip(images, got):
        density = optical_density(image.reshape(-1, 3))
        tissue = (density >= MACENKO_BETA).all(axis=1)
        stains = macenko_stains(density[tissue])
        conc = macenko_concentrations(density, stains)
        conc *= np.array(target["max_concentrations"]) / np.percentile(conc[tissue], 99, axis=0)
        expected = np.clip((256 * np.exp(-conc @ np.array(target["stain_vectors"])) - 1) / 255, 0, 1)
        np.testing.assert_allclose(out.reshape(-1, 3), expected, atol=1e-4)


def test_macenko_undoes_another_labs_staining():
    reference = he_image(0, 60)
    layer = StainNormalization("macenko", fit_stain_target("macenko", reference))
    image = he_image(5)
    normalized, restained = apply(layer, np.stack([image, restain_like_another_lab(image)]))
    before = np.abs(restain_like_another_lab(image) / 255.0 - image / 255.0).mean()
    assert np.abs(normalized - restained).mean() < 0.25 * before


# ---- Reinhard ------------------------------------------------------------------------------

def test_reinhard_matches_the_targets_mean_and_deviation_on_tissue():
    target = {"mean": [-0.5, -0.04, 0.02], "std": [0.2, 0.03, 0.012]}
    layer = StainNormalization("reinhard", target)
    rng = np.random.default_rng(3)
    image = np.clip(rng.normal([150, 90, 160], 25, (32, 32, 3)), 0, 200).astype(np.uint8)  # all tissue
    out = apply(layer, image[None])[0] * 255
    lab = rgb_to_lab(out.reshape(-1, 3))
    np.testing.assert_allclose(lab.mean(0), target["mean"], atol=5e-3)
    np.testing.assert_allclose(lab.std(0), target["std"], rtol=0.05)


# ---- white, empty, sparse ------------------------------------------------------------------

@pytest.mark.parametrize("method", ["reinhard", "macenko"])
def test_white_empty_and_sparse_tiles_are_left_as_they_are(method):
    layer = StainNormalization(method, fit_stain_target(method, he_image(0, 60)))
    white = np.full((32, 32, 3), 255, np.uint8)
    glass = np.full((32, 32, 3), 238, np.uint8)
    sparse = white.copy()
    sparse[:2, :4] = he_image(1, 8)[:2, :4]  # under 1 % tissue
    black = np.zeros((32, 32, 3), np.uint8)
    flat = np.full((32, 32, 3), (150, 80, 160), np.uint8)  # tissue of one colour: no stain plane
    out = apply(layer, np.stack([white, glass, sparse, black, flat]))
    assert np.isfinite(out).all()
    np.testing.assert_array_equal(out[0], 1.0)
    np.testing.assert_allclose(out[1], 238 / 255, atol=1e-6)
    np.testing.assert_allclose(out[2], sparse / 255, atol=1e-6)
    assert np.abs(out[3:] - np.stack([black, flat]) / 255).max() < 1.0  # finite, in range
    assert (out >= 0).all() and (out <= 1).all()


def test_bad_settings_are_refused():
    with pytest.raises(HistoclassError, match="'vahadane' is not none, reinhard or macenko"):
        config_for_recipe("original", stain_normalization="vahadane")
    with pytest.raises(HistoclassError, match="needs --stain-normalization"):
        config_for_recipe("original", stain_reference="ref.png")
    with pytest.raises(HistoclassError, match="--stain-augmentation must be between"):
        config_for_recipe("original", stain_augmentation=2.0)
    with pytest.raises(HistoclassError, match="almost no tissue"):
        fit_stain_target("macenko", np.full((20, 20, 3), 255, np.uint8))


# ---- training and every path of inference --------------------------------------------------

@pytest.fixture(scope="module")
def macenko_run(tmp_path_factory):
    from histoclass.training.train import train
    base = tmp_path_factory.mktemp("stain")
    data = make_idc_tree(base / "data", num_patients=6, per_class=6)
    config = config_for_recipe("original", num_epochs=1, batch_size=16, stain_normalization="macenko")
    return train(data, base / "run", config, cache_dir=base / "cache", progress=False)


def test_training_fits_the_target_and_the_model_holds_it(macenko_run):
    import histoclass
    stored = json.loads((macenko_run / "stain.json").read_text())
    assert stored["method"] == "macenko" and stored["fitted_on"].endswith("training patches")
    run = histoclass.load_run(macenko_run)
    layer = run.models[0].get_layer("stain_normalization")
    assert layer.method == "macenko"
    np.testing.assert_allclose(layer.target["stain_vectors"], stored["target"]["stain_vectors"])


def test_cli_takes_a_stain_reference_image(tmp_path, capsys):
    data = make_idc_tree(tmp_path / "data", num_patients=6, per_class=4)
    reference = write_png(tmp_path / "reference.png", he_image(7, 60))
    out = tmp_path / "run"
    assert main(["train", "--data", str(data), "--out", str(out), "--epochs", "1", "--batch-size", "16",
                 "--stain-normalization", "reinhard", "--stain-reference", str(reference), "-q",
                 "--cache-dir", str(tmp_path / "cache")]) == 0
    stored = json.loads((out / "stain.json").read_text())
    assert stored["fitted_on"] == str(reference.resolve())
    assert stored["target"] == fit_stain_target("reinhard", he_image(7, 60))
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "r2"), "--stain-normalization",
                 "reinhard", "--stain-reference", str(tmp_path / "absent.png")]) == 2
    assert "--stain-reference" in capsys.readouterr().err


def test_predict_slide_tiles_onnx_and_serve_give_the_same_numbers(macenko_run, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient
    import histoclass
    from histoclass.serve.app import create_app
    from histoclass.slides.pipeline import predict_plan
    from histoclass.slides.reader import open_slide
    from histoclass.slides.tiling import plan_tiles, read_tiles
    from histoclass.synth.slide_file import write_pyramid_tiff
    run = histoclass.load_run(macenko_run)
    rgb, _, _ = render_slide(np.random.default_rng(4), 400, 300, tumour_fraction=0.4)
    rgb = restain_like_another_lab(rgb)
    path = write_pyramid_tiff(tmp_path / "slide.tiff", rgb, run.config.mpp, tile=64)
    with open_slide(path) as slide:
        plan = plan_tiles(slide, run.config.mpp, run.image_size)
        from_slide, failed = predict_plan(run, slide, plan, batch_size=8, progress=False)
        tiles, _ = read_tiles(slide, plan, np.arange(plan.num_tiles))
    assert not failed and plan.num_tiles >= 8
    from_predict = run.predict(tiles)
    np.testing.assert_allclose(from_slide, from_predict, atol=TOLERANCE)
    from_onnx = histoclass.load_run(macenko_run, engine="onnx").predict(tiles)
    np.testing.assert_allclose(from_onnx, from_predict, atol=TOLERANCE)
    files = [("files", (f"{i}.png", cv2.imencode(".png", tile[..., ::-1])[1].tobytes(), "image/png"))
             for i, tile in enumerate(tiles[:8])]
    with TestClient(create_app(run)) as client:
        answer = client.post("/predict", files=files).json()
    from_serve = [result["prob_malignant"] for result in answer["results"]]
    np.testing.assert_allclose(from_serve, from_predict[:8], atol=TOLERANCE)


@pytest.mark.parametrize("method", ["reinhard", "macenko"])
def test_onnx_graph_of_a_normalizing_model_gives_the_keras_numbers(method):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("tf2onnx")
    import onnxruntime
    from histoclass.models.export_formats import onnx_bytes
    from histoclass.models.inference_graph import inference_graph
    from histoclass.models.registry import create_model
    target = fit_stain_target(method, he_image(0, 60))
    model = create_model("original_cnn", 32, stain_normalization=(method, target), seed=1)
    graph = inference_graph([model], 32, test_time_augmentation=False)
    images = np.stack([he_image(1, 32), restain_like_another_lab(he_image(2, 32)),
                       np.full((32, 32, 3), 255, np.uint8), np.zeros((32, 32, 3), np.uint8)])
    session = onnxruntime.InferenceSession(onnx_bytes(graph), providers=["CPUExecutionProvider"])
    from_onnx = session.run(None, {session.get_inputs()[0].name: images})[0]
    np.testing.assert_allclose(from_onnx, graph.predict(images, verbose=0), atol=TOLERANCE)


def test_stain_augmentation_strength_reaches_the_jitter_layer():
    from histoclass.models.registry import create_model
    model = create_model("original_cnn", 32, augmentation="tissue", stain_augmentation=0.3)
    layer = model.get_layer("random_stain")
    assert layer.scale == 0.3 and layer.shift == 0.3
    assert config_for_recipe("strong").stain_augmentation == 0.05  # Tellez et al.'s "light" until measured
