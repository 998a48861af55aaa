"""The batch size a GPU (or TPU) needs to be kept busy, when the user does not choose one.

Measured on one H200 with Keras + JAX (issue 25): the original recipe's epoch on 194k images
took 11.6 s at the recipes' batch of 32 and 1.7 s at 512; the GPU waits on Python between
small steps. On an accelerator the batch therefore defaults to ACCELERATOR_BATCH, and the
learning rate grows with the square root of the batch's growth.

Why the square root: for SGD the linear rule (Goyal et al. 2017) keeps the update's expected
size; Adam divides each gradient by its own running scale, so a larger batch mostly lowers the
gradient noise rather than raising the step, and the rule that keeps Adam's dynamics the same
is the square-root one (Malladi et al., "On the SDEs and Scaling Rules for Adaptive Gradient
Algorithms", NeurIPS 2022; Hoffer et al. 2017). The linear rule would take the original
recipe's Adam from 1e-3 to 1.6e-2 at 512, where Adam on this CNN diverges; the square root
gives 4e-3. The strong recipe (AdamW, 2e-3 at 64) gets 5.7e-3 behind its one-epoch warm-up.
"""
from __future__ import annotations

import logging
import math

from ..config import TrainConfig

log = logging.getLogger(__name__)

ACCELERATOR_BATCH = 512


def accelerator_platform() -> str | None:
    """"gpu" or "tpu" where the Keras backend computes on one, else None (CPU)."""
    import keras
    backend = keras.backend.backend()
    if backend == "jax":
        import jax
        platform = jax.default_backend()
        return None if platform == "cpu" else platform
    if backend == "tensorflow":
        import tensorflow as tf
        return "gpu" if tf.config.list_physical_devices("GPU") else None
    if backend == "torch":
        import torch
        return "gpu" if torch.cuda.is_available() else None
    return None


def scaled_learning_rate(learning_rate: float, old_batch: int, new_batch: int) -> float:
    """The square-root rule for Adam and AdamW (see the module's note)."""
    return learning_rate * math.sqrt(new_batch / old_batch)


def accelerator_defaults(config: TrainConfig, learning_rate_given: bool = False) -> TrainConfig:
    """`config` with the accelerator's batch and the learning rate scaled to it, where training
    runs on a GPU or TPU and the recipe's batch is smaller; else `config` as it is. For a
    batch size the user left to the recipe; a learning rate the user gave is kept."""
    platform = accelerator_platform()
    if platform is None or config.batch_size >= ACCELERATOR_BATCH:
        return config
    learning_rate = config.learning_rate
    if not learning_rate_given:
        learning_rate = scaled_learning_rate(config.learning_rate, config.batch_size, ACCELERATOR_BATCH)
    log.info("on the %s: batch %d instead of the recipe's %d (give --batch-size to choose), learning "
             "rate %g (the recipe's %g%s)", platform.upper(), ACCELERATOR_BATCH, config.batch_size,
             learning_rate, config.learning_rate,
             ", as given" if learning_rate_given else " by the square-root rule for Adam")
    return config.replace(batch_size=ACCELERATOR_BATCH, learning_rate=learning_rate)
