#!/usr/bin/env python3
"""Stain normalization per patient: what it costs and whether it helps, on real IDC patients.

Two parts, each printing a Markdown table (and written to benchmarks/stain.json):

`timing`: 256 real idc-sample patches (8 patients) with the 8 test-time views. Before: the old
in-model layer (Macenko or Reinhard per 50 px tile, inside the model, so run once per view; read
from git, `git show <rev>:src/histoclass/models/stain.py`), called as the model called it. After:
`stain.context.StainNormalizer` once on the uint8 patches, before the views: per patient (fit on
the patient's patches, apply) and per tile (no context).

`cv`: one fold of a patient-grouped 5-fold split of the 153 idc-sample patients (fold K tests,
fold (K + 1) % 5 validates, the rest trains; `--test-fold K`, default 0), the original CNN of
model.py under the recipe (default strong, 3 epochs, no test-time views), 3 seeds, for none /
macenko / reinhard. The test patients are scored as they are and re-stained as another lab would
(`synth.restain`, one lab per patient, seeds 0 and 1 alternating), both normalized per patient (`Run.predict(..., groups=patients)`).
Balanced accuracy at each run's threshold and ROC-AUC, pooled over the test patches, as the mean
and spread over seeds.

    nice -n 10 python benchmarks/stain.py timing [--before-rev main]
    nice -n 10 python benchmarks/stain.py cv --work /tmp/stain-cv [--seeds 0 1 2] [--epochs 3] [--test-fold 0]

A finished run folder under --work is not trained again.
"""
from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import logging
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "idc-sample"
OUT_JSON = ROOT / "benchmarks" / "stain.json"
METHODS = ("none", "macenko", "reinhard")
log = logging.getLogger("stain")


