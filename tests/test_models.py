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


def _two_batch_norms(momentum=0.9):
    from histoclass.models.histo_resnet import FusedBatchNormalization
    plain, fused = keras.layers.BatchNormalization(momentum=momentum), FusedBatchNormalization(momentum=momentum)
    for layer in (plain, fused):
        layer.build((None, 6, 5, 4))
    rng = np.random.default_rng(3)
    for name in ("gamma", "beta", "moving_mean", "moving_variance"):
        value = rng.uniform(0.5, 1.5, 4).astype(np.float32)
        getattr(plain, name).assign(value)
        getattr(fused, name).assign(value)
    return plain, fused


def test_fused_batch_norm_trains_exactly_as_keras_batch_norm():
    # Same outputs, gradients and moving statistics as Keras's layer, on a batch whose channels
    # have different means and spreads (a plain mean/variance mix-up would show).
    if keras.backend.backend() != "tensorflow":
        pytest.skip("the fused kernel is TensorFlow's; other backends run Keras's own code")
    import tensorflow as tf
    plain, fused = _two_batch_norms()
    rng = np.random.default_rng(4)
    x = tf.constant((rng.normal(0, 1, (3, 6, 5, 4)) * [0.1, 1, 3, 10] + [0, 5, -2, 1]).astype(np.float32))
    upstream = tf.constant(rng.normal(0, 1, (3, 6, 5, 4)).astype(np.float32))
    results = []
    for layer in (plain, fused):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, training=True)
            loss = tf.reduce_sum(y * upstream)
        grads = tape.gradient(loss, [x, layer.gamma, layer.beta])
        results.append([y, *grads, layer.moving_mean, layer.moving_variance])
    for a, b in zip(*results):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-4, atol=1e-4)
    # Inference: Keras's own code, moving statistics.
    np.testing.assert_allclose(np.asarray(fused(x, training=False)), np.asarray(plain(x, training=False)),
                               rtol=1e-5, atol=1e-5)


def test_fused_batch_norm_falls_back_where_the_kernel_does_not_apply():
    import tensorflow as tf
    plain, fused = _two_batch_norms()
    x = tf.constant(np.random.default_rng(5).normal(2, 3, (2, 6, 5, 4)).astype(np.float32))
    fused.trainable = plain.trainable = False  # frozen: moving statistics, nothing updated
    np.testing.assert_allclose(np.asarray(fused(x, training=True)), np.asarray(plain(x, training=True)),
                               rtol=1e-5, atol=1e-5)
    assert not fused._fusable(x, True, None)


def test_histo_resnet_with_fused_batch_norm_saves_and_reloads(tmp_path):
    model = create_model("histo_resnet", 50, "tissue", seed=0)
    images = np.random.default_rng(6).integers(0, 256, (8, 50, 50, 3)).astype(np.float32)
    model.compile(optimizer="adam", loss="categorical_crossentropy")
    model.train_on_batch(images, np.eye(2, dtype=np.float32)[np.arange(8) % 2])
    model.save(tmp_path / "m.keras")
    reloaded = keras.saving.load_model(tmp_path / "m.keras", safe_mode=True)
    np.testing.assert_allclose(reloaded.predict_on_batch(images), model.predict_on_batch(images), rtol=1e-5, atol=1e-6)
