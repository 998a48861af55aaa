#!/usr/bin/env python3
"""The IDC benchmark: patient-level cross-validation on real Kaggle IDC patches, each
histoclass recipe beside the plain reference script, by patient kind, over several seeds.

Data: `--data`, else $HISTOCLASS_IDC_DATA, else ../shared/data/idc-sample (153 patients: 21
complete, whose every patch is there, and 130 sampled, about 30 patches each). The patients are
cut into 5 folds by StratifiedGroupKFold (whole patients, each fold near the malignant share).
For each fold, seed and row:

- a histoclass recipe: `histoclass.train` on the other folds' patients with its default split
  of them (`test_fraction=0`: histoclass carves the validation patients and chooses the
  threshold and temperature on them), then `run.predict_files` on the held-out patients,
  labelled at the run's own threshold;
- `reference`: `../shared/reference/seed_reference.py` (the original project's Keras script,
  written plainly: 10 epochs, its own 20 % validation tail, threshold 0.5) run as it is on the
  same training patients, scored on the same held-out ones.

The held-out predictions of the folds are pooled (out of fold) and scored by patient kind
(`complete`, `sampled`, `all`; the kinds come from patients.csv, which only this folder has: a
user's copy of the Kaggle set gives the `all` rows only): balanced accuracy, F1 and ROC-AUC,
each the mean over seeds of the seed's pooled metric, with a 95 % percentile bootstrap interval
over patients (a resampled patient brings its predictions of every seed; each resample's metric
is the seeds' mean again) and the seeds' range. Two thresholds: the run's
own (Youden on its validation patients) and, with two folds or more, the out-of-fold one that
`histoclass cv` would choose (Youden on the other folds' pooled held-out predictions). Time:
each row's mean seconds per run and per epoch, and the epoch time against the reference
script's, measured in the same invocation (so on the same machine, under the same load).

    python benchmarks/idc.py [--rows reference original strong "strong-ema=strong:ema_momentum=0.998"]
                             [--seeds 0 1 2] [--folds 5] [--folds-subset 0,1] [--epochs N]
                             [--image-limit N] [--jobs N] [--work DIR] [--json PATH]

A row is `RECIPE` or `NAME=RECIPE[:SETTING=VALUE...]` (TrainConfig settings on top of the
recipe). Proxies for a busy machine: `--epochs` (most epochs of every row, the reference's
too), `--folds-subset` (which folds to run), `--image-limit` (at most N training images per
fold, the same seeded subset for every row and seed; the held-out patients are always scored
whole). `--jobs N` runs N trainings in parallel processes (with KERAS_BACKEND=jax each gets
1/N of the accelerator's memory). Every (row, fold, seed) is a folder under --work; a finished
one is reused when the same invocation is repeated. Writes a JSON of the results (--json).
"""
from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import csv
import hashlib
import importlib.util
import io
import json
import logging
import multiprocessing
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
DEFAULT_DATA = SHARED / "data" / "idc-sample"
REFERENCE = SHARED / "reference" / "seed_reference.py"
OUT_JSON = ROOT / "benchmarks" / "idc.json"
PUBLISHED = {  # BAC / F1 on held-out patients of the full Kaggle IDC set
    "Romero et al. ISBI 2019 (49 test patients)": {"balanced_accuracy": 0.890, "f1": 0.897},
    "Janowczyk & Madabhushi 2016": {"balanced_accuracy": 0.848, "f1": 0.765},
    "Cruz-Roa et al. 2014": {"balanced_accuracy": 0.843, "f1": 0.718},
}
METRICS = ("balanced_accuracy", "f1", "roc_auc")
KINDS = ("complete", "sampled", "all")

log = logging.getLogger("idc")


# ---- data and folds ----------------------------------------------------------------------------

MIN_SIDE = 8  # histoclass skips smaller images (Kaggle's slide-edge slivers, e.g. 50x2 px)


