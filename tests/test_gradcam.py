import keras
import numpy as np
import pytest
from keras import layers

from histoclass.errors import HistoclassError
from histoclass.explain.gradcam import find_gradcam_layer, gradcam_heatmap

SQUARE = 12


def tiny_cnn(name_last_conv=True):
    inputs = keras.Input((50, 50, 3))
    x = layers.Rescaling(1 / 255, name="rescale")(inputs)
    x = layers.Conv2D(8, 3, activation="relu", name="conv_1")(x)
    x = layers.MaxPooling2D(name="pool_1")(x)
    x = layers.Conv2D(16, 3, activation="relu", name="last_conv" if name_last_conv else "conv_2")(x)
    x = layers.MaxPooling2D(name="pool_2")(x)
    x = layers.Flatten(name="flatten")(x)
    outputs = layers.Dense(2, activation="softmax", name="probabilities")(x)
    return keras.Model(inputs, outputs)


@pytest.fixture(scope="module")
def square_task():
    """A model trained to call images with a magenta square malignant. Every image also has a
    brighter white square that says nothing about the class: an untrained network's map lights
    up on both, a working Grad-CAM of a trained one on the magenta square only."""
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    num_images = 320
    images = rng.integers(0, 60, (num_images, 50, 50, 3)).astype(np.uint8)
    labels = np.arange(num_images) % 2
    evidence_corners = np.empty((num_images, 2), int)
    decoy_corners = np.empty((num_images, 2), int)
    for i in range(num_images):
        decoy, evidence = rng.integers(0, 50 - SQUARE, (2, 2))
        while np.all(np.abs(decoy - evidence) < SQUARE):  # the two squares must not overlap
            evidence = rng.integers(0, 50 - SQUARE, 2)
        decoy_corners[i], evidence_corners[i] = decoy, evidence
        images[i, decoy[0]:decoy[0] + SQUARE, decoy[1]:decoy[1] + SQUARE] = 255
        if labels[i]:
            images[i, evidence[0]:evidence[0] + SQUARE, evidence[1]:evidence[1] + SQUARE] = (255, 0, 255)
    model = tiny_cnn()
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(images, labels, epochs=4, batch_size=32, verbose=0)
    malignant = slice(1, 33, 2)
    return model, images[malignant], evidence_corners[malignant], decoy_corners[malignant]


def _mean_inside(heatmaps, corners):
    return np.array([heatmap[row:row + SQUARE, column:column + SQUARE].mean()
                     for heatmap, (row, column) in zip(heatmaps, corners)])


def test_map_points_at_the_evidence_not_the_bright_decoy(square_task):
    model, images, evidence_corners, decoy_corners = square_task
    heatmaps = gradcam_heatmap(model, images)
    assert heatmaps.shape == (16, 50, 50)
    assert heatmaps.min() >= 0.0 and heatmaps.max() <= 1.0
    on_evidence = _mean_inside(heatmaps, evidence_corners)
    on_decoy = _mean_inside(heatmaps, decoy_corners)
    # Trained: about 10-50 times larger on the evidence; untrained: 0.6-1.5 times.
    assert np.all(on_evidence > on_decoy)
    assert np.median(on_evidence) > 5 * np.median(on_decoy)


def test_benign_map_does_not_point_at_the_evidence(square_task):
    model, images, evidence_corners, _ = square_task
    malignant_map = _mean_inside(gradcam_heatmap(model, images, class_index=1), evidence_corners)
    benign_map = _mean_inside(gradcam_heatmap(model, images, class_index=0), evidence_corners)
    assert np.all(benign_map < malignant_map)


def _linear_cam_model(scale):
    """last_conv copies red and green (/255) into two channels, global average pooling, and a
    dense layer with score_malignant - score_benign = scale * (mean(red) - mean(green)) / 255."""
    inputs = keras.Input((4, 4, 3))
    x = layers.Rescaling(1 / 255)(inputs)
    x = layers.Conv2D(2, 1, use_bias=False, name="last_conv")(x)
    x = layers.GlobalAveragePooling2D()(x)
    outputs = layers.Dense(2, activation="softmax")(x)
    model = keras.Model(inputs, outputs)
    kernel = np.zeros((1, 1, 3, 2), "float32")
    kernel[0, 0, 0, 0] = kernel[0, 0, 1, 1] = 1.0
    model.get_layer("last_conv").set_weights([kernel])
    model.layers[-1].set_weights([np.array([[0, scale], [0, -scale]], "float32"), np.zeros(2, "float32")])
    return model


