"""Keras callbacks that keep a run folder safe to read, resume and kill at any moment."""
from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import keras
import numpy as np
from sklearn.metrics import roc_auc_score

from .fileio import write_csv_atomic, write_json_atomic
from .inference import predict_probabilities
from .runs import save_model

log = logging.getLogger(__name__)


class ValidationMetrics(keras.callbacks.Callback):
    """Adds val_loss, val_accuracy and val_auc (scikit-learn's, exact) to the epoch's logs.

    Runs before the other callbacks, which read the same logs dict.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, batch_size: int = 512):
        super().__init__()
        self.images, self.labels, self.batch_size = images, labels, batch_size

    def on_epoch_end(self, epoch, logs=None):
        if logs is None or not len(self.labels):
            return
        prob = np.clip(predict_probabilities(self.model, self.images, batch_size=self.batch_size), 1e-7, 1 - 1e-7)
        logs["val_loss"] = float(-np.mean(self.labels * np.log(prob) + (1 - self.labels) * np.log(1 - prob)))
        logs["val_accuracy"] = float(np.mean((prob >= 0.5) == self.labels))
        both = 0 < self.labels.sum() < len(self.labels)
        logs["val_auc"] = float(roc_auc_score(self.labels, prob)) if both else float("nan")


class RunKeeper(keras.callbacks.Callback):
    """Per epoch: history.csv, last.keras (for --resume), model.keras when validation improves,
    state.json; all atomically, in that order. Stops training after `patience` epochs without
    improvement (early stopping that survives a resume, unlike Keras's own)."""

    def __init__(self, folder: Path, monitor: str, patience: int, history: list[dict],
                 best_value: float | None = None, best_epoch: int | None = None, wait: int = 0):
        super().__init__()
        self.folder, self.monitor, self.patience = Path(folder), monitor, patience
        self.history = history
        self.mode_max = monitor.endswith("auc")
        self.best_value, self.best_epoch, self.wait = best_value, best_epoch, wait
        self._epoch_start = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        logs = dict(logs or {})
        value = logs.get(self.monitor)
        row = {"epoch": epoch + 1, **{k: float(v) for k, v in logs.items()},
               "learning_rate": float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)),
               "seconds": round(time.perf_counter() - self._epoch_start, 2)}
        self.history.append(row)
        columns = list(dict.fromkeys(k for r in self.history for k in r))
        write_csv_atomic(self.folder / "history.csv", columns,
                         ([r.get(c, "") for c in columns] for r in self.history))
        save_model(self.model, self.folder / "last.keras")
        if self._improved(value):
            self.best_value, self.best_epoch, self.wait = float(value), epoch + 1, 0
            save_model(self.model, self.folder / "model.keras")
        else:
            self.wait += 1
        write_json_atomic(self.folder / "state.json", {
            "epochs_done": epoch + 1, "monitor": self.monitor, "best_value": self.best_value,
            "best_epoch": self.best_epoch, "wait": self.wait})
        shown = ", ".join(f"{k} {v:.4f}" for k, v in logs.items() if isinstance(v, float))
        log.info("epoch %d: %s (%.1fs)%s", epoch + 1, shown, row["seconds"],
                 " - best so far" if self.wait == 0 else "")
        if self.wait >= self.patience:
            log.info("no improvement of %s for %d epochs: stopping early", self.monitor, self.patience)
            self.model.stop_training = True

    def _improved(self, value) -> bool:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return self.best_value is None
        if self.best_value is None:
            return True
        return value > self.best_value if self.mode_max else value < self.best_value


class EpochProgress(keras.callbacks.Callback):
    """A progress bar over each epoch's batches, with the running loss."""

    def __init__(self, num_epochs: int):
        super().__init__()
        self.num_epochs = num_epochs
        self._bar = None

    def on_epoch_begin(self, epoch, logs=None):
        from tqdm.auto import tqdm
        self._bar = tqdm(total=self.params.get("steps"), desc=f"epoch {epoch + 1}/{self.num_epochs}",
                         unit="batch", leave=False)

    def on_train_batch_end(self, batch, logs=None):
        if self._bar is not None:
            self._bar.update(1)
            if logs and "loss" in logs and batch % 10 == 0:
                self._bar.set_postfix(loss=f"{float(logs['loss']):.4f}")

    def on_epoch_end(self, epoch, logs=None):
        if self._bar is not None:
            self._bar.close()
            self._bar = None