def add_offline_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of the scripts that rescore a work folder of this one offline
    (threshold_rules.py, seed_ensembles.py): the folder, and the data and folds it was run on."""
    parser.add_argument("work", type=Path, help="idc.py's folder of one configuration (--work/<key>)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--split-seed", type=int, default=0)


def offline_patches(args: argparse.Namespace) -> tuple[list[dict], dict[str, str], np.ndarray]:
    """(patches, patient kinds, fold of each patch) as the run of idc.py behind `args.work` had them."""
    logging.disable(logging.INFO)
    rows = read_patches(args.data)
    return rows, patient_kinds(args.data), make_folds(rows, args.folds, args.split_seed)


def read_patches(data: Path) -> list[dict]:
    """One row per patch (path relative to `data`, label 0/1, patient), as histoclass finds them,
    less the slivers it would skip: every row is scored on the same patches."""
    from PIL import Image
    from histoclass.data import discover
    dataset = discover(data)
    root = Path(dataset.root).resolve()
    rows, slivers = [], 0
    for record in dataset.records:
        with Image.open(record.source) as image:  # reads the header only
            if min(image.size) < MIN_SIDE:
                slivers += 1
                continue
        rows.append({"path": str(Path(record.source).resolve().relative_to(root)), "label": int(record.label),
                     "patient": str(record.group)})
    log.info("%d patches, %d slivers under %d px left out", len(rows), slivers, MIN_SIDE)
    return rows


def patient_kinds(data: Path) -> dict[str, str]:
    """patient -> complete | sampled from patients.csv (partial patients count as complete:
    nearly every patch is there); {} where the folder has none (a user's Kaggle copy)."""
    path = data / "patients.csv"
    if not path.is_file():
        return {}
    with open(path, newline="", encoding="utf-8") as handle:
        return {r["patient"]: "sampled" if r["kind"] == "sampled" else "complete" for r in csv.DictReader(handle)}


def make_folds(rows: list[dict], num_folds: int, seed: int) -> np.ndarray:
    """Fold of each patch: StratifiedGroupKFold by patient, shuffled with `seed`."""
    from sklearn.model_selection import StratifiedGroupKFold
    labels = np.array([r["label"] for r in rows])
    groups = np.array([r["patient"] for r in rows])
    folds = np.empty(len(rows), dtype=int)
    splitter = StratifiedGroupKFold(n_splits=num_folds, shuffle=True, random_state=seed)
    for k, (_, test) in enumerate(splitter.split(np.zeros(len(rows)), labels, groups)):
        folds[test] = k
    return folds


def training_rows(rows: list[dict], folds: np.ndarray, fold: int, image_limit: int | None) -> list[dict]:
    """The other folds' patches, or a seeded random `image_limit` of them (the same for every
    row and seed of the fold, so rows are compared on the same images)."""
    chosen = np.flatnonzero(folds != fold)
    if image_limit and image_limit < len(chosen):
        chosen = np.sort(np.random.default_rng([fold, 12345]).choice(chosen, image_limit, replace=False))
    return [rows[i] for i in chosen]


def copy_images(rows: list[dict], data: Path, work: Path) -> None:
    """The patches copied once under WORK/images: a manifest's images must lie below its folder."""
    for row in rows:
        target = work / "images" / row["path"]
        if not target.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(data / row["path"], target)


def write_manifest(path: Path, rows: list[dict], prefix: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(("path", "label", "group"))
        for row in rows:
            writer.writerow((f"{prefix}{row['path']}", "malignant" if row["label"] else "benign", row["patient"]))
    return path


def parse_row(spec: str) -> tuple[str, str, dict]:
    """`strong-ema=strong:ema_momentum=0.998` -> ("strong-ema", "strong", {"ema_momentum": 0.998})."""
    name, _, body = spec.partition("=") if "=" in spec.split(":")[0] else (spec.split(":")[0], "", spec)
    recipe, *pairs = body.split(":")
    settings = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"row {spec!r}: {pair!r} is not SETTING=VALUE")
        try:
            settings[key] = json.loads(value)
        except json.JSONDecodeError:
            settings[key] = value
    if recipe == "reference" and settings:
        raise SystemExit(f"row {spec!r}: the reference script takes no settings")
    if recipe != "reference":
        from histoclass.config import config_for_recipe
        config_for_recipe(recipe, **settings)  # an unknown recipe or setting fails here, not in a worker
    return name, recipe, settings


# ---- one training (a worker) -------------------------------------------------------------------

def run_job(job: dict) -> dict:
    """Trains one row on one fold with one seed and predicts its held-out patients; the result
    is kept in the job's folder and read back when the same job comes again."""
    done = Path(job["folder"]) / "heldout.json"
    if done.is_file():
        return json.loads(done.read_text())
    logging.basicConfig(level=logging.WARNING)
    result = reference_job(job) if job["recipe"] == "reference" else histoclass_job(job)
    done.write_text(json.dumps(result))
    return result


def histoclass_job(job: dict) -> dict:
    import histoclass
    from histoclass.inference.run import load_run
    folder, work = Path(job["folder"]), Path(job["work"])
    run_dir = folder / "run"
    if run_dir.exists():
        shutil.rmtree(run_dir)  # an interrupted job starts again
    settings = {"test_fraction": 0.0, "seed": job["seed"], **job["settings"]}
    if job["epochs"] is not None:
        settings["num_epochs"] = job["epochs"]
    started = time.perf_counter()
    histoclass.train(work / job["manifest"], run_dir, job["recipe"], cache_dir=work / "cache", progress=False,
                     **settings)
    trained = time.perf_counter() - started
    run = load_run(run_dir)
    predictions = run.predict_files([str(work / "images" / p) for p in job["test_paths"]])
    bad = [p for p in predictions if p.prob_malignant is None]
    if bad:
        raise RuntimeError(f"{len(bad)} held-out files were skipped, e.g. {bad[0].path}: {bad[0].status}")
    metadata = json.loads((run_dir / "metadata.json").read_text())
    with open(run_dir / "history.csv", newline="", encoding="utf-8") as handle:
        epoch_seconds = [float(r["seconds"]) for r in csv.DictReader(handle)]
    with open(run_dir / "split.csv", newline="", encoding="utf-8") as handle:
        val_patients = sorted({r["group"] for r in csv.DictReader(handle) if r["part"] == "val"})
    shutil.rmtree(run_dir / "predictions", ignore_errors=True)
    return {"prob": [float(p.prob_malignant) for p in predictions], "predicted": [int(p.label) for p in predictions],
            "threshold": run.threshold, "neighbourhood": run.neighbourhood, "epochs_done": metadata.get("epochs_done"),
            "best_epoch": metadata.get("best_epoch"), "train_seconds": round(trained, 1),
            "seconds": round(time.perf_counter() - started, 1),
            "epoch_seconds": float(np.mean(epoch_seconds)) if epoch_seconds else None,
            "val_patients": val_patients}


def reference_job(job: dict) -> dict:
    """The reference script run as it is (its own `main`), with its model's `predict` watched so
    the held-out probabilities can be pooled with the other folds'."""
    folder, work = Path(job["folder"]), Path(job["work"])
    spec = importlib.util.spec_from_file_location("seed_reference", REFERENCE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    captured: list[np.ndarray] = []
    build = module.seed_model

    def watched_model():
        model = build()
        predict = model.predict

        def predict_and_keep(*args, **kwargs):
            out = predict(*args, **kwargs)
            captured.append(np.asarray(out))
            return out
        model.predict = predict_and_keep
        return model

    module.seed_model = watched_model
    root = work / job["manifest"]  # a folder holding manifest.csv (training + held-out patches)
    groups_file = folder / "test_groups.txt"
    groups_file.write_text("\n".join(job["test_groups"]) + "\n")
    argv = ["seed_reference.py", "manifest", str(root), str(groups_file), "--seed", str(job["seed"])]
    if job["epochs"] is not None:
        argv += ["--epochs", str(job["epochs"])]
    printed = io.StringIO()
    started = time.perf_counter()
    saved_argv, sys.argv = sys.argv, argv
    try:
        with contextlib.redirect_stdout(printed):
            module.main()
    finally:
        sys.argv = saved_argv
    summary = json.loads(printed.getvalue().strip().splitlines()[-1])
    prob = captured[-1][:, 1]
    return {"prob": prob.astype(float).tolist(), "predicted": (prob >= 0.5).astype(int).tolist(),
            "threshold": 0.5, "neighbourhood": None, "epochs_done": summary["epochs"], "best_epoch": None,
            "train_seconds": summary["train_s"], "seconds": round(time.perf_counter() - started, 1),
            "epoch_seconds": summary["train_s"] / summary["epochs"], "val_patients": None, "script": summary}


# ---- scoring -----------------------------------------------------------------------------------

def _metrics(labels, prob, predicted) -> dict:
    from histoclass.evaluation.metrics import confusion_counts, rates, roc_auc
    out = rates(*confusion_counts(labels, predicted))
    return {"balanced_accuracy": out["balanced_accuracy"], "f1": out["f1"], "roc_auc": roc_auc(labels, prob),
            "sensitivity": out["recall"], "specificity": out["specificity"]}


def out_of_fold_thresholds(fold_results: dict[int, dict], fold_rows: dict[int, list[dict]]) -> dict[int, float]:
    """Per fold, Youden's threshold on the other folds' pooled held-out predictions (what
    `histoclass cv` fits on its out-of-fold predictions); {} with one fold."""
    from histoclass.evaluation.threshold import youden_threshold
    if len(fold_results) < 2:
        return {}
    chosen = {}
    for k in fold_results:
        labels = np.concatenate([[r["label"] for r in fold_rows[j]] for j in fold_results if j != k])
        prob = np.concatenate([fold_results[j]["prob"] for j in fold_results if j != k])
        chosen[k] = youden_threshold(labels, prob)
    return chosen


def smoothed_predictions(rows: list[dict], result: dict) -> tuple[np.ndarray, np.ndarray] | None:
    """A fold's held-out probabilities smoothed over each patient's patches on its slide grid
    (the IDC names' x and y) and labelled at the run's neighbourhood threshold (calibration.json,
    fitted on its validation patients), as `histoclass evaluate` reports them; None where the
    run has no neighbourhood (the reference script)."""
    from histoclass.data.records import parse_idc_name
    from histoclass.evaluation.neighbourhood import smooth_patients
    neighbourhood = result.get("neighbourhood")
    if not neighbourhood:
        return None
    names = [parse_idc_name(Path(r["path"]).name) for r in rows]
    smoothed, _ = smooth_patients(np.asarray(result["prob"]), [r["patient"] for r in rows],
                                  [n.x if n else None for n in names], [n.y if n else None for n in names],
                                  neighbourhood["sigma"])
    return smoothed, (smoothed >= neighbourhood["threshold"]).astype(int)


def score_row(results: dict[tuple[int, int], dict], fold_rows: dict[int, list[dict]], kinds: dict[str, str],
              seeds: list[int], num_resamples: int) -> dict:
    """By patient kind: metrics pooled over folds per seed (mean and range over seeds), bootstrap
    intervals over patients on every seed's predictions, and the out-of-fold threshold's BAC/F1."""
    from histoclass.evaluation.intervals import bootstrap_intervals
    from histoclass.evaluation.metrics import confusion_counts, rates, roc_auc
    folds = sorted(fold_rows)
    per_seed_oof = {s: out_of_fold_thresholds({k: results[k, s] for k in folds}, fold_rows) for s in seeds}
    scored = {}
    for kind in KINDS:
        stacked = {"labels": [], "prob": [], "predicted": [], "groups": [], "oof_predicted": []}
        per_seed = []
        with_neighbourhood = all(results[k, s].get("neighbourhood") for k in folds for s in seeds)
        for seed in seeds:
            parts = {key: [] for key in stacked}
            parts.update(smoothed=[], smoothed_predicted=[])
            for k in folds:
                rows, result = fold_rows[k], results[k, seed]
                keep = np.array([kind == "all" or kinds.get(r["patient"]) == kind for r in rows])
                prob = np.asarray(result["prob"])[keep]
                if with_neighbourhood:
                    smoothed, smoothed_predicted = smoothed_predictions(rows, result)
                    parts["smoothed"].append(smoothed[keep])
                    parts["smoothed_predicted"].append(smoothed_predicted[keep])
                parts["labels"].append(np.array([r["label"] for r in rows])[keep])
                parts["prob"].append(prob)
                parts["predicted"].append(np.asarray(result["predicted"])[keep])
                parts["groups"].append(np.array([r["patient"] for r in rows])[keep])
                oof = per_seed_oof[seed].get(k)
                parts["oof_predicted"].append((prob >= oof).astype(int) if oof is not None else prob * np.nan)
            joined = {key: np.concatenate(v) for key, v in parts.items() if v}
            if not len(joined["labels"]):
                break
            metrics = _metrics(joined["labels"], joined["prob"], joined["predicted"])
            if with_neighbourhood:
                smoothed = _metrics(joined["labels"], joined["smoothed"], joined["smoothed_predicted"])
                metrics.update({f"neighbourhood_{name}": smoothed[name]
                                for name in ("balanced_accuracy", "f1", "roc_auc", "sensitivity", "specificity")})
            if per_seed_oof[seed]:
                oof = _metrics(joined["labels"], joined["prob"], joined["oof_predicted"])
                metrics.update(oof_balanced_accuracy=oof["balanced_accuracy"], oof_f1=oof["f1"])
            per_seed.append(metrics)
            for key in stacked:
                stacked[key].append(joined[key])
        if len(per_seed) < len(seeds):
            continue  # no patient of this kind (patients.csv absent)
        labels = np.concatenate(stacked["labels"])
        # Columns: probability, label at the run's threshold, seed. Each metric is the mean over
        # seeds of the seed's pooled metric (never one metric over the seeds' probabilities
        # mixed), on the same resampled patients for every seed.
        scores = np.column_stack([np.concatenate(stacked["prob"]), np.concatenate(stacked["predicted"]),
                                  np.concatenate([np.full(len(p), i) for i, p in enumerate(stacked["prob"])])])
        fns = {"balanced_accuracy": _seed_mean(lambda y, s: rates(*confusion_counts(y, s[:, 1]))["balanced_accuracy"]),
               "f1": _seed_mean(lambda y, s: rates(*confusion_counts(y, s[:, 1]))["f1"]),
               "roc_auc": _seed_mean(lambda y, s: roc_auc(y, s[:, 0]))}
        intervals = bootstrap_intervals(labels, scores, fns, groups=np.concatenate(stacked["groups"]),
                                        num_resamples=num_resamples, seed=0)
        entry = {"patients": len(set(np.concatenate(stacked["groups"][:1]))),
                 "images": int(len(labels) // len(seeds)), "malignant": int(labels.sum() // len(seeds))}
        for name in METRICS:
            values = [m[name] for m in per_seed if m[name] is not None]
            entry[name] = {"mean": float(np.mean(values)), "low": intervals[name].low, "high": intervals[name].high,
                           "seed_min": float(min(values)), "seed_max": float(max(values)), "per_seed": values}
        for name in ("sensitivity", "specificity"):
            values = [m[name] for m in per_seed if m[name] is not None]
            entry[name] = float(np.mean(values)) if values else None
        for name in ("oof_balanced_accuracy", "oof_f1", "neighbourhood_balanced_accuracy", "neighbourhood_f1",
                     "neighbourhood_roc_auc", "neighbourhood_sensitivity", "neighbourhood_specificity"):
            if all(name in m and m[name] is not None for m in per_seed):
                entry[name] = float(np.mean([m[name] for m in per_seed]))
        scored[kind] = entry
    jobs = list(results.values())
    scored["time"] = {
        "seconds_per_run": float(np.mean([r["seconds"] for r in jobs])),
        "epoch_seconds": float(np.mean([r["epoch_seconds"] for r in jobs if r["epoch_seconds"] is not None])),
        "epochs_done": float(np.mean([r["epochs_done"] for r in jobs])),
        "best_epoch": (float(np.mean([r["best_epoch"] for r in jobs])) if all(r["best_epoch"] for r in jobs)
                       else None),
        "val_threshold": float(np.mean([r["threshold"] for r in jobs])),
        "oof_threshold": (float(np.mean([t for s in seeds for t in per_seed_oof[s].values()]))
                          if per_seed_oof[seeds[0]] else None)}
    return scored


def _seed_mean(metric):
    def mean_over_seeds(labels, scores):
        values = [metric(labels[scores[:, 2] == seed], scores[scores[:, 2] == seed])
                  for seed in np.unique(scores[:, 2])]
        return None if any(v is None for v in values) else float(np.mean(values))
    return mean_over_seeds


def table(rows: list[dict]) -> str:
    reference = next((r for r in rows if r["recipe"] == "reference"), None)
    lines = ["| row | patients | BAC [95 % CI] (seeds' range) | F1 [95 % CI] | AUC [95 % CI] "
             "| sens. / spec. | BAC / F1 at out-of-fold threshold | with the neighbourhood: BAC / F1 / AUC "
             "| threshold: val / out-of-fold | epochs (best) | s per epoch | epoch time / reference's | min per run |",
             "|---|---|---|---|---|---|---|---|---|---|---:|---:|---:|"]

    def cell(entry, name, spread=False):
        m = entry[name]
        text = f"{m['mean']:.3f} [{m['low']:.3f}, {m['high']:.3f}]"
        return text + (f" ({m['seed_min']:.3f}-{m['seed_max']:.3f})" if spread else "")

    for row in rows:
        time_ = row["scores"]["time"]
        ratio = (time_["epoch_seconds"] / reference["scores"]["time"]["epoch_seconds"]) if reference else None
        for kind in KINDS:
            entry = row["scores"].get(kind)
            if entry is None:
                continue
            oof = (f"{entry['oof_balanced_accuracy']:.3f} / {entry['oof_f1']:.3f}"
                   if "oof_balanced_accuracy" in entry else "")
            smoothed = (f"{entry['neighbourhood_balanced_accuracy']:.3f} / {entry['neighbourhood_f1']:.3f} / "
                        f"{entry['neighbourhood_roc_auc']:.3f}" if "neighbourhood_roc_auc" in entry else "")
            threshold = f"{time_['val_threshold']:.3f}" + (f" / {time_['oof_threshold']:.3f}"
                                                         if time_["oof_threshold"] is not None else "")
            epochs = f"{time_['epochs_done']:.1f}" + (f" ({time_['best_epoch']:.1f})" if time_["best_epoch"] else "")
            lines.append(f"| {row['name']} | {kind}: {entry['patients']} ({entry['images']} images) | "
                         f"{cell(entry, 'balanced_accuracy', True)} | {cell(entry, 'f1')} | {cell(entry, 'roc_auc')} | "
                         f"{_pair(entry.get('sensitivity'), entry.get('specificity'))} | {oof} | {smoothed} | {threshold} | {epochs} | {time_['epoch_seconds']:.1f} | "
                         f"{'' if ratio is None else f'{ratio:.2f}'} | {time_['seconds_per_run'] / 60:.1f} |")
    for source, numbers in PUBLISHED.items():
        lines.append(f"| {source} (published) | | {numbers['balanced_accuracy']:.3f} | {numbers['f1']:.3f} "
                     "| | | | | | | | | |")
    return "\n".join(lines)


# ---- main --------------------------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", nargs="+", default=["reference", "original", "strong"],
                        help="RECIPE or NAME=RECIPE[:SETTING=VALUE...]; reference is the plain script")
    parser.add_argument("--data", type=Path, default=None,
                        help="the IDC patches (default: $HISTOCLASS_IDC_DATA, else ../shared/data/idc-sample)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--folds-subset", default=None, help="comma-separated folds to run (default: all)")
    parser.add_argument("--split-seed", type=int, default=0, help="the folds' shuffle")
    parser.add_argument("--epochs", type=int, default=None, help="most epochs of every row (default: its own)")
    parser.add_argument("--image-limit", type=int, default=None, help="at most N training images per fold")
    parser.add_argument("--jobs", type=int, default=1, help="trainings in parallel processes")
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--work", type=Path, default=Path("/tmp/idc-benchmark"))
    parser.add_argument("--json", type=Path, default=OUT_JSON)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    data = (args.data or Path(os.environ.get("HISTOCLASS_IDC_DATA", DEFAULT_DATA))).expanduser().resolve()
    if not data.is_dir():
        sys.exit(f"{data} is not a folder of IDC patches; give --data or set HISTOCLASS_IDC_DATA")
    specs = [parse_row(spec) for spec in args.rows]
    if len({name for name, _, _ in specs}) < len(specs):
        sys.exit("two rows share a name; name them NAME=RECIPE:...")
    rows = read_patches(data)
    kinds = patient_kinds(data)
    folds = make_folds(rows, args.folds, args.split_seed)
    chosen = (list(range(args.folds)) if args.folds_subset is None
              else sorted({int(k) for k in args.folds_subset.split(",")}))
    if any(not 0 <= k < args.folds for k in chosen):
        sys.exit(f"--folds-subset {args.folds_subset}: folds are 0 to {args.folds - 1}")
    key = hashlib.sha256(json.dumps([str(data), args.folds, args.split_seed, args.image_limit, args.epochs,
                                     len(rows)]).encode()).hexdigest()[:8]
    work = args.work / key
    copy_images(rows, data, args.work)
    fold_rows = {k: [r for r, f in zip(rows, folds) if f == k] for k in chosen}
    jobs = []
    for k in chosen:
        train_rows = training_rows(rows, folds, k, args.image_limit)
        write_manifest(args.work / f"train-{key}-fold{k}.csv", train_rows, "images/")
        write_manifest(work / f"reference-fold{k}" / "manifest.csv", train_rows + fold_rows[k], f"{data}/")
        log.info("fold %d: %d training images, %d held-out patients (%d images)", k, len(train_rows),
                 len({r["patient"] for r in fold_rows[k]}), len(fold_rows[k]))
        for name, recipe, settings in specs:
            for seed in args.seeds:
                folder = work / "runs" / _slug(name) / f"fold-{k}" / f"seed-{seed}"
                folder.mkdir(parents=True, exist_ok=True)
                jobs.append({"name": name, "recipe": recipe, "settings": settings, "fold": k, "seed": seed,
                             "epochs": args.epochs, "folder": str(folder), "work": str(args.work),
                             "manifest": (f"train-{key}-fold{k}.csv" if recipe != "reference"
                                          else f"{key}/reference-fold{k}"),
                             "test_paths": [r["path"] for r in fold_rows[k]],
                             "test_groups": sorted({r["patient"] for r in fold_rows[k]})})
    if args.jobs > 1 and os.environ.get("KERAS_BACKEND") == "jax":
        os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", f"{0.9 / args.jobs:.3f}")
    results: dict[str, dict] = {name: {} for name, _, _ in specs}
    for attempt in range(3):
        pending = [job for job in jobs if (job["fold"], job["seed"]) not in results[job["name"]]]
        try:
            run_jobs(pending, args.jobs, results, fold_rows)
            break
        except concurrent.futures.process.BrokenProcessPool:
            # A worker killed from outside (the machine's memory is shared): its job starts again,
            # the finished ones are kept.
            log.warning("a worker was killed; its job and the unstarted ones start again")
    else:
        sys.exit("workers were killed three times; run the same command again to go on")
    scored = [{"name": name, "recipe": recipe, "settings": settings,
               "scores": score_row(results[name], fold_rows, kinds, args.seeds, args.resamples)}
              for name, recipe, settings in specs]
    args.json.write_text(json.dumps({
        "data": str(data), "folds": args.folds, "folds_run": chosen, "split_seed": args.split_seed,
        "seeds": args.seeds, "epochs": args.epochs, "image_limit": args.image_limit, "jobs": args.jobs,
        "published": PUBLISHED, "rows": scored}, indent=1))
    print(table(scored), flush=True)


def run_jobs(jobs: list[dict], workers: int, results: dict, fold_rows: dict) -> None:
    context = multiprocessing.get_context("spawn")  # a fresh backend in every worker
    with concurrent.futures.ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        futures = {pool.submit(run_job, job): job for job in jobs}
        for future in concurrent.futures.as_completed(futures):
            job = futures[future]
            result = future.result()
            results[job["name"]][job["fold"], job["seed"]] = result
            log.info("%s fold %d seed %d: BAC %.3f, %.0f s (%.1f s per epoch)", job["name"], job["fold"],
                     job["seed"], _metrics([r["label"] for r in fold_rows[job["fold"]]], result["prob"],
                                           result["predicted"])["balanced_accuracy"],
                     result["seconds"], result["epoch_seconds"] or float("nan"))


def _pair(first, second) -> str:
    return " / ".join("-" if v is None else f"{v:.3f}" for v in (first, second))


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


if __name__ == "__main__":
    main()