@pytest.mark.parametrize("scale", [1.0, 2000.0])
def test_hand_computed_map(scale):
    # Channels A_red = R / 255 and A_green = G / 255 on a 4 x 4 grid; the malignant log-odds is
    # scale * (mean A_red - mean A_green), so its gradient is +scale/16 on A_red and -scale/16 on
    # A_green, and the map is ReLU(scale/16 * (A_red - A_green)) ~ ReLU(R - G):
    #   (0, 0): R 255, G 0  -> 255;  (1, 1): R 102, G 51 -> 51;  (3, 3): R 0, G 255 -> 0.
    # Divided by its maximum 255: 1 at (0, 0), 0.2 at (1, 1), 0 elsewhere. With scale 2000 the
    # softmax saturates to exactly 1.0 in float32, and the map must not change.
    image = np.zeros((1, 4, 4, 3), np.uint8)
    image[0, 0, 0, 0], image[0, 1, 1, 0], image[0, 1, 1, 1], image[0, 3, 3, 1] = 255, 102, 51, 255
    expected = np.zeros((4, 4))
    expected[0, 0], expected[1, 1] = 1.0, 0.2
    np.testing.assert_allclose(gradcam_heatmap(_linear_cam_model(scale), image)[0], expected, atol=1e-5)


def test_layer_is_last_conv_else_the_last_with_a_4d_output():
    assert find_gradcam_layer(tiny_cnn()).name == "last_conv"
    assert find_gradcam_layer(tiny_cnn(name_last_conv=False)).name == "pool_2"
    assert find_gradcam_layer(tiny_cnn(), "conv_1").name == "conv_1"


def test_a_nested_backbone_is_looked_into_from_the_outer_model():
    backbone_input = keras.Input((50, 50, 3))
    features = layers.Conv2D(4, 3, activation="relu")(backbone_input)
    backbone = keras.Model(backbone_input, features, name="backbone")
    inputs = keras.Input((50, 50, 3))
    x = backbone(layers.Rescaling(1 / 255)(inputs))
    outputs = layers.Dense(2, activation="softmax")(layers.GlobalAveragePooling2D()(x))
    model = keras.Model(inputs, outputs)
    assert find_gradcam_layer(model).name == "backbone"
    heatmaps = gradcam_heatmap(model, np.random.default_rng(0).integers(0, 256, (2, 50, 50, 3)))
    assert heatmaps.shape == (2, 50, 50)


def test_bad_layer_names_list_the_choices():
    with pytest.raises(HistoclassError, match=r"has no layer 'conv_9'; layers with a 4-D output: "
                                              r"\['rescale', 'conv_1', 'pool_1', 'last_conv', 'pool_2'\]"):
        find_gradcam_layer(tiny_cnn(), "conv_9")
    with pytest.raises(HistoclassError, match="layer 'flatten' does not have a 4-D"):
        find_gradcam_layer(tiny_cnn(), "flatten")


def test_bad_inputs_are_named():
    with pytest.raises(HistoclassError, match=r"got shape \(50, 50, 3\); for one image pass image\[None\]"):
        gradcam_heatmap(tiny_cnn(), np.zeros((50, 50, 3), np.uint8))
    with pytest.raises(HistoclassError, match="class_index 2 is out of range for a model with 2 outputs"):
        gradcam_heatmap(tiny_cnn(), np.zeros((1, 50, 50, 3), np.uint8), class_index=2)
    no_input = keras.Sequential([layers.Conv2D(2, 3), layers.Flatten(), layers.Dense(2)])
    with pytest.raises(HistoclassError, match="has no defined inputs; build it starting from keras.Input"):
        gradcam_heatmap(no_input, np.zeros((1, 50, 50, 3), np.uint8))
