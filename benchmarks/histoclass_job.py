"""One histoclass side of the benchmark, run in its own process so its peak memory is its own.

    python benchmarks/histoclass_job.py job SPEC.json RESULT.json     # decode, train, evaluate
    python benchmarks/histoclass_job.py reload SPEC.json RESULT.json  # a second run's start

SPEC holds: data, split_file (or null), cache_dir, work_dir, recipe, overrides (TrainConfig
settings), target_auc (the reference's final AUC, or null). The job decodes into an empty cache
(decode files/s), trains, evaluates the test part, measures inference speed with and without
test-time augmentation and writes RESULT. The cached reload is timed by `reload` below, in a
fresh process, since that is what a second run pays.
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from pathlib import Path


def run_job(spec: dict) -> dict:
    import numpy as np

    import histoclass
    from histoclass.config import config_for_recipe
    from histoclass.data import discover
    from histoclass.data.cache import load_images
    from histoclass.evaluation.calibration import expected_calibration_error
    from histoclass.evaluation.metrics import classification_metrics
    from histoclass.runs.folder import read_history, read_split

    config = config_for_recipe(spec["recipe"], **spec.get("overrides", {}))
    work = Path(spec["work_dir"])
    cache_dir = Path(spec["cache_dir"])

    started = time.perf_counter()
    dataset = discover(spec["data"])
    discover_s = time.perf_counter() - started
    started = time.perf_counter()
    decoded = load_images(dataset.records, config.image_size, cache_dir, progress=False)
    decode_s = time.perf_counter() - started
    del decoded

    run_dir = work / "run"
    started = time.perf_counter()
    run = histoclass.train(spec["data"], run_dir, config.recipe, split_file=spec.get("split_file"),
                           cache_dir=cache_dir, **spec.get("overrides", {}))
    train_total_s = time.perf_counter() - started

    history = read_history(run_dir)
    parts_info = json.loads((run_dir / "config.json").read_text())["data"]["parts"]
    num_train = parts_info["train"]["images"]
    epoch_seconds = [row["seconds"] for row in history]
    train_s = sum(epoch_seconds)
    time_to_target = None
    if spec.get("target_auc") is not None:
        elapsed = 0.0
        for row in history:
            elapsed += row["seconds"]
            if row.get("val_auc", float("nan")) >= spec["target_auc"]:
                time_to_target = elapsed
                break

    records, parts = read_split(run_dir)
    test_records = [r for r, p in zip(records, parts) if p == "test"]
    max_test = spec.get("max_test")
    if max_test and len(test_records) > max_test:  # a seeded sample, to bound 8-view TTA's time
        keep = np.sort(np.random.default_rng(0).choice(len(test_records), max_test, replace=False))
        test_records = [test_records[i] for i in keep]
    decoded = load_images(test_records, config.image_size, cache_dir, progress=False)
    test_images = np.asarray(decoded.images)
    labels = np.array([r.label for r in test_records])
    timings = {}
    probs = {}
    for tta in (False, True):  # the run's own setting is what Run.predict uses; both are timed
        run.config = dataclasses.replace(config, test_time_augmentation=tta)
        run.model_probabilities(test_images[:512])  # warm-up
        started = time.perf_counter()
        probs[tta] = run.model_probabilities(test_images)
        timings[tta] = len(labels) / (time.perf_counter() - started)
    run.config = config
    raw = probs[config.test_time_augmentation]
    calibrated = run.calibrated(raw)
    metrics = classification_metrics(labels, calibrated, run.threshold)
    calibration = json.loads((run_dir / "calibration.json").read_text())
    return {
        "recipe": config.recipe, "model": config.model, "batch_size": config.batch_size,
        "num_found": len(dataset.records), "n_train": num_train, "n_val": parts_info["val"]["images"],
        "n_test": int(len(labels)), "epochs_done": len(history),
        "best_epoch": int(max(history, key=lambda r: r.get("val_auc", -1))["epoch"]) if history else None,
        "discover_s": round(discover_s, 2), "decode_s": round(decode_s, 2),
        "decode_files_per_s": round(len(dataset.records) / decode_s, 1),
        "train_s": round(train_s, 2), "train_total_s": round(train_total_s, 2),
        "train_img_per_s": round(num_train * len(history) / train_s, 1) if train_s else None,
        "time_to_target_auc_s": None if time_to_target is None else round(time_to_target, 2),
        "predict_img_per_s": round(timings[False], 1),
        "predict_tta_img_per_s": round(timings[True], 1),
        "test_time_augmentation": config.test_time_augmentation,
        "threshold": run.threshold, "temperature": run.temperature,
        "val_ece_after": calibration.get("val_ece_after"),
        "test_ece_raw": expected_calibration_error(labels, raw),
        "test_ece_calibrated": expected_calibration_error(labels, calibrated),
        **{k: metrics[k] for k in ("accuracy", "precision", "recall", "f1", "balanced_accuracy", "roc_auc")},
        "test_errors": int(metrics["confusion_matrix"][0][1] + metrics["confusion_matrix"][1][0]),
        "val_auc_by_epoch": [round(r.get("val_auc", float("nan")), 4) for r in history],
        "tcmalloc": "tcmalloc" in os.environ.get("LD_PRELOAD", ""),
        "backend": os.environ.get("KERAS_BACKEND", "tensorflow"),
    }


def reload(spec: dict) -> dict:
    """A second run's start: discovery, then the decoded pixels from the cache (memory-mapped)."""
    from histoclass.config import config_for_recipe
    from histoclass.data import discover
    from histoclass.data.cache import load_images

    config = config_for_recipe(spec["recipe"], **spec.get("overrides", {}))
    started = time.perf_counter()
    dataset = discover(spec["data"])
    decoded = load_images(dataset.records, config.image_size, spec["cache_dir"], progress=False)
    if decoded.cache_file is None:
        raise RuntimeError("the cache was not used")
    checksum = int(decoded.images[-1].sum())  # touch the map: the data is really there
    return {"reload_s": round(time.perf_counter() - started, 2), "checksum": checksum}


def main() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    mode, spec_path, result_path = sys.argv[1:4]
    spec = json.loads(Path(spec_path).read_text())
    result = run_job(spec) if mode == "job" else reload(spec)
    Path(result_path).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
