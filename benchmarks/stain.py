#!/usr/bin/env python3
"""Which stain handling serves best on another lab's staining: patch-level on the real IDC
patches of `../shared/data/idc-sample`, held-out patients as they are and re-stained.

Two folds by patient (`--folds 1`: the first only). Only 4 patients hold benign patches; each
fold tests on one of the two complete patients who are not trained on (10253 or 8865) plus two
malignant-only patients, and validates on the other fold's test patients; both folds train on
8864, 8913 and nine malignant-only patients. For each variant (stain normalization and stain
augmentation settings on top of the recipe) and fold, `histoclass.train` runs with that split,
then `Run.predict` scores the test patients' patches as they are, and re-stained by
`synth.restain.restain_like_another_lab` as two other labs would (seeds 0 and 1; their
predictions pooled). Predictions of the folds are pooled; balanced accuracy and F1 at each
run's own threshold, ROC-AUC, the drop from as-is to re-stained, the mean change of
prob_malignant and the share of labels flipped by re-staining are printed (a Markdown table)
and written to benchmarks/stain.json.

    python benchmarks/stain.py --work /tmp/stain-bench [--recipe strong] [--model original_cnn]
                               [--epochs 3] [--tta] [--folds 1|2] [--only NAME ...]

Every variant's fold is a run folder under --work; a finished one is not trained again.
"""
from __future__ import annotations

import argparse
import csv
import json
import logging
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "idc-sample"
OUT_JSON = ROOT / "benchmarks" / "stain.json"
LAB_SEEDS = (0, 1)
TRAIN_PATIENTS = ("8864", "8913", "8917", "8918", "8955", "8956", "8959", "8974", "8980", "8984", "9023")
PARTS = (("10253", "8950", "8951"), ("8865", "8957", "9022"))  # fold k tests on PARTS[k], validates on the other

# name: TrainConfig settings on top of the recipe.
VARIANTS: dict[str, dict] = {
    "none": dict(stain_normalization="none"),
    "macenko": dict(stain_normalization="macenko"),
    "reinhard": dict(stain_normalization="reinhard"),
    "stain-augmentation-0.3": dict(stain_augmentation=0.3),
    "macenko+stain-augmentation-0.3": dict(stain_normalization="macenko", stain_augmentation=0.3),
}
METRICS = ("balanced_accuracy", "f1", "roc_auc")

log = logging.getLogger("stain")


