"""The training options the IDC recipe search added: patient-balanced weights, stain jitter
strength, and their validation in TrainConfig."""
from __future__ import annotations

import numpy as np
import pytest

from histoclass.config import RECIPES, TrainConfig, config_for_recipe
from histoclass.errors import HistoclassError
from histoclass.training.batches import TrainingBatches, class_weights, patient_balanced_weights

# Benign: patient a 2 images, b 1; malignant: a 1, c 4.
LABELS = np.array([0, 0, 0, 1, 1, 1, 1, 1])
GROUPS = np.array(["a", "a", "b", "a", "c", "c", "c", "c"])


def test_full_balance_gives_each_patient_the_same_weight_in_its_class():
    weights = patient_balanced_weights(LABELS, GROUPS, 1.0)
    # Each class totals 4 (half of 8); within it each patient totals 2.
    np.testing.assert_allclose(weights, [1.0, 1.0, 2.0, 2.0, 0.5, 0.5, 0.5, 0.5])


def test_no_balance_is_the_plain_class_weights():
    weights = patient_balanced_weights(LABELS, GROUPS, 0.0)
    np.testing.assert_allclose(weights, class_weights(LABELS)[LABELS])
    np.testing.assert_allclose(weights, [4 / 3] * 3 + [0.8] * 5)


def test_half_balance_weighs_patients_by_the_square_root_of_their_count():
    weights = patient_balanced_weights(LABELS, GROUPS, 0.5)
    malignant = weights[LABELS == 1]
    # Patient a's 1 image against c's 4: totals 1 and sqrt(4) = 2, scaled to 4 in all.
    np.testing.assert_allclose(malignant[0] / malignant[1:].sum(), 0.5)
    np.testing.assert_allclose(malignant.sum(), 4.0)


@pytest.mark.parametrize("class_weighting", [True, False])
def test_each_class_keeps_its_total(class_weighting):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 200)
    groups = rng.integers(0, 7, 200).astype(str)
    weights = patient_balanced_weights(labels, groups, 0.7, class_weighting)
    totals = [weights[labels == c].sum() for c in (0, 1)]
    expected = [100, 100] if class_weighting else [np.sum(labels == 0), np.sum(labels == 1)]
    np.testing.assert_allclose(totals, expected)


def test_data_of_one_class_shares_half_the_images_weight():
    weights = patient_balanced_weights(np.ones(3, int), np.array(["a", "a", "b"]), 1.0)
    np.testing.assert_allclose(weights, [0.375, 0.375, 0.75])  # class total 1.5 = 3 / 2


def test_balance_outside_zero_to_one_is_refused():
    with pytest.raises(ValueError, match="balance must be in"):
        patient_balanced_weights(LABELS, GROUPS, 1.5)


def test_training_batches_use_the_per_image_weights():
    # Image k of the array is filled with k, so each batch says which images it holds; the
    # training indices are a shuffled subset, and weights and labels belong to those positions.
    images = np.broadcast_to(np.arange(10, dtype=np.uint8)[:, None, None, None], (10, 4, 4, 3)).copy()
    indices = np.array([9, 2, 7, 0, 5, 3, 8, 1])
    per_image = patient_balanced_weights(LABELS, GROUPS, 1.0)
    batches = TrainingBatches(images, indices, LABELS, batch_size=3, seed=0,
                              weights=class_weights(LABELS), sample_weights=per_image)
    weight_of = dict(zip(indices.tolist(), per_image.tolist()))
    label_of = dict(zip(indices.tolist(), LABELS.tolist()))
    seen = []
    for batch in range(len(batches)):
        batch_images, targets, weights = batches[batch]
        ids = batch_images[:, 0, 0, 0].astype(int).tolist()
        np.testing.assert_allclose(weights, [weight_of[i] for i in ids])
        assert targets.argmax(axis=1).tolist() == [label_of[i] for i in ids]
        seen += ids
    assert sorted(seen) == sorted(indices.tolist())
    assert len(set(per_image.tolist())) > 2  # the weights differ, so a shuffle of them would show


@pytest.mark.parametrize("setting, value, message", [
    ("patient_balance", -0.1, "patient_balance must be between 0"),
    ("patient_balance", 1.5, "patient_balance must be between 0"),
    ("stain_augmentation", 0.95, "--stain-augmentation must be between 0 and 0.9"),
    ("label_smoothing", 1.0, r"label_smoothing must be in \[0, 1\)"),
])
def test_config_refuses_out_of_range_settings(setting, value, message):
    with pytest.raises(HistoclassError, match=message):
        TrainConfig(**{setting: value}).validate()


def test_new_settings_default_to_the_old_behaviour_and_round_trip():
    config = TrainConfig()
    assert (config.patient_balance, config.stain_augmentation) == (0.0, 0.05)
    saved = config_for_recipe("strong").to_dict()
    assert TrainConfig.from_dict(saved) == config_for_recipe("strong")
    # A config.json written before these settings existed still loads, with the defaults.
    old = {k: v for k, v in saved.items() if k not in ("patient_balance", "stain_augmentation")}
    assert TrainConfig.from_dict(old).stain_augmentation == 0.05


def test_the_original_recipe_keeps_the_original_training():
    config = config_for_recipe("original")
    # Its one change from the defaults: no class weights, as the plain script (docs/recipe.md).
    assert RECIPES["original"] == {"class_weighting": False}
    assert (config.model, config.patient_balance, config.augmentation, config.label_smoothing,
            config.ema_momentum, config.mixup, config.class_weighting) == \
        ("original_cnn", 0.0, "none", 0.0, 0.0, 0.0, False)


def test_the_strong_recipe_keeps_patient_balance_off():
    # Measured on the 4 IDC folds of benchmarks/idc.py: balance 1 lost (docs/recipe.md).
    assert config_for_recipe("strong").patient_balance == 0.0
