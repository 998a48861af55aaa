"""On a GPU the batch defaults to one that keeps it busy, with the learning rate scaled to it
(the device check is mocked: these tests run on CPUs); a batch the user gives is kept."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from histoclass.cli import main
from histoclass.config import config_for_recipe
from histoclass.training import accelerator
from histoclass.training.batches import TrainingBatches

from conftest import make_idc_tree


@pytest.fixture
def on_gpu(monkeypatch):
    monkeypatch.setattr(accelerator, "accelerator_platform", lambda: "gpu")


def test_defaults_on_a_gpu(on_gpu):
    original = accelerator.accelerator_defaults(config_for_recipe("original"))
    assert original.batch_size == accelerator.ACCELERATOR_BATCH == 512
    assert original.learning_rate == pytest.approx(1e-3 * math.sqrt(512 / 32))  # 4e-3
    strong = accelerator.accelerator_defaults(config_for_recipe("strong"))
    assert strong.batch_size == 512 and strong.learning_rate == pytest.approx(2e-3 * math.sqrt(8))
    given = accelerator.accelerator_defaults(config_for_recipe("original", learning_rate=3e-4),
                                             learning_rate_given=True)
    assert given.batch_size == 512 and given.learning_rate == 3e-4
    big = config_for_recipe("original", batch_size=1024)
    assert accelerator.accelerator_defaults(big) == big


def test_nothing_changes_on_cpu(monkeypatch):
    monkeypatch.setattr(accelerator, "accelerator_platform", lambda: None)
    config = config_for_recipe("original")
    assert accelerator.accelerator_defaults(config) == config


def test_this_machine_is_seen_as_cpu():
    assert accelerator.accelerator_platform() is None  # the tests' machine has no GPU


@pytest.mark.parametrize("given", [None, "8"])
def test_cli_train_on_a_gpu(tmp_path, on_gpu, given):
    data = make_idc_tree(tmp_path / "data", num_patients=6, per_class=5)
    out = tmp_path / "run"
    args = ["train", "--data", str(data), "--out", str(out), "--epochs", "1", "--quiet",
            "--cache-dir", str(tmp_path / "cache")]
    assert main(args + (["--batch-size", given] if given else [])) == 0
    config = json.loads((out / "config.json").read_text())["train"]
    if given:
        assert config["batch_size"] == 8 and config["learning_rate"] == 1e-3
    else:
        assert config["batch_size"] == 512 and config["learning_rate"] == pytest.approx(4e-3)


def test_padded_last_batch_keeps_the_loss():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (50, 4, 4, 3), dtype=np.uint8)
    labels = rng.integers(0, 2, 50)
    indices = np.arange(3, 50)  # 47 training images: batches of 16, 16 and 15
    weights = rng.uniform(0.5, 2.0, len(indices))
    plain = TrainingBatches(images, indices, labels[indices], 16, seed=1, sample_weights=weights)
    padded = TrainingBatches(images, indices, labels[indices], 16, seed=1, sample_weights=weights, pad_last=True)
    assert len(plain) == len(padded) == 3
    for b in range(2):  # full batches are the same
        for x, y in zip(plain[b], padded[b]):
            np.testing.assert_array_equal(x, y)
    short_images, short_targets, short_w = plain[2]
    full_images, full_targets, full_w = padded[2]
    assert len(short_w) == 15 and len(full_w) == 16
    np.testing.assert_array_equal(full_images[:15], short_images)
    assert full_w[15] == 0
    assert not any((full_images[15] == img).all() for img in short_images)  # a filler, not a repeat
    losses = rng.uniform(0, 3, 16)  # any per-image losses: the batch's mean loss is the same
    assert np.sum(full_w * losses) / 16 == pytest.approx(np.sum(short_w * losses[:15]) / 15, rel=1e-6)
