"""Keras callbacks that keep a run folder safe to read, resume and kill at any moment."""
from __future__ import annotations

import logging
import math
import shutil
import time
from pathlib import Path

import keras
import numpy as np

from ..evaluation.metrics import classification_metrics
from ..fileio import atomic_path, file_sha256, write_json_atomic
from ..inference.probabilities import predict_probabilities
from ..runs.folder import read_history, remove_stale_temp_files, write_history
from ..runs.model_file import save_model

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
        metrics = classification_metrics(self.labels, prob, 0.5)
        logs["val_accuracy"] = float(metrics["accuracy"])
        logs["val_auc"] = float("nan") if metrics["roc_auc"] is None else metrics["roc_auc"]


class AveragedWeights(keras.callbacks.Callback):
    """With the optimizer's weight averaging (`use_ema`), the epoch is judged and saved with the
    averaged weights: at each epoch's end they are swapped into the model (the raw weights
    into the optimizer's average slots), so the callbacks after this one validate and save the
    average; at the next epoch's start they are swapped back and training goes on from the raw
    weights. Put it first. `swapped`: the model was loaded from a last.keras saved so (resume)."""

    def __init__(self, swapped: bool = False):
        super().__init__()
        self.swapped = swapped

    def on_epoch_begin(self, epoch, logs=None):
        if self.swapped:
            self._swap()

    def on_epoch_end(self, epoch, logs=None):
        self._swap()

    def _swap(self):
        averages = self.model.optimizer._model_variables_moving_average
        for variable, average in zip(self.model.trainable_variables, averages):
            if average is not None:
                raw = keras.ops.convert_to_numpy(variable)
                variable.assign(average)
                average.assign(raw)
        self.swapped = not self.swapped


class RunKeeper(keras.callbacks.Callback):
    """Per epoch, atomically and in this order: history.csv, last.keras (for --resume),
    model.keras when validation improves, and state.json last, as the commit.

    A run killed between two of these writes is brought up to date by `catch_up`. Stops
    training after `patience` epochs without improvement (early stopping that survives a
    resume, unlike Keras's own)."""

    def __init__(self, folder: Path, monitor: str, patience: int, history: list[dict],
                 best_value: float | None = None, best_epoch: int | None = None, wait: int = 0):
        super().__init__()
        self.folder, self.monitor, self.patience = Path(folder), monitor, patience
        self.history = history
        self.best_value, self.best_epoch, self.wait = best_value, best_epoch, wait
        self._epoch_start = 0.0

    def on_train_begin(self, logs=None):
        remove_stale_temp_files(self.folder)
        if not (self.folder / "state.json").is_file():
            self._write_state(0, last_sha256=None)

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        logs = dict(logs or {})
        value = logs.get(self.monitor)
        row = {"epoch": epoch + 1, **{k: float(v) for k, v in logs.items()},
               "learning_rate": float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)),
               "seconds": round(time.perf_counter() - self._epoch_start, 2)}
        self.history.append(row)
        write_history(self.folder / "history.csv", self.history)
        save_model(self.model, self.folder / "last.keras")
        if improved(value, self.best_value, self.monitor):
            self.best_value, self.best_epoch, self.wait = float(value), epoch + 1, 0
            copy_file_atomic(self.folder / "last.keras", self.folder / "model.keras")
        else:
            self.wait += 1
        self._write_state(epoch + 1, last_sha256=file_sha256(self.folder / "last.keras"))
        shown = ", ".join(f"{k} {v:.4f}" for k, v in logs.items() if isinstance(v, float))
        log.info("epoch %d: %s (%.1fs)%s", epoch + 1, shown, row["seconds"],
                 " - best so far" if self.wait == 0 else "")
        if self.wait >= self.patience:
            log.info("no improvement of %s for %d epochs: stopping early", self.monitor, self.patience)
            self.model.stop_training = True

    def _write_state(self, epochs_done: int, last_sha256: str | None) -> None:
        write_json_atomic(self.folder / "state.json", {
            "epochs_done": epochs_done, "monitor": self.monitor, "best_value": self.best_value,
            "best_epoch": self.best_epoch, "wait": self.wait, "last_sha256": last_sha256})


def improved(value, best_value: float | None, monitor: str) -> bool:
    """Whether `value` of `monitor` beats `best_value` (AUC: higher; loss: lower)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return best_value is None
    if best_value is None:
        return True
    return value > best_value if monitor.endswith("auc") else value < best_value


def catch_up(folder: Path, state: dict) -> dict:
    """state.json for a run killed after last.keras was replaced but before state.json was.

    last.keras is then one epoch ahead of state.json (its hash differs from the one state.json
    recorded), while history.csv already holds that epoch's row: the row decides, as
    `RunKeeper` would have, whether the epoch improved, and model.keras and state.json are
    written as that epoch would have left them. Returns the state to resume from."""
    folder = Path(folder)
    last = folder / "last.keras"
    done = int(state.get("epochs_done", 0))
    recorded = state.get("last_sha256")
    if not last.is_file() or (done > 0 and (recorded is None or file_sha256(last) == recorded)):
        return state
    epoch = done + 1
    row = next((r for r in read_history(folder) if int(r.get("epoch", 0)) == epoch), None)
    if row is None:  # cannot happen with RunKeeper's order; resume from the state as it is
        log.warning("last.keras in %s is newer than state.json, but history.csv has no epoch %d", folder, epoch)
        return state
    monitor = state.get("monitor", "val_loss")
    caught_up = {**state, "epochs_done": epoch, "last_sha256": file_sha256(last)}
    if improved(row.get(monitor), state.get("best_value"), monitor):
        caught_up.update(best_value=row.get(monitor), best_epoch=epoch, wait=0)
        copy_file_atomic(last, folder / "model.keras")
    else:
        caught_up["wait"] = int(state.get("wait", 0)) + 1
    write_json_atomic(folder / "state.json", caught_up)
    log.info("the run was stopped while saving epoch %d; its files are now complete", epoch)
    return caught_up


def copy_file_atomic(source: Path, target: Path) -> None:
    with atomic_path(target, suffix=target.suffix) as tmp:
        shutil.copyfile(source, tmp)


class EpochProgress(keras.callbacks.Callback):
    """A progress bar over each epoch's batches, with the running loss (on a terminal; elsewhere
    RunKeeper's line per epoch is the progress)."""

    def __init__(self, num_epochs: int):
        super().__init__()
        self.num_epochs = num_epochs
        self._bar = None

    def on_epoch_begin(self, epoch, logs=None):
        from ..progress import progress_bar
        self._bar = progress_bar(self.params.get("steps"), f"epoch {epoch + 1}/{self.num_epochs}", "batch",
                                 leave=False)

    def on_train_batch_end(self, batch, logs=None):
        if self._bar is not None:
            self._bar.update(1)
            if logs and "loss" in logs and batch % 10 == 0:
                self._bar.set_postfix(loss=f"{float(logs['loss']):.4f}")

    def on_epoch_end(self, epoch, logs=None):
        if self._bar is not None:
            self._bar.close()
            self._bar = None
