"""Folding batch normalisation into convolutions keeps every prediction."""
import keras
import numpy as np
import pytest

from histoclass.explain.gradcam import gradcam_heatmap
from histoclass.models import create_model
from histoclass.models.fold import fold_batch_norm, foldable_pairs


def _with_random_statistics(model):
    rng = np.random.default_rng(0)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            channels = layer.moving_mean.shape[-1]
            layer.set_weights([rng.uniform(0.5, 1.5, channels), rng.normal(0, 0.2, channels),
                               rng.normal(0, 0.3, channels), rng.uniform(0.5, 2.0, channels)])
    return model


@pytest.mark.parametrize("name", ["histo_resnet", "histo_resnet_lite"])
def test_folded_model_predicts_the_same(name):
    model = _with_random_statistics(create_model(name, augmentation="tissue"))
    folded = fold_batch_norm(model)
    num_norms = sum(isinstance(layer, keras.layers.BatchNormalization) for layer in model.layers)
    assert num_norms > 0
    assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in folded.layers)
    images = np.random.default_rng(1).integers(0, 256, (64, 50, 50, 3)).astype("float32")
    np.testing.assert_allclose(folded.predict(images, verbose=0), model.predict(images, verbose=0),
                               atol=1e-5)
    # Grad-CAM still finds the last convolution's output and explains the folded model.
    maps = gradcam_heatmap(folded, images[:4].astype("uint8"))
    assert maps.shape == (4, 50, 50) and np.isfinite(maps).all()


def test_models_without_batch_norm_are_returned_as_they_are():
    model = create_model("original_cnn")
    assert foldable_pairs(model.get_config()) == {}
    assert fold_batch_norm(model) is model