def read_rows() -> list[dict]:
    with open(DATA / "patches.csv", newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def load(rows: list[dict], size: int = 50) -> np.ndarray:
    from histoclass.data.decode import decode_bytes, fit_to_size, read_image_bytes
    return np.stack([fit_to_size(decode_bytes(read_image_bytes(str(DATA / r["path"]))), size)[0] for r in rows])


def best_of(function, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return min(times)


# ---- timing --------------------------------------------------------------------------------

def old_layer_module(rev: str):
    """The removed in-model layer, as it was at `rev`."""
    source = subprocess.run(["git", "show", f"{rev}:src/histoclass/models/stain.py"], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout
    source = source.replace("from ..errors import HistoclassError", "from histoclass.errors import HistoclassError")
    path = Path(tempfile.mkdtemp()) / "old_stain.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("old_stain", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def timing(rev: str) -> list[dict]:
    import keras
    from histoclass.inference.probabilities import dihedral_views
    from histoclass.stain.context import StainNormalizer, fit_reference
    rows = read_rows()
    patients = sorted({r["patient"] for r in rows if r["patient"] in
                       ("10253", "8913", "8865", "9022", "10262", "10264", "8957", "8950")})
    chosen = [r for p in patients for r in [r for r in rows if r["patient"] == p][:32]]
    images, groups = load(chosen), [r["patient"] for r in chosen]
    reference_images = load(rows[::40][:512])
    old = old_layer_module(rev)
    results = []
    for method in ("macenko", "reinhard"):
        inputs = keras.Input((50, 50, 3))
        x = keras.layers.Rescaling(1 / 255)(inputs)
        model = keras.Model(inputs, old.StainNormalization(method, old.fit_stain_target(method, reference_images))(x))
        views = [np.ascontiguousarray(v) for v in dihedral_views(images)]
        model.predict_on_batch(views[0])  # traced once, as a loaded model is
        before = best_of(lambda: [model.predict_on_batch(v) for v in views])
        normalizer = StainNormalizer(fit_reference(method, reference_images))
        per_patient = best_of(lambda: normalizer.normalize(images, groups))
        per_tile = best_of(lambda: normalizer.normalize(images))
        results.append({"method": method, "patches": len(images), "views": len(views),
                        "before_in_model_per_view_s": round(before, 4),
                        "after_per_patient_once_s": round(per_patient, 4),
                        "after_per_tile_once_s": round(per_tile, 4)})
    print("| method | 256 patches, 8 views: before (in the model, per view) | after, per patient, once "
          "| after, per tile, once |")
    print("|---|---|---|---|")
    for r in results:
        print(f"| {r['method']} | {r['before_in_model_per_view_s']:.3f} s | {r['after_per_patient_once_s']:.3f} s "
              f"| {r['after_per_tile_once_s']:.3f} s |")
    return results


# ---- patient-level comparison --------------------------------------------------------------

def write_split(path: Path, rows: list[dict], seed: int = 0, test_fold: int = 0) -> tuple[list[str], list[str]]:
    from histoclass.data.splits import fold_by_group
    if not 0 <= test_fold < 5:
        raise ValueError(f"--test-fold must be 0 to 4 (5 folds), not {test_fold}")
    val_fold = (test_fold + 1) % 5
    labels = np.array([r["label"] == "malignant" for r in rows], dtype=int)
    groups = np.array([r["patient"] for r in rows], dtype=object)
    folds = fold_by_group(labels, groups, 5, seed=seed, balance="images")  # as its results were made
    part_of = {}
    for group, fold in zip(groups, folds):
        part_of[group] = "test" if fold == test_fold else "val" if fold == val_fold else "train"
    path.write_text("group,split\n" + "".join(f"{g},{p}\n" for g, p in sorted(part_of.items())))
    return sorted(g for g, p in part_of.items() if p == "test"), sorted(g for g, p in part_of.items() if p == "val")


def restained_by_patient(images: list[np.ndarray], groups: list[str]) -> list[np.ndarray]:
    from histoclass.synth.restain import restain_like_another_lab
    labs = {g: i % 2 for i, g in enumerate(sorted(set(groups)))}
    return [restain_like_another_lab(image, seed=labs[g]) for image, g in zip(images, groups)]


def cv(work: Path, recipe: str, seeds: list[int], epochs: int, methods: list[str],
       test_fold: int = 0) -> list[dict]:
    import histoclass
    from histoclass.data.decode import BadImage, decode_bytes, read_image_bytes
    from histoclass.evaluation.metrics import classification_metrics
    work.mkdir(parents=True, exist_ok=True)
    rows = read_rows()
    split = work / "split.csv"
    test_patients, val_patients = write_split(split, rows, test_fold=test_fold)
    test_rows, images = [], []
    for row in (r for r in rows if r["patient"] in set(test_patients)):
        try:
            images.append(decode_bytes(read_image_bytes(str(DATA / row["path"]))))
        except BadImage:  # a sliver at the slide's edge: histoclass skips it too
            continue
        test_rows.append(row)
    groups = [r["patient"] for r in test_rows]
    labels = np.array([r["label"] == "malignant" for r in test_rows], dtype=int)
    restained = restained_by_patient(images, groups)
    log.info("test: %d patients, %d patches; validation: %d patients", len(test_patients), len(images),
             len(val_patients))
    per_method: dict[str, list[dict]] = {method: [] for method in methods}
    for seed in seeds:  # every method's first seed before any second: a cut-short run still compares
        for method in methods:
            folder = work / f"{method}-seed{seed}"
            started = time.perf_counter()
            if not (folder / "calibration.json").is_file():
                histoclass.train(DATA, folder, recipe, split_file=split, cache_dir=work / "cache", seed=seed,
                                 model="original_cnn", num_epochs=epochs, test_time_augmentation=False,
                                 stain_normalization=method, progress=False)
            seconds = time.perf_counter() - started
            run = histoclass.load_run(folder)
            scores = {"seed": seed, "seconds": round(seconds, 1)}
            for name, batch in (("as_is", images), ("restained", restained)):
                prob = run.predict(batch, groups=groups)
                metrics = classification_metrics(labels, prob, run.threshold)
                scores[name] = {"balanced_accuracy": metrics["balanced_accuracy"], "roc_auc": metrics["roc_auc"]}
            log.info("%s seed %d: %s", method, seed, json.dumps(scores))
            per_method[method].append(scores)
    results = []
    for method, per_seed in per_method.items():
        summary = {"method": method, "test_fold": test_fold, "recipe": recipe, "model": "original_cnn",
                   "epochs": epochs, "seeds": per_seed}
        for name in ("as_is", "restained"):
            for metric in ("balanced_accuracy", "roc_auc"):
                values = [s[name][metric] for s in per_seed]
                summary[f"{name}_{metric}"] = [round(float(np.mean(values)), 4), round(float(np.std(values)), 4)]
        results.append(summary)
    print(f"| fold {test_fold}: {len(test_patients)} test patients ({len(images)} patches), {len(seeds)} seeds "
          "| BAC as is | AUC as is | BAC re-stained | AUC re-stained |")
    print("|---|---|---|---|---|")
    for r in results:
        cells = [r[f"{n}_{m}"] for n in ("as_is", "restained") for m in ("balanced_accuracy", "roc_auc")]
        name = "none" if r["method"] == "none" else f"{r['method']}, per patient"
        print(f"| {name} | " + " | ".join(f"{mean:.3f} ± {sd:.3f}" for mean, sd in cells) + " |")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("part", choices=("timing", "cv"))
    parser.add_argument("--before-rev", default="main", help="git revision that still has models/stain.py")
    parser.add_argument("--work", type=Path, default=Path("/tmp/stain-cv"))
    parser.add_argument("--recipe", default="strong")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--test-fold", type=int, default=0, choices=range(5),
                        help="fold that tests (0-4); the next fold, mod 5, validates")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    saved = json.loads(OUT_JSON.read_text()) if OUT_JSON.is_file() else {}
    if "rows" in saved:  # the previous benchmark's format (in-model layer): kept under its own key
        saved = {"before_per_patient_normalization": saved}
    if args.part == "timing":
        saved["timing"] = timing(args.before_rev)
    else:
        key = "cv" if args.test_fold == 0 else f"cv_test_fold_{args.test_fold}"  # fold 0 keeps its old key
        saved[key] = cv(args.work, args.recipe, args.seeds, args.epochs, args.methods, args.test_fold)
    OUT_JSON.write_text(json.dumps(saved, indent=1) + "\n")


if __name__ == "__main__":
    main()
