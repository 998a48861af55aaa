"""Augmentation layers that suit tissue, applied per batch inside the model (training only).

Tissue has no up or down: the 8 flips and 90-degree rotations (the dihedral group) are free,
exact augmentations. Stain varies between labs and scanners: a perturbation in the
haematoxylin-eosin-DAB optical-density space (Tellez et al. 2018) imitates it better than RGB
jitter. Written with `keras.ops` only, so every backend runs them.
"""
from __future__ import annotations

import keras
import numpy as np
from keras import layers, ops

from ..stain.maths import HED_FROM_RGB, RGB_FROM_HED, WHITE, density_table

DENSITY = density_table().astype(np.float32)  # stain.maths's optical density of each level


@keras.saving.register_keras_serializable(package="histoclass")
class RandomDihedral(layers.Layer):
    """Each image gets one of the 8 dihedral transforms (flips, transpose), chosen at random."""

    def __init__(self, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, images, training=None):
        if not training:
            return images
        batch = ops.shape(images)[0]
        coins = keras.random.uniform((3, batch, 1, 1, 1), seed=self.seed_generator) < 0.5
        images = ops.where(coins[0], ops.flip(images, axis=1), images)
        images = ops.where(coins[1], ops.flip(images, axis=2), images)
        if images.shape[1] == images.shape[2]:
            images = ops.where(coins[2], ops.transpose(images, (0, 2, 1, 3)), images)
        return images

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "seed": self.seed}


@keras.saving.register_keras_serializable(package="histoclass")
class RandomStain(layers.Layer):
    """HED-space stain jitter plus mild brightness/contrast, on images scaled to [0, 1].

    Each image's H, E and D concentrations are scaled by U(1-s, 1+s) and shifted by U(-b, b).
    """

    def __init__(self, scale: float = 0.05, shift: float = 0.05, brightness: float = 0.05,
                 seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.scale, self.shift, self.brightness, self.seed = scale, shift, brightness, seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, images, training=None):
        if not training:
            return images
        batch = ops.shape(images)[0]
        # Optical density as stain.maths defines it, looked up per level (images are [0, 1] here).
        levels = ops.cast(ops.round(ops.clip(images, 0.0, 1.0) * WHITE), "int32")
        density = ops.take(ops.convert_to_tensor(DENSITY), levels)
        alpha = keras.random.uniform((batch, 3), 1 - self.scale, 1 + self.scale, seed=self.seed_generator)
        beta = keras.random.uniform((batch, 3), -self.shift, self.shift, seed=self.seed_generator)
        # hed = density @ HED_FROM_RGB; hed' = hed * alpha + beta; density' = hed' @ RGB_FROM_HED,
        # folded into one 3x3 matrix and offset per image: one pass over the pixels, not two.
        hed_from_rgb = ops.convert_to_tensor(HED_FROM_RGB)
        rgb_from_hed = ops.convert_to_tensor(RGB_FROM_HED)
        matrix = ops.einsum("cd,bd,de->bce", hed_from_rgb, alpha, rgb_from_hed)
        offset = ops.matmul(beta, rgb_from_hed)[:, None, None, :]
        density = ops.einsum("bhwc,bce->bhwe", density, matrix) + offset
        images = ((WHITE + 1.0) * ops.exp(-density) - 1.0) / WHITE  # stain.maths.intensity, in [0, 1]
        gain = keras.random.uniform((batch, 1, 1, 1), 1 - self.brightness, 1 + self.brightness, seed=self.seed_generator)
        return ops.clip(images * gain, 0.0, 1.0)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "scale": self.scale, "shift": self.shift,
                "brightness": self.brightness, "seed": self.seed}


@keras.saving.register_keras_serializable(package="histoclass")
class RandomBlur(layers.Layer):
    """With probability `rate`, a 3x3 Gaussian blur (sigma about 0.8): focus varies on scanners."""

    def __init__(self, rate: float = 0.2, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.rate, self.seed = rate, seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, images, training=None):
        if not training:
            return images
        kernel_1d = np.array([0.27, 0.46, 0.27], dtype=np.float32)
        kernel = np.outer(kernel_1d, kernel_1d)[:, :, None, None] * np.ones((1, 1, 3, 1), np.float32)
        blurred = ops.depthwise_conv(images, ops.convert_to_tensor(kernel), padding="same")
        batch = ops.shape(images)[0]
        coins = keras.random.uniform((batch, 1, 1, 1), seed=self.seed_generator) < self.rate
        return ops.where(coins, blurred, images)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "rate": self.rate, "seed": self.seed}


@keras.saving.register_keras_serializable(package="histoclass")
class RandomGain(layers.Layer):
    """Per image, contrast about the image's mean scaled by U(1-c, 1+c), then brightness by
    U(1-b, 1+b): an ultrasound machine's gain and dynamic range. On [0, 1] images."""

    def __init__(self, contrast: float = 0.2, brightness: float = 0.1, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.contrast, self.brightness, self.seed = contrast, brightness, seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, images, training=None):
        if not training:
            return images
        batch = ops.shape(images)[0]
        contrast = keras.random.uniform((batch, 1, 1, 1), 1 - self.contrast, 1 + self.contrast,
                                        seed=self.seed_generator)
        gain = keras.random.uniform((batch, 1, 1, 1), 1 - self.brightness, 1 + self.brightness,
                                    seed=self.seed_generator)
        mean = ops.mean(images, axis=(1, 2, 3), keepdims=True)
        return ops.clip(((images - mean) * contrast + mean) * gain, 0.0, 1.0)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "contrast": self.contrast, "brightness": self.brightness,
                "seed": self.seed}


# Each kind is a list of the layers it applies, in order; docs/recipe.md has the measurements.
KINDS: dict[str, tuple[str, ...]] = {
    "none": (),
    "dihedral": ("dihedral",),
    "tissue": ("dihedral", "stain", "blur"),
    # Ultrasound has an up (the skin) and a down, but no left or right: mirror left-right only,
    # move and scale a little (probe position), vary gain and contrast (machine settings).
    "ultrasound": ("flip_left_right", "shift", "zoom", "gain"),
}


def _make_layer(component: str, seed: int, stain_strength: float = 0.05) -> layers.Layer:
    if component == "dihedral":
        return RandomDihedral(seed=seed, name="random_dihedral")
    if component == "stain":
        return RandomStain(scale=stain_strength, shift=stain_strength, seed=seed + 1, name="random_stain")
    if component == "zoom":
        return layers.RandomZoom((-0.1, 0.1), fill_mode="reflect", seed=seed + 2, name="random_zoom")
    if component == "blur":
        return RandomBlur(seed=seed + 3, name="random_blur")
    if component == "flip_left_right":
        return layers.RandomFlip("horizontal", seed=seed + 4, name="random_flip_left_right")
    if component == "shift":
        return layers.RandomTranslation(0.06, 0.06, fill_mode="reflect", seed=seed + 5, name="random_shift")
    if component == "gain":
        return RandomGain(seed=seed + 6, name="random_gain")
    raise ValueError(f"unknown augmentation component {component!r}; known: dihedral, stain, zoom, blur, "
                     "flip_left_right, shift, gain")


def augmentation_block(x, kind: str, seed: int, stain_strength: float = 0.05):
    """Applies the named augmentation to a [0, 1] image tensor `x` of a functional model;
    `stain_strength` is the HED jitter's (RandomStain's scale and shift)."""
    if kind not in KINDS:
        raise ValueError(f"unknown augmentation {kind!r}; choose one of: {', '.join(KINDS)}")
    for component in KINDS[kind]:
        x = _make_layer(component, seed, stain_strength)(x)
    return x