def write_split(path: Path, fold: int) -> None:
    rows = [(p, "train") for p in TRAIN_PATIENTS]
    rows += [(p, "test") for p in PARTS[fold]] + [(p, "val") for p in PARTS[1 - fold]]
    with open(path, "w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows([("group", "split"), *rows])


def test_images(patients: tuple[str, ...], size: int) -> tuple[list[np.ndarray], np.ndarray]:
    """The held-out patients' patches at their own size (re-staining comes before resizing)."""
    from histoclass.data.decode import decode_bytes, read_image_bytes
    with open(DATA / "patches.csv", newline="", encoding="utf-8") as handle:
        rows = [r for r in csv.DictReader(handle) if r["patient"] in patients]
    images = [decode_bytes(read_image_bytes(str(DATA / r["path"]))) for r in rows]
    return images, np.array([r["label"] == "malignant" for r in rows], dtype=int)


def score(run, images: list[np.ndarray]) -> np.ndarray:
    from histoclass.synth.restain import restain_like_another_lab
    as_is = run.predict(images)
    restained = np.concatenate([run.predict([restain_like_another_lab(image, seed=lab) for image in images])
                                for lab in LAB_SEEDS])
    return as_is, restained


def evaluate_variant(name: str, recipe: str, settings: dict, work: Path, num_folds: int) -> dict:
    import histoclass
    from histoclass.evaluation.metrics import classification_metrics
    pooled = {"as_is": ([], [], []), "restained": ([], [], [])}
    changes, flips = [], []  # per re-stained patch: |prob - prob as is|, label changed
    seconds = 0.0
    for fold in range(num_folds):
        folder = work / name / f"fold-{fold}"
        if not (folder / "calibration.json").is_file():
            write_split(work / f"split-{fold}.csv", fold)
            started = time.perf_counter()
            histoclass.train(DATA, folder, recipe, split_file=work / f"split-{fold}.csv",
                             cache_dir=work / "cache", **settings)
            seconds += time.perf_counter() - started
        run = histoclass.load_run(folder)
        images, labels = test_images(PARTS[fold], run.image_size)
        as_is, restained = score(run, images)
        changes.append(np.abs(restained - np.tile(as_is, len(LAB_SEEDS))))
        flips.append(run.labels(restained) != np.tile(run.labels(as_is), len(LAB_SEEDS)))
        for key, prob, y in (("as_is", as_is, labels), ("restained", restained, np.tile(labels, len(LAB_SEEDS)))):
            pooled[key][0].append(y)
            pooled[key][1].append(prob)
            pooled[key][2].append(np.full(len(y), run.threshold))
    result = {"name": name, "recipe": recipe, "settings": settings, "folds": num_folds,
              "test_patients": sorted(p for part in PARTS[:num_folds] for p in part),
              "training_seconds": round(seconds, 1)}
    for key, (ys, probs, thresholds) in pooled.items():
        y, prob, threshold = np.concatenate(ys), np.concatenate(probs), np.concatenate(thresholds)
        # Each fold's patches at its own run's threshold: 1 at or above it.
        labels_at = (prob >= threshold).astype(float)
        metrics = classification_metrics(y, labels_at, threshold=0.5)
        metrics["roc_auc"] = classification_metrics(y, prob)["roc_auc"]
        result[key] = {m: metrics[m] for m in METRICS}
    result["drop"] = {m: result["as_is"][m] - result["restained"][m] for m in METRICS}
    result["mean_prob_change"] = float(np.concatenate(changes).mean())
    result["label_flips"] = float(np.concatenate(flips).mean())
    return result


def print_table(rows: list[dict]) -> None:
    print("| variant | BAC as-is | BAC re-stained | drop | F1 as-is | F1 re-stained | drop | AUC as-is | "
          "AUC re-stained | drop | mean prob change | labels flipped |")
    print("|---" * 13 + "|")
    for row in rows:
        cells = []
        for metric in METRICS:
            cells += [row["as_is"][metric], row["restained"][metric], row["drop"][metric]]
        cells += [row.get("mean_prob_change", float("nan")), row.get("label_flips", float("nan"))]
        print(f"| {row['name']} | " + " | ".join(f"{value:.3f}" for value in cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--recipe", default="strong")
    parser.add_argument("--model", default="original_cnn", help="the recipe's model is too slow on 2 CPUs")
    parser.add_argument("--epochs", type=int, default=3, help="the recipe's best epoch on idc-sample is "
                        "the first or second; more only costs time")
    parser.add_argument("--tta", action="store_true", help="with the recipe's test-time augmentation "
                        "(8 views: 8 times the scoring time)")
    parser.add_argument("--folds", type=int, choices=(1, 2), default=2, help="1: only the first fold")
    parser.add_argument("--only", nargs="*", default=None, help="variant names (default: all)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    args.work.mkdir(parents=True, exist_ok=True)
    saved = {row["name"]: row for row in json.loads(OUT_JSON.read_text())["rows"]} if OUT_JSON.is_file() else {}
    for name in args.only or VARIANTS:
        settings = {**VARIANTS[name], "model": args.model, "num_epochs": args.epochs,
                    "test_time_augmentation": args.tta}
        row = evaluate_variant(name, args.recipe, settings, args.work, args.folds)
        saved[name] = row
        OUT_JSON.write_text(json.dumps({"rows": list(saved.values())}, indent=1) + "\n")
        log.info("%s: %s", name, json.dumps({k: row[k] for k in ("as_is", "restained", "drop")}))
    print_table([saved[name] for name in VARIANTS if name in saved])


if __name__ == "__main__":
    main()
