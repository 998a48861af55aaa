"""Training batches drawn from the uint8 image array, shuffled each epoch, with class weights
(optionally balanced over patients too).

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


def patient_balanced_weights(labels: np.ndarray, groups: np.ndarray, balance: float,
                             class_weighting: bool = True) -> np.ndarray:
    """One weight per image so that, within each class, a patient's images weigh in proportion
    to n ** (1 - balance), n being the patient's image count of that class: 0 keeps every image
    alike (plain class weights), 1 makes every patient weigh the same in its class, 0.5 is
    between. Each class keeps its total: half of all images with `class_weighting` (as
    `class_weights`, so calibration's prior shift stays right), else its own count.

    On IDC, 13 patients hold only malignant patches and 3-4 hold the benign ones: without it the
    largest few patients decide what "malignant" and "benign" look like."""
    labels = np.asarray(labels).astype(int)
    groups = np.asarray(groups).astype(str)
    if not 0.0 <= balance <= 1.0:
        raise ValueError(f"balance must be in [0, 1] (got {balance})")
    weights = np.zeros(len(labels), dtype=np.float64)
    for label in (0, 1):
        in_class = labels == label
        if not in_class.any():
            continue
        _, index, counts = np.unique(groups[in_class], return_inverse=True, return_counts=True)
        raw = counts[index].astype(np.float64) ** -balance
        total = len(labels) / 2 if class_weighting else in_class.sum()
        weights[in_class] = raw * (total / raw.sum())
    return weights


class TrainingBatches(keras.utils.PyDataset):
    def __init__(self, images: np.ndarray, indices: np.ndarray, labels: np.ndarray, batch_size: int,
                 seed: int, label_smoothing: float = 0.0, weights: np.ndarray | None = None,
                 epoch: int = 0, multiple_of: int = 1, sample_weights: np.ndarray | None = None,
                 mixup: float = 0.0, pad_last: bool = False, **kwargs):
        """`weights`: one per class; `sample_weights`: one per image of `indices` (it wins);
        `mixup`: Beta(mixup, mixup) blends of each batch's images with the same batch shuffled
        (0: off). `pad_last`: the epoch's last, short batch is filled up to `batch_size` with
        images of weight 0 (its own weighed up to keep the same loss), so that a compiled
        training step (JAX, on a GPU) sees one shape and is compiled once, not twice."""
        super().__init__(**kwargs)
        self.pad_last = pad_last
        # Across N devices each batch splits evenly: a last, short batch is cut to a multiple
        # of N (at most N - 1 images of an epoch unseen, a different few each epoch).
        self.multiple_of = multiple_of
        self.images, self.indices, self.labels = images, np.asarray(indices), np.asarray(labels)
        self.batch_size, self.seed, self.mixup = batch_size, seed, mixup
        weights = np.ones(2) if weights is None else weights
        self.sample_weights = (weights[self.labels] if sample_weights is None
                               else np.asarray(sample_weights)).astype(np.float32)
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
        weights = self.sample_weights[positions]
        if self.pad_last and len(positions) < self.batch_size <= len(self.indices):
            # Mean loss over the batch: sum(w * loss) / batch_size with the fillers' w = 0 is
            # the short batch's own mean when its weights are scaled by batch_size / count.
            fillers = np.setdiff1d(self._order, positions)[:self.batch_size - len(positions)]
            weights = np.concatenate([weights * (self.batch_size / len(positions)),
                                      np.zeros(len(fillers), np.float32)]).astype(np.float32)
            positions = np.concatenate([positions, fillers])
        images = self.images[self.indices[positions]].astype(np.float32)
        targets = self.targets[positions]
        if self.mixup > 0:
            images, targets, weights = self._mix(batch_index, images, targets, weights)
        return images, targets, weights

    def _mix(self, batch_index: int, images, targets, weights):
        # Seeded by (seed, epoch, batch): a resumed run mixes as it would have.
        rng = np.random.default_rng([self.seed, self.epoch, batch_index, 1])
        factor = rng.beta(self.mixup, self.mixup, size=len(images)).astype(np.float32)
        partner = rng.permutation(len(images))

        def blend(values):
            shaped = factor.reshape((-1,) + (1,) * (values.ndim - 1))
            return shaped * values + (1 - shaped) * values[partner]
        return blend(images), blend(targets), blend(weights)

    def on_epoch_end(self) -> None:
        self.epoch += 1
        self._order = self._permutation()
