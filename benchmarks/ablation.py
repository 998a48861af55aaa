#!/usr/bin/env python3
"""The measurements behind the strong recipe: validation metrics with and without each part.

    python benchmarks/ablation.py [--sets lung,breastmnist] [--variants strong,original,...] [--folds 3]

Validation data only, the test parts are never looked at:
- lung: LC25000 lung, 65 % / 15 % of the source-tile groups for train / validation (the 20 %
  that benchmarks/run.py tests on are left out);
- breastmnist: k-fold cross-validation over the official train + val images (the official test
  split is held back).
For each variant: validation ROC-AUC of the best epoch without and with 8-view test-time
augmentation, validation accuracy at 0.5 after temperature scaling, ECE after temperature,
training images/s. Writes benchmarks/ablation.json and prints a table.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"

# name: (recipe, TrainConfig overrides, augmentation components of "tissue" or None)
VARIANTS = {
    "strong": ("strong", {}, None),
    "original": ("original", {}, None),
    "strong-no-augmentation": ("strong", {"augmentation": "none"}, None),
    "strong-dihedral-only": ("strong", {"augmentation": "dihedral"}, None),
    "strong-lite-model": ("strong", {"model": "histo_resnet_lite"}, None),
    "strong-plus-zoom": ("strong", {}, ("dihedral", "stain", "zoom", "blur")),
    "strong-no-stain-blur": ("strong", {}, ("dihedral",)),
    "strong-label-smoothing-0.1": ("strong", {"label_smoothing": 0.1}, None),
    "strong-adam-constant-lr": ("strong", {"optimizer": "adam", "lr_schedule": "constant",
                                           "learning_rate": 1e-3, "weight_decay": 0.0}, None),
    "strong-batch-128-30-epochs": ("strong", {"batch_size": 128, "num_epochs": 30, "patience": 8}, None),
    "original-cnn-with-strong-training": ("strong", {"model": "original_cnn"}, None),
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sets", default="lung,breastmnist")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--folds", type=int, default=3, help="BreastMNIST cross-validation folds")
    parser.add_argument("--lung-epochs", type=int, default=12, help="most epochs on lung (time)")
    parser.add_argument("--work", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "histoclass-ablation")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "ablation.json")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    results = json.loads(args.out.read_text()) if args.out.is_file() else {}
    for set_name in args.sets.split(","):
        for variant in args.variants.split(","):
            if variant not in VARIANTS:
                parser.error(f"unknown variant {variant!r}; choose from {', '.join(VARIANTS)}")
            started = time.perf_counter()
            if set_name == "lung":
                folds = [_run_variant(variant, SHARED / "lc25000-lung", _lung_split(args.work),
                                      args.work / "lung" / variant, args.work / "cache",
                                      {"num_epochs": args.lung_epochs})]
            else:
                folds = [_run_variant(variant, SHARED / "breastmnist" / "breastmnist_trainval.npz", split,
                                      args.work / "breastmnist" / variant / f"fold{k}", args.work / "cache", {})
                         for k, split in enumerate(_breastmnist_folds(args.work, args.folds))]
            summary = {key: round(float(np.mean([f[key] for f in folds])), 4) for key in folds[0]
                       if isinstance(folds[0][key], (int, float))}
            summary["folds"] = folds
            summary["seconds"] = round(time.perf_counter() - started, 1)
            results.setdefault(set_name, {})[variant] = summary
            args.out.write_text(json.dumps(results, indent=2))
            print(f"{set_name:12} {variant:32} " + " ".join(
                f"{k}={summary[k]}" for k in ("val_auc", "val_auc_tta", "val_accuracy", "val_errors",
                                               "val_ece_after", "train_img_per_s", "epochs_done")),
                  flush=True)
    print(format_table(results))
    return 0


def _run_variant(variant: str, data: Path, split_file: Path, run_dir: Path, cache_dir: Path,
                 overrides: dict) -> dict:
    import dataclasses

    import histoclass
    from histoclass.config import config_for_recipe
    from histoclass.evaluation.calibration import expected_calibration_error
    from histoclass.models import augment
    from histoclass.runs.folder import read_history

    recipe, changes, components = VARIANTS[variant]
    config = config_for_recipe(recipe, **{**changes, **overrides})
    saved = augment.KINDS["tissue"]
    if components is not None:
        augment.KINDS["tissue"] = components
    if run_dir.exists():
        shutil.rmtree(run_dir)
    try:
        run = histoclass.train(data, run_dir, recipe, split_file=split_file, cache_dir=cache_dir,
                               **{**changes, **overrides})
    finally:
        augment.KINDS["tissue"] = saved
    from sklearn.metrics import roc_auc_score
    val = run.score(part="val", cache_dir=cache_dir)  # the run's own probabilities, stored at training
    labels, calibrated = val.labels, val.prob_malignant
    by_tta = {}
    for tta in (False, True):  # both views of the model, whatever the run uses
        run.config = dataclasses.replace(config, test_time_augmentation=tta)
        by_tta[tta] = run.model_probabilities(val.images.images, val.images.rows)
    plain, tta = by_tta[False], by_tta[True]
    history = read_history(run_dir)
    seconds = sum(row["seconds"] for row in history)
    num_train = json.loads((run_dir / "config.json").read_text())["data"]["parts"]["train"]["images"]
    return {"val_auc": float(roc_auc_score(labels, plain)), "val_auc_tta": float(roc_auc_score(labels, tta)),
            "val_accuracy": float(np.mean((calibrated >= 0.5) == labels)),
            "val_errors": int(np.sum((calibrated >= 0.5) != labels)),
            "val_ece_after": float(expected_calibration_error(labels, calibrated)),
            "train_img_per_s": num_train * len(history) / seconds, "epochs_done": len(history),
            "best_epoch": int(json.loads((run_dir / "metadata.json").read_text())["best_epoch"])}


def _lung_split(work: Path) -> Path:
    """Group split with the same seed and fractions as benchmarks/run.py; its test part is dropped."""
    from histoclass.data.splits import split_by_group
    path = work / "lung_split.csv"
    if path.is_file():
        return path
    rows = list(csv.DictReader(open(SHARED / "lc25000-lung" / "manifest.csv", newline="")))
    groups = np.array([r["group"] for r in rows], dtype=object)
    labels = np.array([1 if r["label"] == "malignant" else 0 for r in rows])
    parts = split_by_group(labels, groups, (0.65, 0.15, 0.20), seed=0, balance="images")  # as its results were made
    work.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["group", "split"])
        writer.writerows(sorted((g, p) for g, p in dict(zip(groups, parts)).items() if p != "test"))
    return path


def _breastmnist_folds(work: Path, num_folds: int) -> list[Path]:
    """Stratified folds over train + val; groups are the npz records' `<part>-<index>` names."""
    with np.load(SHARED / "breastmnist" / "breastmnist_trainval.npz") as arrays:
        names = [f"{part}-{i}" for part in ("train", "val") for i in range(len(arrays[f"{part}_labels"]))]
        labels = np.concatenate([arrays["train_labels"].reshape(-1), arrays["val_labels"].reshape(-1)])
    rng = np.random.default_rng(0)
    fold_of = np.empty(len(names), dtype=int)
    for label in (0, 1):
        members = rng.permutation(np.flatnonzero(labels == label))
        fold_of[members] = np.arange(len(members)) % num_folds
    paths = []
    for k in range(num_folds):
        path = work / f"breastmnist_fold{k}_of{num_folds}.csv"
        work.mkdir(parents=True, exist_ok=True)
        with open(path, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["group", "split"])
            writer.writerows((n, "val" if f == k else "train") for n, f in zip(names, fold_of))
        paths.append(path)
    return paths


def format_table(results: dict) -> str:
    columns = ("val_auc", "val_auc_tta", "val_accuracy", "val_errors", "val_ece_after", "train_img_per_s",
               "epochs_done")
    lines = []
    for set_name, variants in results.items():
        lines.append(f"\n{set_name}")
        lines.append(f"{'variant':34}" + "".join(f"{c:>16}" for c in columns))
        for variant, summary in variants.items():
            lines.append(f"{variant:34}" + "".join(f"{summary.get(c, float('nan')):>16.4g}" for c in columns))
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
