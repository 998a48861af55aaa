"""The ultrasound augmentation: identity at inference, mirrors left-right only, mild gain."""
from __future__ import annotations

import keras
import numpy as np

from histoclass.models.augment import KINDS, RandomGain, _make_layer, augmentation_block


def _images(num: int = 16, size: int = 12) -> np.ndarray:
    return np.random.default_rng(0).random((num, size, size, 3)).astype(np.float32)


def test_identity_at_inference():
    inputs = keras.Input((12, 12, 3))
    model = keras.Model(inputs, augmentation_block(inputs, "ultrasound", seed=0))
    images = _images()
    np.testing.assert_array_equal(np.asarray(model(images, training=False)), images)


def test_flips_are_left_right_only_never_up_down():
    assert "dihedral" not in KINDS["ultrasound"]
    images = _images(num=64)
    out = np.asarray(_make_layer("flip_left_right", seed=0)(images, training=True))
    same = np.all(np.isclose(out, images), axis=(1, 2, 3))
    mirrored = np.all(np.isclose(out, images[:, :, ::-1]), axis=(1, 2, 3))
    assert np.all(same | mirrored) and same.any() and mirrored.any()


def test_gain_keeps_range_and_changes_each_image_mildly():
    images = _images(num=32)
    out = np.asarray(RandomGain(seed=0)(images, training=True))
    assert out.min() >= 0.0 and out.max() <= 1.0
    change = np.abs(out - images).mean(axis=(1, 2, 3))
    assert (change > 0).all() and change.max() < 0.15
