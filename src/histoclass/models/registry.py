"""Register model bodies by name; `create_model` wraps each in the same input front.

The front, `uint8 image -> Rescaling(1/255) -> augmentation (training only)`, is part of every
saved model, so `predict` feeds raw pixels exactly as training did and cannot drift. Stain
normalization is not in the model: it is fitted per patient or slide (`histoclass.stain.context`)
and applied to the uint8 images before the model, once (not per test-time view).
"""
from __future__ import annotations

from typing import Callable

import keras
from keras import layers

from .augment import augmentation_block
from ..errors import HistoclassError

Body = Callable[[keras.KerasTensor], keras.KerasTensor]  # [0,1] images -> 2 softmax probabilities
_REGISTRY: dict[str, Body] = {}
_ALIASES: dict[str, str] = {}  # older names that scripts use, kept working


def register_model(name: str, aliases: tuple[str, ...] = ()) -> Callable[[Body], Body]:
    def decorate(body: Body) -> Body:
        if name in _REGISTRY or name in _ALIASES:
            raise ValueError(f"model {name!r} is registered twice")
        _REGISTRY[name] = body
        _ALIASES.update({alias: name for alias in aliases})
        return body
    return decorate


def list_models() -> list[str]:
    return list(_REGISTRY)


def resolve_model_name(name: str) -> str:
    """The registered name for `name` or one of its aliases; unknown names fail with the list."""
    name = _ALIASES.get(name, name)
    if name not in _REGISTRY:
        raise HistoclassError(f"unknown model {name!r}; choose one of: {', '.join(list_models())}")
    return name


def create_model(name: str, image_size: int = 50, augmentation: str = "none", seed: int = 0,
                 stain_augmentation: float = 0.05) -> keras.Model:
    """A functional model: RGB uint8 images (N, size, size, 3) in, (prob_benign, prob_malignant) out."""
    name = resolve_model_name(name)
    inputs = keras.Input((image_size, image_size, 3), name="image")
    x = layers.Rescaling(1.0 / 255.0, name="rescale")(inputs)
    x = augmentation_block(x, augmentation, seed, stain_augmentation)
    outputs = _REGISTRY[name](x)
    return keras.Model(inputs, outputs, name=name)
