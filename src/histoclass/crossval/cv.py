"""`histoclass cv`: K folds by patient/group, one training run per fold, out-of-fold predictions,
and the folds' models as one ensemble calibrated on them.

Each fold is an ordinary run (`fold-<k>/`) trained with `training.train` on the other folds and
validated on its own, so early stopping, calibration and resume work as for `train`. A fold
whose run completed is never trained again; an interrupted one is resumed. Whatever comes after
the folds (the out-of-fold table, the ensemble's calibration, cv_metrics.json) is computed
again from the folds on every call, so an interruption there costs nothing.
"""
from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path

import numpy as np

from ..config import TrainConfig
from ..data import discover
from ..data.cache import fingerprint
from ..data.splits import describe_parts
from ..errors import HistoclassError
from ..evaluation.metrics import require_both_classes
from ..fileio import read_json, write_csv_atomic, write_json_atomic
from ..runs.ensemble import CV_METRICS_FILE, OOF_COLUMNS, OOF_FILE, write_members
from ..runs.folder import read_config, read_split, write_config, write_split
from .folds import fold_split, plan_folds, read_plan, write_plan, write_split_file
from .summary import out_of_fold_calibration, summarize

log = logging.getLogger(__name__)

PLAN_FILE = "cv_plan.json"
FOLDS_FILE = "folds.csv"


def cross_validate(data: str | os.PathLike, out_dir: str | os.PathLike, config: TrainConfig,
                   num_folds: int = 5, cache_dir: str | os.PathLike | None = None,
                   progress: bool = True) -> Path:
    """Trains (or finishes) the K folds into `out_dir` and makes it a run: returns the folder."""
    started = time.perf_counter()
    out_dir = Path(out_dir)
    config.validate()
    plan = _start_or_resume(data, out_dir, config, num_folds)
    data_path = read_json(out_dir / PLAN_FILE)["data"]
    members = []
    for fold in range(num_folds):
        members.append(_train_fold(data_path, out_dir, config, plan, fold, cache_dir, progress))
    _assemble(out_dir, config, members, cache_dir, progress)
    log.info("cross-validation of %d folds done in %s (%.0f s in this call)", num_folds, out_dir,
             time.perf_counter() - started)
    return out_dir


def _start_or_resume(data, out_dir: Path, config: TrainConfig, num_folds: int) -> dict[str, str]:
    plan_path = out_dir / PLAN_FILE
    settings = {"data": str(Path(data).expanduser().resolve()), "num_folds": num_folds,
                "train": config.to_dict()}
    if plan_path.is_file():
        stored = read_json(plan_path)
        if stored != settings:
            changed = sorted(k for k in ("data", "num_folds") if stored.get(k) != settings[k]) + sorted(
                k for k, v in settings["train"].items() if stored.get("train", {}).get(k) != v)
            raise HistoclassError(f"{out_dir} holds a cross-validation with other settings "
                                  f"({', '.join(changed)} differ); give a new --out, or the same "
                                  "settings to continue it")
        log.info("continuing the cross-validation in %s", out_dir)
        return read_plan(out_dir / FOLDS_FILE)
    if out_dir.exists() and not out_dir.is_dir():
        raise HistoclassError(f"--out {out_dir} is a file; give a folder for the cross-validation")
    if out_dir.is_dir() and any(p.name != "cv.log" for p in out_dir.iterdir()):
        raise HistoclassError(f"--out {out_dir} is not empty and holds no cross-validation; give a new folder")
    dataset = discover(data)
    require_both_classes(dataset.labels, f"cross-validation on the data at {dataset.root}")
    plan = plan_folds(dataset.records, num_folds, config.test_fraction, config.seed, config.split_balance)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_plan(out_dir / FOLDS_FILE, plan)
    write_json_atomic(plan_path, settings)  # last: a folder with cv_plan.json is a cv in progress
    log.info("%d folds by patient/group, each with both classes:", num_folds)
    parts = np.array([plan[str(r.group)] for r in dataset.records])
    for line in describe_parts(dataset.labels, dataset.groups, parts, ["test", *map(str, range(num_folds))]):
        log.info("  %s%s", "fold " if line[0].isdigit() else "", line)
    return plan


