#!/usr/bin/env python3
"""The IDC benchmark: patient-level cross-validation on the real Kaggle IDC patches of
`../shared/data/idc-sample`, for histoclass's recipes and the plain reference script.

Only 4 of its 17 patients hold benign patches (8864, 8865, 10253 with both classes, 8913 benign
only), so the natural design is 4 folds, each holding one of them; the folds come from
`histoclass.data.splits.fold_by_group`, by patient. For each fold:

- histoclass (each recipe): `histoclass.train` on the other folds' patients with its default
  split of them (`test_fraction=0`: the validation patients are carved by histoclass, and the
  threshold and temperature are chosen on them), then `run.predict_files` on the held-out
  patients' files, labelled at the run's own threshold;
- the reference (`../shared/reference/seed_reference.py`, the original project's Keras script
  written plainly): trained on the other folds' patients (10 epochs, its own 20 % validation
  tail, threshold 0.5), scored on the held-out ones.

The held-out predictions of the folds are pooled (out of fold) and scored: balanced accuracy,
F1 and ROC-AUC, each with a 95 % percentile bootstrap interval over patients (whole patients
resampled). Prints the table, per-fold numbers, and writes `benchmarks/idc.json` (rows are
kept by name, so several invocations fill one file).

    python benchmarks/idc.py [--recipes reference original strong] [--epochs N] [--folds 4]
                             [--set key=value ...] [--name NAME] [--quick] [--work DIR]

`--set` overrides TrainConfig settings of the histoclass recipes (a recipe search); `--name`
then names the row (default: the recipe, plus the settings). `--fixed-val` (searches) gives
every variant the same validation patients per fold instead of histoclass's split.
`--quick`: 2 folds, 2 epochs, 100 bootstrap resamples, a smoke test of the whole path. Every
fold is a folder under --work; a finished fold is not trained again when the same invocation
is repeated, so `--fold K` in four processes and then one plain invocation runs the folds in
parallel and scores them.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import hashlib
import importlib.util
import io
import json
import logging
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
DATA = SHARED / "data" / "idc-sample"
REFERENCE = SHARED / "reference" / "seed_reference.py"
OUT_JSON = ROOT / "benchmarks" / "idc.json"
PUBLISHED = {  # on the full set: 84 training + 29 validation patients, by patient
    "Cruz-Roa et al. 2014": {"balanced_accuracy": 0.843, "f1": 0.718},
    "Janowczyk & Madabhushi 2016": {"balanced_accuracy": 0.848, "f1": 0.765},
}
METRICS = ("balanced_accuracy", "f1", "roc_auc")

log = logging.getLogger("idc")


def read_patches() -> list[dict]:
    with open(DATA / "patches.csv", newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def make_folds(rows: list[dict], num_folds: int, seed: int) -> np.ndarray:
    from histoclass.data.splits import fold_by_group
    labels = np.array([r["label"] == "malignant" for r in rows], dtype=int)
    groups = np.array([r["patient"] for r in rows], dtype=object)
    return fold_by_group(labels, groups, num_folds, seed=seed)


def copy_images(rows: list[dict], work: Path) -> Path:
    """The patches copied once under WORK/images: histoclass reads a manifest's images only
    from below the manifest's own folder, and ../shared/data is read-only."""
    images = work / "images"
    for row in rows:
        target = images / row["path"]
        if not target.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(DATA / row["path"], target)
    return images


