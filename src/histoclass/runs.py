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

    def calibrated(self, prob_malignant: np.ndarray) -> np.ndarray:
        from .calibration import apply_temperature
        return apply_temperature(prob_malignant, self.temperature)


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
    if not isinstance(raw, dict) or "train" not in raw:
        raise HistoclassError(f"{config_path} is not a histoclass run configuration")
    run_format = raw.get("format")
    if not isinstance(run_format, int) or run_format > RUN_FORMAT:
        raise HistoclassError(
            f"{folder} was written by histoclass {raw.get('histoclass_version', '?')} (run format "
            f"{run_format}), newer than this histoclass {__version__} reads; upgrade histoclass")
    return TrainConfig.from_dict(raw["train"]), raw.get("data", {})


def load_model(path: Path, compile: bool = False):
    """Loads a model in Keras safe mode: a model file cannot run code on this machine."""
    import keras
    from . import augment  # noqa: F401 - registers the custom layers
    if not path.is_file():
        raise HistoclassError(f"{path} does not exist; train a model first (histoclass train)")
    try:
        return keras.saving.load_model(path, compile=compile, safe_mode=True)
    except Exception as err:  # noqa: BLE001 - Keras raises many types for a bad file
        message = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise HistoclassError(f"{path} is not a loadable histoclass model ({message})") from err


def load_run(folder: str | os.PathLike, load_weights: bool = True) -> Run:
    folder = Path(folder)
    config, data = read_config(folder)
    model = load_model(folder / "model.keras") if load_weights else None
    if model is not None:
        _check_model(model, config, folder)
    calibration_path = folder / "calibration.json"
    temperature, threshold = 1.0, 0.5
    if calibration_path.is_file():
        calibration = read_json(calibration_path)
        temperature = float(calibration.get("temperature", 1.0))
        threshold = float(calibration.get("threshold", 0.5))
    return Run(folder, config, data, model, temperature, threshold)


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
    path = Path(folder) / "split.csv"
    if not path.is_file():
        raise HistoclassError(f"{folder} has no split.csv; it is not a complete histoclass run")
    records, parts = [], []
    with open(path, newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            records.append(ImageRecord(row["source"], int(row["label"]), row["group"],
                                       int(row["x"]) if row["x"] else None,
                                       int(row["y"]) if row["y"] else None, row["part"]))
            parts.append(row["part"])
    return records, np.array(parts, dtype=str)


def environment() -> dict[str, Any]:
    """What can make two runs differ besides data, config and seed."""
    import keras
    versions = {"histoclass": __version__, "python": sys.version.split()[0], "keras": keras.__version__,
                "numpy": np.__version__, "backend": keras.backend.backend()}
    for module in ("tensorflow", "jax", "torch", "sklearn", "cv2"):
        if module in sys.modules:
            versions[module] = getattr(sys.modules[module], "__version__", "?")
    return {"versions": versions, "platform": platform.platform(), "machine": platform.machine(),
            "cpu_count": os.cpu_count()}
