"""metadata.json's account of the machine: what can make two runs differ besides data, config
and seed."""
from __future__ import annotations

import os
import platform
import sys
from typing import Any

import numpy as np

from .. import __version__

NUMERIC_ENVIRONMENT = ("KERAS_BACKEND", "TF_ENABLE_ONEDNN_OPTS", "TF_DETERMINISTIC_OPS",
                       "TF_CUDNN_DETERMINISTIC", "CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS",
                       "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "PYTHONHASHSEED",
                       "XLA_FLAGS", "TF_XLA_FLAGS")


def environment() -> dict[str, Any]:
    """What can make two runs differ besides data, config and seed: library versions, the
    devices used, and the environment variables that change numerics or threading."""
    import keras
    versions = {"histoclass": __version__, "python": sys.version.split()[0], "keras": keras.__version__,
                "numpy": np.__version__, "backend": keras.backend.backend()}
    for module in ("tensorflow", "jax", "torch", "sklearn", "cv2", "PIL"):
        if module in sys.modules:
            versions[module] = getattr(sys.modules[module], "__version__", "?")
    return {"versions": versions, "platform": platform.platform(), "machine": platform.machine(),
            "processor": platform.processor(), "cpu_count": os.cpu_count(), "devices": _devices(),
            "floatx": keras.config.floatx(), "deterministic_ops": _deterministic_ops(),
            "environment_variables": {name: os.environ[name] for name in NUMERIC_ENVIRONMENT
                                      if name in os.environ}}


def _devices() -> list[str]:
    if "tensorflow" in sys.modules:
        import tensorflow as tf
        return [f"{d.device_type}:{d.name}" for d in tf.config.list_logical_devices()]
    return []


def _deterministic_ops() -> bool | None:
    if "tensorflow" not in sys.modules:
        return None
    try:  # not in TensorFlow's public API, only beside it
        from tensorflow.python.framework.config import is_op_determinism_enabled
        return bool(is_op_determinism_enabled())
    except ImportError:
        return None
