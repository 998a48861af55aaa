"""The cross-validation folder: several trained runs (its members) that act as one run.

    fold-<k>/              a run folder as `train` writes it, validated on fold k
    folds.csv              group,fold: the fold of every patient/group ("test": held out of all)
    members.json           the member folders and their models' SHA-256
    oof_predictions.csv    each training image's probability from the member that did not train on it
    cv_metrics.json        per-fold metrics, their mean and spread, pooled out-of-fold metrics
    calibration.json       the ensemble's temperature and threshold, fitted out of fold
    config.json, split.csv, val_predictions.csv (the out-of-fold ones) as in every run folder
"""
from __future__ import annotations

from pathlib import Path

from ..errors import HistoclassError
from ..fileio import file_sha256, read_json, write_json_atomic

MEMBERS_FILE = "members.json"
CV_METRICS_FILE = "cv_metrics.json"
OOF_FILE = "oof_predictions.csv"
OOF_COLUMNS = ("path", "group", "x", "y", "label", "fold", "prob_model", "prob_malignant")


def is_ensemble(folder: str | Path) -> bool:
    return (Path(folder) / MEMBERS_FILE).is_file()


def write_members(folder: Path, member_folders: list[Path]) -> None:
    """members.json: each member's folder (relative) and the SHA-256 of its model.keras."""
    write_json_atomic(folder / MEMBERS_FILE, {
        "kind": "cross-validation",
        "members": [{"folder": str(m.relative_to(folder)), "model_sha256": file_sha256(m / "model.keras")}
                    for m in member_folders]})


def read_members(folder: str | Path) -> list[Path]:
    """The member folders of an ensemble, each checked to hold the model it was calibrated with."""
    folder = Path(folder)
    path = folder / MEMBERS_FILE
    try:
        members = read_json(path)["members"]
        entries = [(folder / m["folder"], m["model_sha256"]) for m in members]
    except (ValueError, OSError, KeyError, TypeError) as err:
        raise HistoclassError(f"{path} is damaged ({err}); rerun `histoclass cv` with the same --out") from err
    if not entries:
        raise HistoclassError(f"{path} lists no members; rerun `histoclass cv` with the same --out")
    for member, sha in entries:
        model_file = member / "model.keras"
        if not model_file.is_file():
            raise HistoclassError(f"the ensemble member {model_file} is missing; rerun `histoclass cv` "
                                  f"with --out {folder} to train it again")
        if file_sha256(model_file) != sha:
            raise HistoclassError(f"{model_file} changed after the ensemble in {folder} was calibrated; "
                                  f"rerun `histoclass cv` with --out {folder} to calibrate it again")
    return [member for member, _ in entries]