def _train_fold(data_path: str, out_dir: Path, config: TrainConfig, plan: dict[str, str], fold: int,
                cache_dir, progress: bool) -> Path:
    from ..training.train import resume, train
    fold_dir = out_dir / f"fold-{fold}"
    metadata = fold_dir / "metadata.json"
    if metadata.is_file() and read_json(metadata).get("status") == "complete":
        log.info("fold %d: complete, not trained again", fold)
        return fold_dir
    if (fold_dir / "config.json").is_file():
        log.info("fold %d: resuming its interrupted run", fold)
        return resume(fold_dir, cache_dir=cache_dir, progress=progress)
    if fold_dir.exists():
        shutil.rmtree(fold_dir)  # stopped before its run began (no config.json): nothing to keep
    split_file = out_dir / "splits" / f"fold-{fold}.csv"
    split_file.parent.mkdir(exist_ok=True)
    write_split_file(split_file, fold_split(plan, fold))
    log.info("fold %d: training", fold)
    return train(data_path, fold_dir, config, split_file=split_file, cache_dir=cache_dir, progress=progress)


def _assemble(out_dir: Path, config: TrainConfig, members: list[Path], cache_dir, progress: bool) -> None:
    """Out-of-fold predictions, the ensemble's calibration and the folder that makes it a run."""
    from ..inference.run import load_run
    from ..runs.environment import environment
    from ..runs.predictions import write_predictions
    fold_runs = [load_run(m) for m in members]
    # Each fold's validation probabilities, stored when its training ended.
    scored = [run.score(part="val", cache_dir=cache_dir, progress=progress) for run in fold_runs]
    records = [r for s in scored for r in s.records]
    labels = np.concatenate([s.labels for s in scored])
    prob_model = np.concatenate([s.prob_model for s in scored])
    fold_of = np.concatenate([np.full(len(s.labels), k) for k, s in enumerate(scored)])
    calibration = out_of_fold_calibration([s.labels for s in scored], [s.prob_model for s in scored], config,
                                          records)
    write_json_atomic(out_dir / "calibration.json", calibration)

    test_records = [r for r, p in zip(*read_split(members[0])) if p == "test"]
    write_split(out_dir, records + test_records, ["val"] * len(records) + ["test"] * len(test_records))
    write_members(out_dir, members)
    _, member_data = read_config(members[0])
    write_config(out_dir, config, {
        "path": member_data.get("path"), "layout": member_data.get("layout"),
        "fingerprint": member_data.get("fingerprint"), "num_found": member_data.get("num_found"),
        "num_used": len(records) + len(test_records), "num_folds": len(members),
        "parts": {"val": _part_summary(records), "test": _part_summary(test_records)}})
    ensemble = load_run(out_dir)
    prob_malignant = ensemble.calibrated(prob_model)
    write_csv_atomic(out_dir / OOF_FILE, OOF_COLUMNS, (
        (r.source, r.group, "" if r.x is None else r.x, "" if r.y is None else r.y, r.label, k,
         repr(float(m)), repr(float(p)))
        for r, k, m, p in zip(records, fold_of, prob_model, prob_malignant)), defuse_formulas=True)
    # The out-of-fold probabilities are the ensemble's validation predictions: the report and
    # a target-sensitivity threshold read them from here instead of predicting again.
    write_predictions(out_dir / "val_predictions.csv", records, prob_model, prob_malignant,
                      ensemble.model_file, fingerprint(records, config.image_size))
    metrics = summarize(fold_runs, scored, labels, prob_malignant, np.array([r.group for r in records]),
                        fold_of, ensemble.calibration, seed=config.seed)
    metrics["calibration"] = {k: calibration[k] for k in ("temperature", "prior_shift", "threshold",
                                                          "threshold_method", "val_ece_before", "val_ece_after")}
    write_json_atomic(out_dir / CV_METRICS_FILE, metrics)
    write_json_atomic(out_dir / "metadata.json", {
        "status": "complete", "kind": "cross-validation", "num_folds": len(members), "seed": config.seed,
        "training_seconds": round(sum(read_json(m / "metadata.json").get("training_seconds") or 0
                                      for m in members), 1), **environment()})
    pooled = metrics["out_of_fold"]
    log.info("out of fold: ROC-AUC %.4f, accuracy %.4f, ECE %.4f (temperature %.3f, threshold %.3f)",
             pooled["roc_auc"]["point"], pooled["accuracy"]["point"], metrics["calibration"]["val_ece_after"],
             calibration["temperature"], calibration["threshold"])


def _part_summary(records) -> dict:
    return {"images": len(records), "malignant": sum(r.label for r in records),
            "groups": len({r.group for r in records})}
