"""Training on several devices (`histoclass train --devices N|all`): data parallelism.

Every device holds a copy of the model and takes an equal share of each batch; the gradients
are averaged, so `batch_size` is the GLOBAL batch (all devices together) and one step with N
devices is the step one device takes on the same batch. The learning rate is left as it is
unless asked (`scale_lr`: multiplied by N, for users who raise the batch size with N).

- JAX: the Keras distribution API, `keras.distribution.DataParallel` over the local devices.
  Several hosts: a job scheduler sets KERAS_DISTRIBUTION_JOB_ADDRESSES (the coordinator's
  host:port first), KERAS_DISTRIBUTION_NUM_PROCESSES and KERAS_DISTRIBUTION_PROCESS_ID on each
  host, and `keras.distribution.initialize()` is called before any device is listed.
- TensorFlow: `tf.distribute.MirroredStrategy` over the GPUs (or the logical CPUs where there
  are no GPUs); the model is built and compiled in its scope.
- torch: not supported (one device).
"""
from __future__ import annotations

import logging
import os
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable, ContextManager

from ..errors import HistoclassError

log = logging.getLogger(__name__)

MULTI_HOST_VARIABLES = ("KERAS_DISTRIBUTION_JOB_ADDRESSES", "KERAS_DISTRIBUTION_NUM_PROCESSES",
                        "KERAS_DISTRIBUTION_PROCESS_ID")


@dataclass(frozen=True)
class DevicePlan:
    backend: str
    names: tuple[str, ...]  # the devices used, as the backend names them
    strategy: str  # "DataParallel" | "MirroredStrategy"
    num_processes: int = 1

    @property
    def count(self) -> int:
        return len(self.names)

    def metadata(self) -> dict:
        return {"count": self.count, "names": list(self.names), "backend": self.backend,
                "strategy": self.strategy, "num_processes": self.num_processes}


def parse_devices(text: str) -> int | None:
    """--devices: a positive count, or "all" (None)."""
    if text.strip().lower() == "all":
        return None
    try:
        count = int(text)
    except ValueError:
        count = 0
    if count < 1:
        raise HistoclassError(f"--devices {text!r} is neither a positive number nor 'all'; "
                              "give e.g. --devices 2 or --devices all")
    return count


def plan_devices(requested: int | None) -> DevicePlan:
    """The devices to train on: `requested` of them, or all (None)."""
    import keras
    backend = keras.backend.backend()
    if backend == "jax":
        num_processes = int(os.environ.get("KERAS_DISTRIBUTION_NUM_PROCESSES", "1") or 1)
        if num_processes > 1:
            keras.distribution.initialize()  # reads the scheduler's KERAS_DISTRIBUTION_* variables
        available = keras.distribution.list_devices()  # JAX's default platform: GPUs if any
        return DevicePlan(backend, _take(available, requested), "DataParallel", num_processes)
    if backend == "tensorflow":
        import tensorflow as tf
        available = [d.name for d in tf.config.list_logical_devices("GPU")] or \
                    [d.name for d in tf.config.list_logical_devices("CPU")]
        return DevicePlan(backend, _take(available, requested), "MirroredStrategy")
    raise HistoclassError(f"--devices is not supported with the {backend} backend; use "
                          "KERAS_BACKEND=jax or tensorflow, or leave out --devices")


def _take(available: list[str], requested: int | None) -> tuple[str, ...]:
    if requested is not None and requested > len(available):
        raise HistoclassError(
            f"--devices {requested} asked for, but this machine has {len(available)}: "
            f"{', '.join(available)}; give --devices {len(available)} or --devices all")
    return tuple(available if requested is None else available[:requested])


def distributed(plan: DevicePlan | None) -> Callable[[], ContextManager]:
    """A scope factory for the model's building, compiling and fitting: each call gives a
    context manager entering the same distribution (one MirroredStrategy owns the variables)."""
    if plan is None:
        return nullcontext
    log.info("training on %d devices with %s: %s", plan.count, plan.strategy, ", ".join(plan.names))
    if plan.strategy == "DataParallel":
        import keras
        distribution = keras.distribution.DataParallel(devices=list(plan.names))
    else:
        import tensorflow as tf
        distribution = tf.distribute.MirroredStrategy(devices=list(plan.names))
    return distribution.scope
