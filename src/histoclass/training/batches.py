"""Training batches drawn from the uint8 image array, shuffled each epoch, with class weights.

The array may be a memory map of the decoding cache: only the batch being built is read and
turned into float32, so a 277,524-patch set trains without a float copy of it in memory.
"""
from __future__ import annotations

import keras
import numpy as np


def class_weights(labels: np.ndarray) -> np.ndarray:
    """Weights (benign, malignant) that make both classes weigh the same in the loss."""
    counts = np.bincount(labels, minlength=2).astype(float)
    return np.where(counts > 0, counts.sum() / (2 * np.maximum(counts, 1)), 0.0)


class TrainingBatches(keras.utils.PyDataset):
    def __init__(self, images: np.ndarray, indices: np.ndarray, labels: np.ndarray, batch_size: int,
                 seed: int, label_smoothing: float = 0.0, weights: np.ndarray | None = None,
                 epoch: int = 0, multiple_of: int = 1, **kwargs):
        super().__init__(**kwargs)
        # Across N devices each batch splits evenly: a last, short batch is cut to a multiple
        # of N (at most N - 1 images of an epoch unseen, a different few each epoch).
        self.multiple_of = multiple_of
        self.images, self.indices, self.labels = images, np.asarray(indices), np.asarray(labels)
        self.batch_size, self.seed = batch_size, seed
        weights = np.ones(2) if weights is None else weights
        self.sample_weights = weights[self.labels].astype(np.float32)
        targets = np.eye(2, dtype=np.float32)[self.labels]
        # Label smoothing here rather than in the loss keeps the loss plain for every backend.
        self.targets = targets * (1 - label_smoothing) + label_smoothing / 2
        self.epoch = epoch
        self._order = self._permutation()

    def _permutation(self) -> np.ndarray:
        # Seeded by (seed, epoch): a resumed run draws the same batches it would have drawn.
        return np.random.default_rng([self.seed, self.epoch]).permutation(len(self.indices))

    def __len__(self) -> int:
        full, rest = divmod(len(self.indices), self.batch_size)
        return max(1, full + (rest >= self.multiple_of))

    def __getitem__(self, batch_index: int):
        positions = self._order[batch_index * self.batch_size:(batch_index + 1) * self.batch_size]
        if len(positions) < self.batch_size and len(positions) >= self.multiple_of:
            positions = positions[:len(positions) - len(positions) % self.multiple_of]
        positions = np.sort(positions)
        images = self.images[self.indices[positions]].astype(np.float32)
        return images, self.targets[positions], self.sample_weights[positions]

    def on_epoch_end(self) -> None:
        self.epoch += 1
        self._order = self._permutation()
