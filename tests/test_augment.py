"""The augmentation layers: identity at inference, exact dihedral permutations, mild stain."""
from __future__ import annotations

import keras
import numpy as np
import pytest

from histoclass.models.augment import KINDS, RandomBlur, RandomDihedral, RandomStain, augmentation_block
from histoclass.inference.probabilities import dihedral_views


def _tissue_like(num: int = 8, size: int = 20, seed: int = 0) -> np.ndarray:
    """Pink-purple [0, 1] images, the colours of H&E tissue."""
    rng = np.random.default_rng(seed)
    base = np.array([0.85, 0.55, 0.75], dtype=np.float32)
    return np.clip(base + rng.normal(0, 0.1, (num, size, size, 3)), 0.02, 1.0).astype(np.float32)


@pytest.mark.parametrize("layer", [RandomDihedral(seed=1), RandomStain(seed=1), RandomBlur(rate=1.0, seed=1)])
def test_layers_are_identity_at_inference(layer):
    images = _tissue_like()
    for training in (None, False):
        out = keras.ops.convert_to_numpy(layer(images, training=training))
        np.testing.assert_array_equal(out, images)


def test_dihedral_outputs_are_exact_pixel_permutations():
    size = 6
    one = np.arange(size * size * 3, dtype=np.float32).reshape(1, size, size, 3)  # every pixel unique
    images = np.repeat(one, 64, axis=0)
    out = keras.ops.convert_to_numpy(RandomDihedral(seed=3)(images, training=True))
    views = [v[0] for v in dihedral_views(one)]
    seen = set()
    for image in out:
        matches = [k for k, view in enumerate(views) if np.array_equal(image, view)]
        assert len(matches) == 1, "each output must be exactly one of the 8 dihedral views"
        seen.add(matches[0])
    assert len(seen) >= 6, f"64 draws should show most of the 8 transforms, saw {sorted(seen)}"


def test_stain_jitter_keeps_range_and_changes_colour_mildly():
    images = _tissue_like(num=32)
    out = keras.ops.convert_to_numpy(RandomStain(seed=2)(images, training=True))
    assert out.shape == images.shape
    assert out.min() >= 0.0 and out.max() <= 1.0
    difference = np.abs(out - images)
    assert 0.002 < difference.mean() < 0.05, f"mean change {difference.mean():.4f} is not mild"
    # Colour, not structure: each image's per-pixel change is smooth (a colour transform).
    correlation = np.corrcoef(out[0].reshape(-1), images[0].reshape(-1))[0, 1]
    assert correlation > 0.95


def test_stain_extreme_pixels_stay_in_range():
    images = np.concatenate([np.zeros((2, 4, 4, 3)), np.ones((2, 4, 4, 3))]).astype(np.float32)
    out = keras.ops.convert_to_numpy(RandomStain(scale=0.5, shift=0.5, seed=0)(images, training=True))
    assert np.isfinite(out).all() and out.min() >= 0.0 and out.max() <= 1.0


def test_blur_keeps_range_and_mean():
    images = _tissue_like()
    out = keras.ops.convert_to_numpy(RandomBlur(rate=1.0, seed=0)(images, training=True))
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert abs(out[:, 2:-2, 2:-2].mean() - images[:, 2:-2, 2:-2].mean()) < 0.01
    assert out[:, 2:-2, 2:-2].std() < images[:, 2:-2, 2:-2].std()


def test_unknown_augmentation_lists_the_known_ones():
    inputs = keras.Input((8, 8, 3))
    with pytest.raises(ValueError, match="none, dihedral, tissue"):
        augmentation_block(inputs, "rotate45", seed=0)


def test_tissue_kind_includes_the_dihedral_group():
    assert KINDS["tissue"][0] == "dihedral"
