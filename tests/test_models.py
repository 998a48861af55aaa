"""The model registry and its models; test-time augmentation."""
from __future__ import annotations

import keras
import numpy as np
import pytest

from histoclass.errors import HistoclassError
from histoclass.inference.probabilities import predict_probabilities
from histoclass.models import create_model, list_models, resolve_model_name


def test_registry_holds_the_original_and_the_residual_networks():
    assert {"original_cnn", "histo_resnet", "histo_resnet_lite"} <= set(list_models())


def test_old_model_name_is_an_alias_of_the_original_cnn():
    assert resolve_model_name("seed_cnn") == "original_cnn"
    assert create_model("seed_cnn").count_params() == create_model("original_cnn").count_params()


def test_unknown_model_error_lists_the_known_names():
    with pytest.raises(HistoclassError, match="unknown model 'resnet152'.*original_cnn.*histo_resnet"):
        create_model("resnet152")


@pytest.mark.parametrize("name", ["original_cnn", "histo_resnet", "histo_resnet_lite"])
@pytest.mark.parametrize("size", [28, 50, 64])
def test_models_build_for_patch_sizes(name, size):
    model = create_model(name, image_size=size, augmentation="tissue")
    assert model.input_shape == (None, size, size, 3)
    assert model.output_shape == (None, 2)
    from histoclass.explain.gradcam import find_gradcam_layer
    last_conv = model.get_layer("last_conv")  # Grad-CAM's layer: a 4-D feature map, the last one
    assert find_gradcam_layer(model) is last_conv and len(last_conv.output.shape) == 4
    prob = model.predict(np.full((2, size, size, 3), 128, np.uint8), verbose=0)
    np.testing.assert_allclose(prob.sum(axis=1), 1.0, rtol=1e-5)


def test_residual_network_costs_about_the_seeds_compute():
    def conv_flops(model):
        total = 0
        for layer in model.layers:
            if isinstance(layer, keras.layers.Conv2D):
                height, width, channels = layer.output.shape[1:]
                total += 2 * height * width * channels * int(np.prod(layer.kernel.shape[:3]))
        return total
    seed, resnet = conv_flops(create_model("original_cnn")), conv_flops(create_model("histo_resnet"))
    assert 0.7 < resnet / seed < 1.3, f"histo_resnet {resnet / 1e6:.1f} vs seed {seed / 1e6:.1f} conv MFLOPs"


def test_tta_of_a_dihedral_invariant_model_equals_the_plain_prediction():
    inputs = keras.Input((12, 12, 3))
    pooled = keras.layers.GlobalAveragePooling2D()(keras.layers.Rescaling(1 / 255)(inputs))
    model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(pooled))
    images = np.random.default_rng(0).integers(0, 256, (10, 12, 12, 3), dtype=np.uint8)
    plain = predict_probabilities(model, images)
    averaged = predict_probabilities(model, images, test_time_augmentation=True)
    np.testing.assert_allclose(averaged, plain, rtol=1e-5, atol=1e-6)


def test_tta_differs_for_a_position_sensitive_model():
    # Weights fixed by hand, pixels scaled to [0, 1]: the logit difference is small enough that the
    # softmax never saturates, and reading one corner makes the model see each view differently.
    inputs = keras.Input((6, 6, 3))
    flat = keras.layers.Flatten()(keras.layers.Rescaling(1 / 255)(inputs))
    dense = keras.layers.Dense(2, activation="softmax")
    model = keras.Model(inputs, dense(flat))
    kernel = np.zeros((6 * 6 * 3, 2), np.float32)
    kernel[:3, 1] = 1.0  # the top-left pixel's channels vote for class 1
    dense.set_weights([kernel, np.zeros(2, np.float32)])
    images = np.zeros((2, 6, 6, 3), np.uint8)
    images[:, 0, 0] = 255
    plain = predict_probabilities(model, images)
    averaged = predict_probabilities(model, images, test_time_augmentation=True)
    # The corner pixel sits at the top left in 2 of the 8 views (identity and transpose).
    expected_plain = 1 / (1 + np.exp(-3.0))
    np.testing.assert_allclose(plain, expected_plain, rtol=1e-5)
    np.testing.assert_allclose(averaged, (2 * expected_plain + 6 * 0.5) / 8, rtol=1e-5)


def test_saved_model_with_augmentation_reloads_in_safe_mode(tmp_path):
    from histoclass.runs.model_file import load_model, save_model
    model = create_model("histo_resnet", image_size=28, augmentation="tissue")
    save_model(model, tmp_path / "model.keras")
    loaded = load_model(tmp_path / "model.keras")
    images = np.random.default_rng(2).integers(0, 256, (3, 28, 28, 3), dtype=np.uint8)
    np.testing.assert_allclose(loaded.predict(images, verbose=0), model.predict(images, verbose=0), rtol=1e-5)
