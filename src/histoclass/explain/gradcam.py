"""Grad-CAM (Selvaraju et al., 2017): where in an image a Keras CNN found evidence for a class.

Works with any functional Keras model on any Keras backend; the gradient in `_gradients` is the
only backend-specific step. Drawing is `histoclass.plots.plot_gradcam_overlay`.
"""

import logging

import cv2
import keras
import numpy as np

from histoclass.errors import HistoclassError

logger = logging.getLogger(__name__)

GRADCAM_LAYER_NAME = "last_conv"


def _output_in_model(layer):
    """The layer's output tensor where the model calls it, or None if it is not called once.

    For a nested model (a backbone used as a layer) `layer.output` is the tensor inside the
    backbone's own graph, which the outer model's inputs do not reach; the tensor of the outer
    call is on the layer's one inbound node.
    """
    nodes = getattr(layer, "_inbound_nodes", [])
    if len(nodes) != 1 or len(nodes[0].output_tensors) != 1:
        return None
    return nodes[0].output_tensors[0]


def _output_rank(layer) -> int | None:
    output = _output_in_model(layer)
    return None if output is None else len(output.shape)


def find_gradcam_layer(model: keras.Model, layer_name: str | None = None):
    """The layer Grad-CAM looks at: `layer_name`, else the one named "last_conv", else the last
    layer with a 4-D (batch, height, width, channels) output."""
    spatial_layers = [layer for layer in model.layers
                      if _output_rank(layer) == 4 and not isinstance(layer, keras.layers.InputLayer)]
    if layer_name is None and any(layer.name == GRADCAM_LAYER_NAME for layer in model.layers):
        layer_name = GRADCAM_LAYER_NAME
    if layer_name is None:
        if not spatial_layers:
            raise HistoclassError(
                f"model {model.name!r} has no layer with a 4-D output for Grad-CAM; it needs a "
                "convolutional layer, ideally named 'last_conv'"
            )
        return spatial_layers[-1]
    candidates = [layer.name for layer in spatial_layers]
    try:
        layer = model.get_layer(layer_name)
    except ValueError:
        raise HistoclassError(
            f"model {model.name!r} has no layer {layer_name!r}; layers with a 4-D output: "
            f"{candidates}"
        ) from None
    if _output_rank(layer) != 4:
        raise HistoclassError(
            f"layer {layer_name!r} does not have a 4-D (batch, height, width, channels) output; "
            f"choose one of {candidates}"
        )
    return layer


def _class_scores(model: keras.Model):
    """The model's pre-softmax class scores as a symbolic tensor, or its output if it has none.

    The gradient of a softmax probability is p(1 - p) times that of the scores; in float32 a
    confident model gives p == 1 exactly and so an all-zero map, while the scores keep it.
    """
    last = model.layers[-1]
    if isinstance(last, keras.layers.Softmax) or (
            isinstance(last, keras.layers.Activation) and last.activation is keras.activations.softmax):
        return last.input
    if getattr(last, "activation", None) is keras.activations.softmax:
        # A copy of the layer without its activation, so the user's model is left as it is.
        config = last.get_config() | {"activation": "linear", "name": f"{last.name}_scores"}
        scores_layer = type(last).from_config(config)
        scores = scores_layer(last.input)
        scores_layer.set_weights(last.get_weights())
        return scores
    return model.outputs[0]


def _target_score(scores, class_index: int):
    """Per-image score whose gradient is the evidence for `class_index`.

    For a two-class softmax this is the log-odds s_k - s_other: its gradient is the gradient of
    prob_malignant up to a positive factor per image, which the per-image normalisation removes.
    """
    if scores.shape[-1] == 2:
        return scores[:, class_index] - scores[:, 1 - class_index]
    return scores[:, class_index]


