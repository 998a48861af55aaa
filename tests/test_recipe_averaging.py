"""The recipe settings for weight averaging (ema_momentum) and mixup, and the original recipe's
unweighted loss."""
from __future__ import annotations

import json

import keras
import numpy as np
import pytest

from conftest import make_idc_tree
from histoclass.config import TrainConfig, config_for_recipe
from histoclass.errors import HistoclassError
from histoclass.training.batches import TrainingBatches
from histoclass.training.callbacks import AveragedWeights


def test_the_original_recipe_trains_without_class_weights_as_the_plain_script():
    assert config_for_recipe("original").class_weighting is False
    assert config_for_recipe("original", class_weighting=True).class_weighting is True


@pytest.mark.parametrize("setting, value, message", [
    ("ema_momentum", 1.0, "ema_momentum must be in"), ("ema_momentum", -0.1, "ema_momentum must be in"),
    ("mixup", -1.0, "mixup must be between"), ("mixup", 11.0, "mixup must be between")])
def test_out_of_range_averaging_and_mixup_are_refused(setting, value, message):
    with pytest.raises(HistoclassError, match=f"{message}.*got {value}"):
        TrainConfig().replace(**{setting: value}).validate()


def _two_valued_batches(mixup: float, seed: int = 0) -> TrainingBatches:
    # Benign images are all 0, malignant all 200: a mixed image's value / 200 is its malignant share.
    labels = np.array([0, 1] * 16)
    images = (labels * 200).astype(np.uint8)[:, None, None, None] * np.ones((1, 4, 4, 3), np.uint8)
    return TrainingBatches(images, np.arange(32), labels, batch_size=16, seed=seed,
                           weights=np.array([1.0, 3.0]), mixup=mixup)


def test_mixup_blends_images_targets_and_weights_by_the_same_factor():
    images, targets, weights = _two_valued_batches(0.4)[0]
    share = images[:, 0, 0, 0] / 200
    np.testing.assert_allclose(images, share[:, None, None, None] * 200 * np.ones_like(images), atol=1e-4)
    np.testing.assert_allclose(targets[:, 1], share, atol=1e-6)
    np.testing.assert_allclose(targets.sum(axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(weights, 1.0 + 2.0 * share, atol=1e-5)  # between the classes' 1 and 3
    assert ((share > 0.01) & (share < 0.99)).sum() >= 4  # images really were blended


def test_mixup_is_seeded_and_off_by_default():
    first, again, other = (_two_valued_batches(0.4, seed)[1][0] for seed in (0, 0, 1))
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    plain = _two_valued_batches(0.0)[1][0]
    assert set(np.unique(plain)) == {0.0, 200.0}


class _Probe(keras.callbacks.Callback):
    """Records the weights after each step, and as the callbacks after AveragedWeights see them."""

    def __init__(self):
        super().__init__()
        self.steps, self.epoch_ends, self.epoch_begins = [], [], []

    def on_train_batch_end(self, batch, logs=None):
        self.steps.append(self.model.get_weights())

    def on_epoch_end(self, epoch, logs=None):
        self.epoch_ends.append(self.model.get_weights())

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch_begins.append(self.model.get_weights())


def test_epochs_are_judged_with_the_averaged_weights_and_training_goes_on_from_the_raw_ones():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, activation="softmax")])
    momentum = 0.5
    model.compile(optimizer=keras.optimizers.SGD(0.5, use_ema=True, ema_momentum=momentum),
                  loss="categorical_crossentropy")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 3)).astype(np.float32)
    y = np.eye(2, dtype=np.float32)[rng.integers(0, 2, 8)]
    probe = _Probe()
    model.fit(x, y, batch_size=4, epochs=2, shuffle=False, verbose=0, callbacks=[AveragedWeights(), probe])
    # By hand: the average starts at the weights after the first step, then m * avg + (1 - m) * w.
    average = [np.array(w) for w in probe.steps[0]]
    expected = []
    for step, weights in enumerate(probe.steps):
        if step:
            average = [momentum * a + (1 - momentum) * w for a, w in zip(average, weights)]
        if step % 2 == 1:  # 2 steps per epoch
            expected.append([a.copy() for a in average])
    for seen, hand in zip(probe.epoch_ends, expected):
        for s, h in zip(seen, hand):
            np.testing.assert_allclose(s, h, rtol=1e-5, atol=1e-6)
    assert not np.allclose(probe.epoch_ends[0][0], probe.steps[1][0])  # the average is not the raw weights
    for s, raw in zip(probe.epoch_begins[1], probe.steps[1]):  # epoch 2 starts from epoch 1's raw weights
        np.testing.assert_allclose(s, raw, rtol=1e-6)


def test_a_run_trains_with_averaging_and_mixup_and_records_them(tmp_path):
    from histoclass.inference.run import load_run
    from histoclass.training.train import train
    data = make_idc_tree(tmp_path / "data", num_patients=6, per_class=6)
    config = config_for_recipe("original", num_epochs=2, batch_size=16, ema_momentum=0.9, mixup=0.4)
    run_dir = train(data, tmp_path / "run", config, cache_dir=tmp_path / "cache", progress=False)
    saved = json.loads((run_dir / "config.json").read_text())
    assert saved["train"]["ema_momentum"] == 0.9 and saved["train"]["mixup"] == 0.4
    run = load_run(run_dir)
    prob = run.predict(np.full((2, 50, 50, 3), 200, np.uint8))
    assert prob.shape == (2,) and np.all((prob >= 0) & (prob <= 1))
