"""Probabilities for many images, in batches, optionally averaged over the 8 dihedral views."""
from __future__ import annotations

import keras
import numpy as np

from ..progress import progress_bar

CHUNK = 4096  # images handed to Keras at once: large enough to amortise its per-call setup


def dihedral_views(images: np.ndarray) -> list[np.ndarray]:
    """The 8 flips/rotations of a batch (N, H, W, C) of square images."""
    views = []
    for transposed in (images, images.transpose(0, 2, 1, 3)):
        for flip_rows in (False, True):
            for flip_cols in (False, True):
                view = transposed[:, ::-1] if flip_rows else transposed
                views.append(view[:, :, ::-1] if flip_cols else view)
    return views


def read_in_chunks(images: np.ndarray, indices: np.ndarray | None, dtype, progress: bool = False):
    """Yields (position, chunk): `images[indices]` CHUNK rows at a time as `dtype`, so that a
    memory-mapped set larger than memory can be scored. Rows are read in sorted order (sequential
    on disk) and put back in the order asked for."""
    if indices is None:
        indices = np.arange(len(images))
    with progress_bar(len(indices), "predicting", "img", enabled=progress, leave=False) as bar:
        for start in range(0, len(indices), CHUNK):
            chunk_indices = indices[start:start + CHUNK]
            order = np.argsort(chunk_indices, kind="stable")
            chunk = np.empty((len(chunk_indices), *images.shape[1:]), dtype=dtype)
            chunk[order] = images[chunk_indices[order]]
            yield start, chunk
            bar.update(len(chunk_indices))


def predict_probabilities(model, images: np.ndarray, indices: np.ndarray | None = None,
                          batch_size: int = 512, test_time_augmentation: bool = False,
                          progress: bool = False) -> np.ndarray:
    """prob_malignant of a Keras model for `images[indices]` (all when None), averaged over the
    8 dihedral views with `test_time_augmentation`."""
    out = np.empty(len(images) if indices is None else len(indices), dtype=np.float64)
    for start, batch in read_in_chunks(images, indices, np.float32, progress):
        views = dihedral_views(batch) if test_time_augmentation else [batch]
        probs = np.zeros(len(batch))
        for view in views:
            probs += _predict(model, np.ascontiguousarray(view), batch_size)
        out[start:start + len(batch)] = probs / len(views)
    return out


def _predict(model, images: np.ndarray, batch_size: int) -> np.ndarray:
    """prob_malignant of the model for `images`, batch by batch.

    `predict_on_batch` rather than `predict`: `predict` wraps arrays in a tf.data pipeline
    that op determinism (enabled for training) rewrites into a sequential map, which prints an
    `E0000 ... use_unbounded_threadpool` line and, measured here, halves the speed.
    """
    out = np.empty(len(images), dtype=np.float64)
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size]
        count = len(batch)
        if count < batch_size:
            # A short batch is padded to a power of two: each new input shape costs a trace of
            # the predict function, and this bounds them to a handful whatever the set sizes.
            padded = min(batch_size, 1 << max(3, (count - 1).bit_length()))
            batch = np.concatenate([batch, np.zeros((padded - count, *batch.shape[1:]), batch.dtype)])
        out[start:start + count] = keras.ops.convert_to_numpy(model.predict_on_batch(batch))[:count, 1]
    return out
