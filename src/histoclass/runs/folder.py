"""The run folder: what a training run leaves, and how a later command reads it back.

    model.keras            the best model (by validation), written atomically
    last.keras             the latest epoch's model with its optimizer state, for --resume
    config.json            the resolved TrainConfig and the data it was trained on
    split.csv              source,label,group,x,y,part for every image used
    history.csv            one row per epoch
    calibration.json       temperature and operating threshold, fitted on the validation split;
                           `neighbourhood`: sigma and threshold of smoothed tile probabilities
    val_predictions.csv    the best model's validation probabilities (see `predictions.py`)
    focus.json             sharpness percentiles of the training patches (`data.sharpness`), for
                           `histoclass slide`'s blur QC; absent in runs from before it
    metadata.json          library versions, seed, data fingerprint, status, timings
    evaluation/            what `histoclass evaluate` wrote: metrics.json, predictions.csv, figures
"""
from __future__ import annotations

import csv
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .. import __version__
from ..config import TrainConfig
from ..data.records import ImageRecord
from ..errors import HistoclassError
from ..fileio import read_json, write_csv_atomic, write_json_atomic

log = logging.getLogger(__name__)

RUN_FORMAT = 1
SPLIT_COLUMNS = ("source", "label", "group", "x", "y", "part")


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


@dataclass(frozen=True)
class Calibration:
    """What `finalize` fitted on validation: applied to every prediction of the run."""

    temperature: float = 1.0
    prior_shift: float = 0.0  # log(w_malignant / w_benign) of the class weights trained with
    threshold: float = 0.5
    threshold_method: str = "fixed"
    reason: str | None = None  # why the temperature and threshold fell back (a one-class validation part)
    # sigma and threshold of probabilities smoothed over neighbouring patches or tiles
    # (`read_neighbourhood`); None where the run has none
    neighbourhood: dict | None = None


def read_calibration(folder: Path) -> Calibration:
    """calibration.json; the identity and threshold 0.5 for a run that has none yet."""
    path = Path(folder) / "calibration.json"
    if not path.is_file():
        return Calibration()
    try:
        raw = read_json(path)
        calibration = Calibration(float(raw.get("temperature", 1.0)), float(raw.get("prior_shift", 0.0)),
                                  float(raw.get("threshold", 0.5)), str(raw.get("threshold_method", "fixed")),
                                  str(raw["reason"]) if raw.get("reason") else None)
    except (ValueError, TypeError, AttributeError, OSError) as err:
        raise HistoclassError(f"{path} is damaged ({err}); delete it and run "
                              f"`histoclass train --resume {folder}` to fit it again") from err
    if not (0 < calibration.temperature < 1e6 and 0 <= calibration.threshold <= 1
            and np.isfinite(calibration.prior_shift)):
        raise HistoclassError(f"{path} holds temperature {calibration.temperature} and threshold "
                              f"{calibration.threshold}; expected a positive temperature and a threshold in [0, 1]")
    return replace(calibration, neighbourhood=_neighbourhood(raw.get("neighbourhood"), path))


def read_neighbourhood(folder: Path) -> dict | None:
    """calibration.json's `neighbourhood` (`evaluation.neighbourhood.fit_neighbourhood`): its
    sigma (tiles) and threshold; None for a run without one (older runs, or no validation
    patient with a grid of patches)."""
    path = Path(folder) / "calibration.json"
    if not path.is_file():
        return None
    try:
        found = read_json(path).get("neighbourhood")
    except (ValueError, AttributeError, OSError) as err:
        raise HistoclassError(f"{path} holds a damaged neighbourhood ({err}); delete its `neighbourhood` key "
                              "to classify tiles alone") from err
    return _neighbourhood(found, path)


def _neighbourhood(found, path: Path) -> dict | None:
    """`neighbourhood` as calibration.json (at `path`) holds it, checked."""
    if found is None:
        return None
    try:
        sigma, threshold = float(found["sigma"]), float(found["threshold"])
    except (ValueError, TypeError, KeyError) as err:
        raise HistoclassError(f"{path} holds a damaged neighbourhood ({err}); delete its `neighbourhood` key "
                              "to classify tiles alone") from err
    if not (0 <= sigma <= 10 and 0 <= threshold <= 1):
        raise HistoclassError(f"{path} holds neighbourhood sigma {sigma} and threshold {threshold}; expected "
                              "a sigma of 0 to 10 tiles and a threshold in [0, 1]")
    return {**found, "sigma": sigma, "threshold": threshold}


def read_focus(folder: Path) -> dict | None:
    """focus.json (`data.sharpness.focus_reference`); None for a run without one (older runs) or
    with a damaged one (a warning: blur is then judged against each slide alone)."""
    path = Path(folder) / "focus.json"
    if not path.is_file():
        return None
    try:
        focus = read_json(path)
        if not all(np.isfinite(float(v)) for v in focus["percentiles"].values()):
            raise ValueError("a percentile is not a number")
    except (ValueError, TypeError, KeyError, AttributeError, OSError) as err:
        log.warning("%s is damaged (%s); blur is judged against each slide alone", path, err)
        return None
    return focus


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


def write_history(path: Path, history: list[dict]) -> None:
    """history.csv, one row per epoch; the epoch stays a whole number when rows were read back
    as floats."""
    columns = list(dict.fromkeys(k for r in history for k in r))
    write_csv_atomic(path, columns, ([int(r[c]) if c == "epoch" else r.get(c, "") for c in columns]
                                     for r in history))


def read_history(folder: Path) -> list[dict]:
    """The rows of the run's history.csv as floats (empty cells left out); [] when it has none."""
    path = Path(folder) / "history.csv"
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as handle:
        return [{k: float(v) for k, v in row.items() if k and v not in ("", None)}
                for row in csv.DictReader(handle)]
