"""One inference-only Keras graph for a run: uint8 images in, probabilities out.

What `Run.model_probabilities` and `Run.calibrated` do in numpy, written as layers so that a
runtime without histoclass (ONNX Runtime, TensorFlow Serving) computes the same numbers:

    uint8 (N, size, size, 3) -> float32 -> [8 dihedral views when the run uses test-time
    augmentation] -> each member model (augmentation layers removed) -> mean prob_malignant over
    views and members -> [prior shift and temperature, in float64] -> (prob_benign, prob_malignant)

The members are expected with batch norm already folded (`load_run` does that). Augmentation
layers are the identity at inference; they are replaced by nothing here, so the exported graph
holds no random ops at all. Written with keras.ops only, so every backend builds it.
"""
from __future__ import annotations

import keras
from keras import layers, ops

from .augment import RandomBlur, RandomDihedral, RandomStain

# Clipping of `evaluation.calibration`: probabilities kept off exact 0 and 1 before log-odds.
PROBABILITY_CLIP = 1e-7


def is_augmentation(layer) -> bool:
    """Training-only layers: histoclass's own and Keras' random preprocessing layers."""
    if isinstance(layer, (RandomDihedral, RandomStain, RandomBlur)):
        return True
    return type(layer).__name__.startswith("Random") and type(layer).__module__.startswith("keras.")


def without_augmentation(model: keras.Model) -> keras.Model:
    """The same functional model with its augmentation layers taken out; the other layers are
    shared with `model` (same weights, no copy)."""
    if not any(is_augmentation(layer) for layer in model.layers):
        return model
    return keras.models.clone_model(
        model, clone_function=lambda layer: layers.Identity(name=f"{layer.name}_removed")
        if is_augmentation(layer) else layer)


def dihedral_views(images) -> list:
    """The 8 flips/rotations of a symbolic batch, in the order of
    `inference.probabilities.dihedral_views` (the order does not change the mean, but keeps the
    two easy to compare)."""
    views = []
    for transposed in (images, ops.transpose(images, (0, 2, 1, 3))):
        for flip_rows in (False, True):
            for flip_cols in (False, True):
                view = ops.flip(transposed, axis=1) if flip_rows else transposed
                views.append(ops.flip(view, axis=2) if flip_cols else view)
    return views


def _log_odds(prob):
    prob = ops.clip(prob, PROBABILITY_CLIP, 1.0 - PROBABILITY_CLIP)
    # log(1 - p), not log1p(-p): ONNX has no Log1p, and in float64 with p <= 1 - 1e-7 the two
    # differ by less than 1e-9.
    return ops.log(prob) - ops.log(1.0 - prob)


def calibrate_tensor(prob_malignant, temperature: float, prior_shift: float):
    """`evaluation.calibration.calibrate` on a tensor: prior shift removed, then temperature."""
    unshifted = ops.sigmoid(_log_odds(prob_malignant) - prior_shift)
    return ops.sigmoid(_log_odds(unshifted) / temperature)


def inference_graph(models: list, image_size: int, test_time_augmentation: bool,
                    calibration: tuple[float, float] | None = None, name: str = "histoclass") -> keras.Model:
    """uint8 images (N, image_size, image_size, 3), any N, in; (N, 2) float32 out.

    Without `calibration` the output is the models' raw probabilities (what
    `Run.model_probabilities` returns, as (1 - p, p)); with `calibration` = (temperature,
    prior_shift) it is the calibrated probabilities of `Run.predict`.
    """
    inputs = keras.Input((image_size, image_size, 3), dtype="uint8", name="image")
    images = ops.cast(inputs, "float32")
    views = dihedral_views(images) if test_time_augmentation else [images]
    # Members of an ensemble share an architecture and so a name; a graph needs unique names.
    members = [keras.Model(member.inputs[0], member.outputs[0], name=f"member_{i}")
               for i, member in enumerate(without_augmentation(model) for model in models)]
    # The mean over views and members in float64, as numpy takes it in `model_probabilities`.
    per_call = [ops.cast(member(view, training=False)[:, 1], "float64") for member in members for view in views]
    prob = per_call[0] if len(per_call) == 1 else ops.mean(ops.stack(per_call, axis=0), axis=0)
    if calibration is not None:
        temperature, prior_shift = calibration
        prob = calibrate_tensor(prob, float(temperature), float(prior_shift))
    prob = ops.cast(prob, "float32")
    outputs = ops.stack([1.0 - prob, prob], axis=1)
    return keras.Model(inputs, outputs, name=name)