def write_manifest(path: Path, rows: list[dict], prefix: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(("path", "label", "group"))
        for row in rows:
            writer.writerow((f"{prefix}{row['path']}", row["label"], row["patient"]))
    return path


# ---- one fold ----------------------------------------------------------------------------------

def fixed_validation(train_rows: list[dict]) -> dict[str, str]:
    """For `--fixed-val` (recipe searches): validation = the smallest patient of the training
    patients that holds benign patches, plus the smallest malignant-only ones until the part's
    malignant share reaches the training patients'; the same for every variant compared."""
    counts: dict[str, list[int]] = {}
    for row in train_rows:
        counts.setdefault(row["patient"], [0, 0])[row["label"] == "malignant"] += 1
    share = sum(c[1] for c in counts.values()) / sum(map(sum, counts.values()))
    benign_holders = sorted((p for p, c in counts.items() if c[0]), key=lambda p: sum(counts[p]))
    chosen = [benign_holders[0]]
    for patient in sorted((p for p, c in counts.items() if not c[0]), key=lambda p: sum(counts[p])):
        benign, malignant = (sum(counts[p][k] for p in chosen) for k in (0, 1))
        if malignant / (benign + malignant) >= share:
            break
        chosen.append(patient)
    return {p: "val" if p in chosen else "train" for p in counts}


def histoclass_fold(recipe: str, overrides: dict, rows: list[dict], held_out: np.ndarray, work: Path,
                    fold_dir: Path, seed: int, epochs: int | None, fixed_val: bool = False) -> dict:
    import histoclass
    from histoclass.inference.run import load_run
    done = fold_dir / "heldout.json"
    if done.is_file():
        return json.loads(done.read_text())
    train_rows = [r for r, h in zip(rows, held_out) if not h]
    test_rows = [r for r, h in zip(rows, held_out) if h]
    # The manifest sits beside images/ (a manifest's images must lie below its folder).
    manifest = write_manifest(work / f"train-{fold_dir.parent.name}-{fold_dir.name}.csv", train_rows, "images/")
    run_dir = fold_dir / "run"
    if run_dir.exists():
        shutil.rmtree(run_dir)  # an interrupted fold starts again
    started = time.perf_counter()
    settings = {"test_fraction": 0.0, "seed": seed, **overrides}
    if epochs is not None:
        settings["num_epochs"] = epochs
    split_file = None
    if fixed_val:
        split_file = fold_dir / "split.csv"
        fold_dir.mkdir(parents=True, exist_ok=True)
        split_file.write_text("group,split\n" + "".join(f"{p},{part}\n" for p, part in
                                                         fixed_validation(train_rows).items()))
    histoclass.train(manifest, run_dir, recipe, cache_dir=work / "cache", split_file=split_file, **settings)
    seconds = time.perf_counter() - started
    run = load_run(run_dir)
    predictions = run.predict_files([str(work / "images" / r["path"]) for r in test_rows])
    bad = [p for p in predictions if p.prob_malignant is None]
    if bad:
        raise RuntimeError(f"{len(bad)} held-out files were skipped, e.g. {bad[0].path}: {bad[0].status}")
    metadata = json.loads((run_dir / "metadata.json").read_text())
    config = json.loads((run_dir / "config.json").read_text())
    result = {
        "labels": [int(r["label"] == "malignant") for r in test_rows],
        "groups": [r["patient"] for r in test_rows],
        "prob": [float(p.prob_malignant) for p in predictions],
        "predicted": [int(p.label) for p in predictions],
        "threshold": run.threshold, "temperature": run.temperature,
        "epochs_done": metadata.get("epochs_done"), "best_epoch": metadata.get("best_epoch"),
        "monitor": metadata.get("monitor"), "seconds": round(seconds, 1),
        "val_patients": sorted({r["group"] for r in _read_split(run_dir) if r["part"] == "val"}),
        "parts": config.get("data", {}).get("parts"),
    }
    done.write_text(json.dumps(result))
    return result


def _read_split(run_dir: Path) -> list[dict]:
    with open(run_dir / "split.csv", newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def reference_fold(rows: list[dict], held_out: np.ndarray, work: Path, fold_dir: Path, seed: int,
                   epochs: int | None) -> dict:
    """The reference script run as it is (its own `main`), in this process, with its model's
    `predict` watched so the held-out probabilities can be pooled with the other folds'."""
    done = fold_dir / "heldout.json"
    if done.is_file():
        return json.loads(done.read_text())
    root = work / "reference"
    write_manifest(root / "manifest.csv", rows, f"{DATA}/")
    test_groups = sorted({r["patient"] for r, h in zip(rows, held_out) if h})
    fold_dir.mkdir(parents=True, exist_ok=True)
    groups_file = fold_dir / "test_groups.txt"
    groups_file.write_text("\n".join(test_groups) + "\n")
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
    argv = ["seed_reference.py", "manifest", str(root), str(groups_file), "--seed", str(seed)]
    if epochs is not None:
        argv += ["--epochs", str(epochs)]
    printed = io.StringIO()
    started = time.perf_counter()
    saved_argv, sys.argv = sys.argv, argv
    try:
        with contextlib.redirect_stdout(printed):
            module.main()
    finally:
        sys.argv = saved_argv
    summary = json.loads(printed.getvalue().strip().splitlines()[-1])
    test_rows = [r for r in rows if r["patient"] in set(test_groups)]  # the script's order
    prob = captured[-1][:, 1]
    result = {
        "labels": [int(r["label"] == "malignant") for r in test_rows],
        "groups": [r["patient"] for r in test_rows],
        "prob": prob.astype(float).tolist(), "predicted": (prob >= 0.5).astype(int).tolist(),
        "threshold": 0.5, "temperature": None, "epochs_done": summary["epochs"], "best_epoch": None,
        "monitor": None, "seconds": round(time.perf_counter() - started, 1), "script": summary,
    }
    if abs(summary["balanced_accuracy"] - _rates(result)["balanced_accuracy"]) > 1e-3:
        raise RuntimeError("the captured reference predictions do not match the script's own numbers")
    done.write_text(json.dumps(result))
    return result


# ---- scoring -----------------------------------------------------------------------------------

def _rates(result: dict) -> dict:
    from histoclass.evaluation.metrics import confusion_counts, rates, roc_auc
    labels = np.asarray(result["labels"])
    out = rates(*confusion_counts(labels, result["predicted"]))
    return {"balanced_accuracy": out["balanced_accuracy"], "f1": out["f1"],
            "roc_auc": roc_auc(labels, result["prob"])}


def pooled(folds: list[dict], num_resamples: int, seed: int) -> dict:
    """Out-of-fold metrics with 95 % intervals from a bootstrap over patients."""
    from histoclass.evaluation.intervals import bootstrap_intervals
    from histoclass.evaluation.metrics import confusion_counts, rates, roc_auc
    labels = np.concatenate([f["labels"] for f in folds])
    scores = np.column_stack([np.concatenate([f["prob"] for f in folds]),
                              np.concatenate([f["predicted"] for f in folds])])
    groups = np.concatenate([f["groups"] for f in folds])

    def rate(name):
        return lambda y, s: rates(*confusion_counts(y, s[:, 1]))[name]
    fns = {"balanced_accuracy": rate("balanced_accuracy"), "f1": rate("f1"),
           "roc_auc": lambda y, s: roc_auc(y, s[:, 0])}
    intervals = bootstrap_intervals(labels, scores, fns, groups=groups, num_resamples=num_resamples, seed=seed)
    return {name: {"point": v.point, "low": v.low, "high": v.high} for name, v in intervals.items()}


def run_row(name: str, recipe: str, overrides: dict, rows: list[dict], folds: np.ndarray, work: Path,
            seed: int, epochs: int | None, num_resamples: int, fixed_val: bool = False,
            only_fold: int | None = None) -> dict | None:
    per_fold = []
    num_folds = int(folds.max()) + 1
    # Finished folds are reused only for the same patients in the same folds.
    fold_key = hashlib.sha256(json.dumps(sorted(zip([r["patient"] for r in rows], folds.tolist()))).encode()).hexdigest()[:8]
    for k in range(num_folds) if only_fold is None else [only_fold]:
        held_out = folds == k
        fold_dir = work / "runs" / f"{num_folds}folds-{fold_key}" / _slug(name) / f"fold-{k}"
        log.info("%s: fold %d, held-out patients %s", name, k,
                 ", ".join(sorted({r["patient"] for r, h in zip(rows, held_out) if h})))
        if recipe == "reference":
            result = reference_fold(rows, held_out, work, fold_dir, seed, epochs)
        else:
            result = histoclass_fold(recipe, overrides, rows, held_out, work, fold_dir, seed, epochs, fixed_val)
        per_fold.append(result)
        log.info("%s fold %d: %s", name, k, {m: _round(v) for m, v in _rates(result).items()})
    if only_fold is not None:
        return None
    fold_rows = [{"fold": k, "patients": sorted(set(f["groups"])), "images": len(f["labels"]),
                  "malignant": int(np.sum(f["labels"])), **_rates(f),
                  **{key: f.get(key) for key in ("threshold", "temperature", "epochs_done", "best_epoch",
                                                 "monitor", "seconds", "val_patients")}}
                 for k, f in enumerate(per_fold)]
    return {"name": name, "recipe": recipe, "overrides": overrides, "epochs": epochs, "seed": seed,
            "validation": "fixed (--fixed-val)" if fixed_val else "histoclass's default split",
            "out_of_fold": pooled(per_fold, num_resamples, seed), "folds": fold_rows,
            "seconds": round(sum(f["seconds"] for f in per_fold))}  # training + held-out prediction


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def _round(value):
    return None if value is None else round(float(value), 3)


def table(rows: list[dict]) -> str:
    lines = ["| recipe | BAC [95 % CI] | F1 [95 % CI] | ROC-AUC [95 % CI] | fold BAC | epochs | seconds |",
             "|---|---:|---:|---:|---|---:|---:|"]
    for row in rows:
        cells = [f"{row['out_of_fold'][m]['point']:.3f} [{row['out_of_fold'][m]['low']:.3f}, "
                 f"{row['out_of_fold'][m]['high']:.3f}]" for m in METRICS]
        fold_bac = " / ".join(f"{f['balanced_accuracy']:.3f}" for f in row["folds"])
        epochs = [f["epochs_done"] for f in row["folds"] if f["epochs_done"] is not None]
        lines.append(f"| {row['name']} | {' | '.join(cells)} | {fold_bac} | "
                     f"{np.mean(epochs) if epochs else float('nan'):.1f} | {row['seconds']} |")
    for source, numbers in PUBLISHED.items():
        lines.append(f"| {source} (published, 84 + 29 full patients) | {numbers['balanced_accuracy']:.3f} | "
                     f"{numbers['f1']:.3f} | | | | |")
    return "\n".join(lines)


def parse_settings(pairs: list[str]) -> dict:
    settings = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        try:
            settings[key] = json.loads(value)
        except json.JSONDecodeError:
            settings[key] = value
    return settings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipes", nargs="+", default=["reference", "original", "strong"])
    parser.add_argument("--epochs", type=int, default=None, help="most epochs (default: each recipe's own)")
    parser.add_argument("--folds", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="TrainConfig settings on top of the histoclass recipes")
    parser.add_argument("--name", default=None, help="row name (one recipe only)")
    parser.add_argument("--resamples", type=int, default=2000)
    parser.add_argument("--fixed-val", action="store_true",
                        help="recipe search: one fixed validation part of both classes per fold (see fixed_validation)")
    parser.add_argument("--fold", type=int, default=None,
                        help="train and predict this fold only (to run folds in parallel processes); "
                             "a later invocation without it reuses the finished folds and scores them")
    parser.add_argument("--quick", action="store_true", help="2 folds, 2 epochs, 100 resamples")
    parser.add_argument("--work", type=Path, default=Path("/tmp/idc-benchmark"))
    parser.add_argument("--json", type=Path, default=OUT_JSON)
    args = parser.parse_args()
    if args.quick:
        args.folds, args.epochs, args.resamples = 2, args.epochs or 2, 100
        args.work = args.work / "quick"
        args.json = args.work / "idc-quick.json"
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for noisy in ("histoclass.training.callbacks", "histoclass.data.cache", "tensorflow", "absl"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if not DATA.is_dir():
        sys.exit(f"{DATA} is not here; the benchmark needs the idc-sample folder of ../shared/data")
    overrides = parse_settings(args.set)
    if args.name and len(args.recipes) != 1:
        sys.exit("--name names one row: give one recipe with it")
    rows = read_patches()
    folds = make_folds(rows, args.folds, args.seed)
    args.work.mkdir(parents=True, exist_ok=True)
    copy_images(rows, args.work)
    saved = json.loads(args.json.read_text())["rows"] if args.json.is_file() else []
    for recipe in args.recipes:
        extra = {} if recipe == "reference" else overrides
        name = args.name or recipe + "".join(f" {k}={v}" for k, v in extra.items())
        if args.epochs is not None and not args.name:
            name += f" ({args.epochs} epochs)"
        if args.fixed_val and recipe != "reference" and not args.name:
            name += " fixed-val"
        row = run_row(name, recipe, extra, rows, folds, args.work, args.seed, args.epochs, args.resamples,
                      args.fixed_val and recipe != "reference", args.fold)
        if row is None:
            continue
        saved = [r for r in saved if r["name"] != name] + [row]
        args.json.write_text(json.dumps({
            "data": str(DATA), "folds": args.folds, "seed": args.seed, "published": PUBLISHED,
            "design": "patient-level CV; each fold's held-out patients predicted by a run trained on "
                      "the other folds (histoclass: default split of them, test_fraction=0)",
            "rows": saved}, indent=1))
        print(table([row]), flush=True)
        for fold in row["folds"]:
            print(f"  fold {fold['fold']} ({', '.join(fold['patients'])}; {fold['images']} images, "
                  f"{fold['malignant']} malignant): BAC {_round(fold['balanced_accuracy'])}, F1 {_round(fold['f1'])}, "
                  f"AUC {_round(fold['roc_auc'])}, threshold {_round(fold['threshold'])}, "
                  f"epochs {fold['epochs_done']}, val {fold.get('val_patients')}", flush=True)
    print(table(saved))


if __name__ == "__main__":
    main()
