"""The run folder: what a training run leaves, and how a later command reads it back.

    model.keras        the best model (by validation), written atomically
    last.keras         the latest epoch's model with its optimizer state, for --resume
    config.json        the resolved TrainConfig and the data it was trained on
    split.csv          source,label,group,x,y,part for every image used
    history.csv        one row per epoch
    calibration.json   temperature and operating threshold, fitted on the validation split
    metadata.json      library versions, seed, data fingerprint, status, timings
"""
from __future__ import annotations

import csv
import logging
import os
import platform
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from . import __version__
from .config import TrainConfig
from .data.records import ImageRecord
from .errors import HistoclassError
from .fileio import atomic_path, read_json, write_csv_atomic, write_json_atomic

log = logging.getLogger(__name__)

RUN_FORMAT = 1
SPLIT_COLUMNS = ("source", "label", "group", "x", "y", "part")


@dataclass
class Run:
    folder: Path
    config: TrainConfig
    data: dict[str, Any]
    model: Any  # keras.Model
    temperature: float = 1.0
    threshold: float = 0.5
    prior_shift: float = 0.0  # log(w_malignant / w_benign) of the class weights trained with

    def calibrated(self, prob_malignant: np.ndarray) -> np.ndarray:
        from .finalize import calibrate
        return calibrate(prob_malignant, self.temperature, self.prior_shift)


def save_model(model, path: Path) -> None:
    """Keras insists on a `.keras` name, so the temporary file gets that suffix too."""
    with atomic_path(path, suffix=".keras") as tmp:
        model.save(tmp)


def write_config(folder: Path, config: TrainConfig, data: dict[str, Any]) -> None:
    write_json_atomic(folder / "config.json", {
        "format": RUN_FORMAT, "histoclass_version": __version__,
        "train": config.to_dict(), "data": data})


def read_config(folder: Path) -> tuple[TrainConfig, dict[str, Any]]:
    folder = Path(folder)
    config_path = folder / "config.json"
    if not folder.is_dir():
        raise HistoclassError(f"run folder {folder} does not exist; give the --out folder of a `histoclass train` run")
    if not config_path.is_file():
        raise HistoclassError(f"{folder} is not a histoclass run (no config.json); give the folder `histoclass train` wrote")
    try:
        raw = read_json(config_path)
    except (ValueError, OSError) as err:
        raise HistoclassError(f"{config_path} is not readable JSON ({err}); the run folder is damaged") from err
    if not isinstance(raw, dict) or not isinstance(raw.get("train"), dict) or "format" not in raw:
        raise HistoclassError(f"{config_path} is not a histoclass run configuration (no format and train "
                              "settings); give the folder `histoclass train` wrote")
    run_format = raw["format"]
    if not isinstance(run_format, int) or isinstance(run_format, bool) or run_format < 1:
        raise HistoclassError(f"{config_path} has run format {run_format!r}, which no histoclass writes; "
                              "the run folder is damaged")
    if run_format > RUN_FORMAT:
        raise HistoclassError(
            f"{folder} was written by histoclass {raw.get('histoclass_version', '?')} (run format "
            f"{run_format}), newer than this histoclass {__version__} reads (format {RUN_FORMAT}); "
            "upgrade histoclass")
    try:
        config = TrainConfig.from_dict(raw["train"]).validate()
    except (TypeError, ValueError, HistoclassError) as err:
        raise HistoclassError(f"{config_path} holds settings this histoclass cannot use ({err}); "
                              "the run folder is damaged or from an incompatible version") from err
    data = raw.get("data", {})
    return config, data if isinstance(data, dict) else {}


def load_model(path: Path, compile: bool = False):
    """Loads a model in Keras safe mode: a model file cannot run code on this machine.

    Before Keras sees it, the file's configuration is read as plain JSON and refused if it
    names code outside Keras and histoclass (a Lambda layer, another Python module)."""
    import keras
    from . import augment  # noqa: F401 - registers the custom layers
    path = Path(path)
    if not path.is_file():
        raise HistoclassError(f"{path} does not exist; train a model first (histoclass train)")
    saved_with = _check_model_file(path)
    try:
        return keras.saving.load_model(path, compile=compile, safe_mode=True)
    except Exception as err:  # noqa: BLE001 - Keras raises many types for a bad file
        message = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        if "safe_mode" in message or "code execution" in message:
            raise HistoclassError(_UNSAFE.format(path=path, what="code Keras safe mode refuses")) from err
        version_note = (f"; it was saved with Keras {saved_with}, this is Keras {keras.__version__}"
                        if saved_with != keras.__version__ else "")
        raise HistoclassError(f"{path} is not a loadable histoclass model ({message}){version_note}") from err


_UNSAFE = ("refused to load {path}: it holds {what}, and histoclass never runs code from a model "
           "file; use a model trained by histoclass (or retrain it with `histoclass train`)")
SAFE_MODULES = ("keras", "histoclass")


