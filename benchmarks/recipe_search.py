"""Recipe search on BreastMNIST measured by 5-fold cross-validation over train + val only
(the official test split is sealed and never looked at here). Prints the table of docs/recipe.md
and writes benchmarks/recipe_search.json after each variant.

    python benchmarks/recipe_search.py --work /tmp/recipe-search [--only NAME ...] [--folds 5]

Each variant is an ordinary `histoclass cv` folder under --work, so an interrupted search
continues where it stopped (finished folds are not trained again).
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "breastmnist" / "breastmnist_trainval.npz"

# name: (recipe, overrides). In the order they were run; the cheap reference first.
VARIANTS: dict[str, tuple[str, dict]] = {
    "original-50px": ("original", dict(image_size=50)),
    "strong_no_aug-50px": ("strong_no_aug", dict(image_size=50)),
    "strong_no_aug-64px": ("strong_no_aug", dict(image_size=64)),
    "ultrasound-aug-50px": ("strong_no_aug", dict(image_size=50, augmentation="ultrasound")),
    "ultrasound-aug-64px": ("strong_no_aug", dict(image_size=64, augmentation="ultrasound")),
    "ultrasound-aug-50px-60ep-lr1e-3": ("strong_no_aug", dict(image_size=50, augmentation="ultrasound",
                                                              num_epochs=60, learning_rate=1e-3, patience=15)),
    "strong_no_aug-50px-lite": ("strong_no_aug", dict(image_size=50, model="histo_resnet_lite")),
    "strong_no_aug-50px-lr1e-3": ("strong_no_aug", dict(image_size=50, learning_rate=1e-3)),
}


def row(name: str, folder: Path, seconds: float) -> dict:
    from histoclass.fileio import read_json
    metrics = read_json(folder / "cv_metrics.json")
    spread, oof = metrics["mean_and_std"], metrics["out_of_fold"]
    epochs = [read_json(folder / f"fold-{k}" / "metadata.json").get("epochs_done") for k in range(metrics["num_folds"])]
    return {"variant": name, "fold_auc_mean": spread["roc_auc"]["mean"], "fold_auc_std": spread["roc_auc"]["std"],
            "fold_acc_mean": spread["accuracy"]["mean"], "fold_acc_std": spread["accuracy"]["std"],
            "oof_auc": oof["roc_auc"]["point"], "oof_auc_low": oof["roc_auc"]["low"],
            "oof_auc_high": oof["roc_auc"]["high"], "oof_accuracy": oof["accuracy"]["point"],
            "oof_balanced_accuracy": oof["balanced_accuracy"]["point"], "oof_ece": oof["ece"],
            "mean_epochs": float(np.mean(epochs)), "seconds": round(seconds)}


def table(rows: list[dict]) -> str:
    lines = ["| variant | fold AUC mean ± sd | fold accuracy mean ± sd | OOF AUC [95 % CI] | OOF accuracy | "
             "OOF bal. accuracy | OOF ECE | epochs | seconds |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['variant']} | {r['fold_auc_mean']:.3f} ± {r['fold_auc_std']:.3f} | "
                     f"{r['fold_acc_mean']:.3f} ± {r['fold_acc_std']:.3f} | {r['oof_auc']:.3f} "
                     f"[{r['oof_auc_low']:.3f}, {r['oof_auc_high']:.3f}] | {r['oof_accuracy']:.3f} | "
                     f"{r['oof_balanced_accuracy']:.3f} | {r['oof_ece']:.3f} | {r['mean_epochs']:.1f} | {r['seconds']} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--work", type=Path, default=Path("/tmp/recipe-search"))
    parser.add_argument("--only", nargs="*", default=None)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for noisy in ("histoclass.training.callbacks", "tensorflow", "absl"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from histoclass.config import config_for_recipe
    from histoclass.crossval.cv import cross_validate
    out_json = ROOT / "benchmarks" / "recipe_search.json"
    rows = json.loads(out_json.read_text())["rows"] if out_json.is_file() else []
    for name, (recipe, overrides) in VARIANTS.items():
        if args.only is not None and name not in args.only:
            continue
        config = config_for_recipe(recipe, test_fraction=0.0, seed=args.seed, **overrides)
        started = time.perf_counter()
        folder = cross_validate(DATA, args.work / name, config, num_folds=args.folds,
                                cache_dir=args.work / "cache", progress=False)
        rows = [r for r in rows if r["variant"] != name] + [row(name, folder, time.perf_counter() - started)]
        out_json.write_text(json.dumps({"data": str(DATA), "folds": args.folds, "seed": args.seed,
                                        "rows": rows}, indent=1))
        print(table(rows), flush=True)


if __name__ == "__main__":
    main()