def _gradients(grad_model: keras.Model, images, class_index: int) -> tuple[np.ndarray, np.ndarray]:
    """The feature maps of `grad_model`'s first output and the gradient of the target score
    (from its second output, summed over the batch) with respect to them."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            features, scores = grad_model(images, training=False)
            target = _target_score(scores, class_index)
        gradients = tape.gradient(target, features)
    elif backend == "jax":
        import jax

        features_tensor, scores_tensor = grad_model.outputs
        try:
            head = keras.Model(features_tensor, scores_tensor)
        except ValueError as error:
            raise HistoclassError(
                "with the jax backend Grad-CAM needs a layer whose output alone determines the "
                f"prediction, and this one does not ({error}); pick another layer_name"
            ) from None
        features, _ = grad_model(images, training=False)
        trainable = [variable.value for variable in head.trainable_variables]
        non_trainable = [variable.value for variable in head.non_trainable_variables]

        def summed_target(features):
            scores, _ = head.stateless_call(trainable, non_trainable, features, training=False)
            return _target_score(scores, class_index).sum()

        gradients = jax.grad(summed_target)(features)
    elif backend == "torch":
        import torch

        with torch.enable_grad():
            features, scores = grad_model(images, training=False)
            target = _target_score(scores, class_index).sum()
            (gradients,) = torch.autograd.grad(target, features)
    else:
        raise HistoclassError(
            f"Grad-CAM supports the tensorflow, jax and torch Keras backends, not {backend!r}; "
            "set KERAS_BACKEND to one of them"
        )
    if gradients is None:
        raise HistoclassError("the prediction does not depend on the Grad-CAM layer; pick another "
                              "layer_name")
    return keras.ops.convert_to_numpy(features), keras.ops.convert_to_numpy(gradients)


def gradcam_heatmap(
    model: keras.Model,
    images_uint8,
    layer_name: str | None = None,
    class_index: int = 1,
    batch_size: int = 32,
) -> np.ndarray:
    """Grad-CAM maps for class `class_index` (1 = malignant), shape (N, H, W), in [0, 1].

    `images_uint8` is (N, H, W, 3), uint8 or float in 0-255, fed to the model as it is (scaling
    happens inside the model). The layer is chosen by `find_gradcam_layer`. Each map is the ReLU of
    the layer's channels weighted by their spatially averaged gradients, divided by its maximum
    (all zeros where nothing speaks for the class) and resized bilinearly to H x W.
    """
    images = np.asarray(images_uint8)
    if images.ndim != 4 or len(images) == 0:
        raise HistoclassError(
            f"expected a batch of images of shape (N, H, W, channels), got shape {images.shape}; "
            "for one image pass image[None]"
        )
    try:
        inputs = model.inputs
    except AttributeError:
        raise HistoclassError(
            f"model {model.name!r} has no defined inputs; build it starting from keras.Input"
        ) from None
    layer = find_gradcam_layer(model, layer_name)
    scores = _class_scores(model)
    num_classes = scores.shape[-1]
    if not 0 <= class_index < num_classes:
        raise HistoclassError(
            f"class_index {class_index} is out of range for a model with {num_classes} outputs"
        )
    grad_model = keras.Model(inputs, [_output_in_model(layer), scores])
    logger.debug("Grad-CAM on layer %r of model %r", layer.name, model.name)

    height, width = images.shape[1:3]
    heatmaps = np.empty((len(images), height, width), dtype=np.float32)
    for start in range(0, len(images), batch_size):
        batch = keras.ops.convert_to_tensor(images[start:start + batch_size].astype("float32"))
        features, gradients = _gradients(grad_model, batch, class_index)
        channel_weights = gradients.mean(axis=(1, 2))
        maps = np.maximum(np.einsum("nhwc,nc->nhw", features, channel_weights), 0.0)
        peaks = maps.max(axis=(1, 2), keepdims=True)
        maps = np.divide(maps, peaks, out=np.zeros_like(maps), where=peaks > 0)
        for offset, heatmap in enumerate(maps):
            heatmaps[start + offset] = cv2.resize(heatmap.astype(np.float32), (width, height),
                                                  interpolation=cv2.INTER_LINEAR)
    return np.clip(heatmaps, 0.0, 1.0)