def _check_model_file(path: Path) -> str:
    """Checks that `path` is a .keras archive naming only Keras and histoclass objects; returns
    the Keras version it was saved with."""
    import json
    import zipfile
    import keras
    not_a_model = f"{path} is not a Keras model file (.keras archive); the run folder is damaged"
    if not zipfile.is_zipfile(path):
        raise HistoclassError(not_a_model)
    try:
        with zipfile.ZipFile(path) as archive:
            config = json.loads(archive.read("config.json"))
            metadata = json.loads(archive.read("metadata.json")) if "metadata.json" in archive.namelist() else {}
    except (KeyError, ValueError, OSError, zipfile.BadZipFile) as err:
        raise HistoclassError(f"{not_a_model} ({err})") from err
    saved_with = str(metadata.get("keras_version", "?")) if isinstance(metadata, dict) else "?"
    if saved_with.split(".")[0] not in ("?", keras.__version__.split(".")[0]):
        raise HistoclassError(f"{path} was saved with Keras {saved_with}, which this Keras "
                              f"{keras.__version__} cannot read; use a matching Keras version")
    for key, value in _named_objects(config):
        if key == "module" and value.split(".")[0] not in SAFE_MODULES:
            raise HistoclassError(_UNSAFE.format(path=path, what=f"an object from the module {value[:80]!r}"))
        if key == "class_name" and value in ("Lambda", "TFSMLayer"):
            raise HistoclassError(_UNSAFE.format(path=path, what=f"a {value} layer (Python code)"))
    return saved_with


def _named_objects(config: Any):
    """Every (key, text) pair of `module`/`class_name` in a nested Keras configuration."""
    stack = [config]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for key, value in item.items():
                if key in ("module", "class_name") and isinstance(value, str):
                    yield key, value
                else:
                    stack.append(value)
        elif isinstance(item, list):
            stack.extend(item)


def load_run(folder: str | os.PathLike, load_weights: bool = True) -> Run:
    folder = Path(folder)
    config, data = read_config(folder)
    model = load_model(folder / "model.keras") if load_weights else None
    if model is not None:
        from .models.fold import fold_batch_norm
        model = fold_batch_norm(model)  # same predictions, fewer passes: runs are loaded to infer
    if model is not None:
        _check_model(model, config, folder)
    temperature, threshold = read_calibration(folder)
    prior_shift = 0.0
    if (folder / "calibration.json").is_file():
        prior_shift = float(read_json(folder / "calibration.json").get("prior_shift", 0.0))
    return Run(folder, config, data, model, temperature, threshold, prior_shift)


def read_calibration(folder: Path) -> tuple[float, float]:
    """(temperature, threshold) from calibration.json; (1, 0.5) for a run that has none yet."""
    path = Path(folder) / "calibration.json"
    if not path.is_file():
        return 1.0, 0.5
    try:
        calibration = read_json(path)
        temperature = float(calibration.get("temperature", 1.0))
        threshold = float(calibration.get("threshold", 0.5))
    except (ValueError, TypeError, AttributeError, OSError) as err:
        raise HistoclassError(f"{path} is damaged ({err}); delete it and run "
                              f"`histoclass train --resume {folder}` to fit it again") from err
    if not (0 < temperature < 1e6 and 0 <= threshold <= 1):
        raise HistoclassError(f"{path} holds temperature {temperature} and threshold {threshold}; "
                              "expected a positive temperature and a threshold in [0, 1]")
    return temperature, threshold


def _check_model(model, config: TrainConfig, folder: Path) -> None:
    expected_input = (None, config.image_size, config.image_size, 3)
    if tuple(model.input_shape) != expected_input or tuple(model.output_shape) != (None, 2):
        raise HistoclassError(
            f"the model in {folder} takes {model.input_shape} and gives {model.output_shape}, not "
            f"{expected_input} -> (None, 2); it is not a histoclass model for this run")


def write_split(folder: Path, records: Sequence[ImageRecord], parts: Sequence[str]) -> None:
    write_csv_atomic(folder / "split.csv", SPLIT_COLUMNS, (
        (r.source, r.label, r.group, "" if r.x is None else r.x, "" if r.y is None else r.y, part)
        for r, part in zip(records, parts)))


def read_split(folder: Path) -> tuple[list[ImageRecord], np.ndarray]:
    """The run's split.csv; paths that are not valid UTF-8 come back as the same bytes."""
    path = Path(folder) / "split.csv"
    if not path.is_file():
        raise HistoclassError(f"{folder} has no split.csv; it is not a complete histoclass run")
    records, parts = [], []
    try:
        with open(path, newline="", encoding="utf-8", errors="surrogateescape") as handle:
            reader = csv.DictReader(handle)
            missing = set(SPLIT_COLUMNS) - set(reader.fieldnames or ())
            if missing:
                raise ValueError(f"no {', '.join(sorted(missing))} column")
            for row in reader:
                part = row["part"]
                if part not in ("train", "val", "test"):
                    raise ValueError(f"line {reader.line_num}: part {part!r}")
                records.append(ImageRecord(row["source"], int(row["label"]), row["group"],
                                           int(row["x"]) if row["x"] else None,
                                           int(row["y"]) if row["y"] else None, part))
                parts.append(part)
    except (ValueError, TypeError, csv.Error) as err:
        raise HistoclassError(f"{path} is damaged ({err}); the run's split cannot be read") from err
    return records, np.array(parts, dtype=str)


def remove_stale_temp_files(folder: Path) -> int:
    """Deletes the `.NAME.*.tmp*` files a killed process leaves behind; returns how many.

    Only for a run folder that no other process is writing to (a run being resumed)."""
    removed = 0
    for stale in Path(folder).glob(".*.tmp*"):
        if stale.is_file():
            stale.unlink(missing_ok=True)
            removed += 1
    if removed:
        log.info("removed %d temporary files left by an interrupted process in %s", removed, folder)
    return removed


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
