#!/usr/bin/env python3
"""What an ensemble of runs would buy, offline, on the held-out patients of a `benchmarks/idc.py`
work folder: the runs of one row trained with different seeds on the same fold, averaged.

For each fold, the members' held-out probabilities (heldout.json) are averaged and labelled at
the mean of the members' own thresholds (each chosen on its validation patients, as a run does);
with the neighbourhood, the averaged probabilities are smoothed over each patient's patches and
labelled at the mean of the members' neighbourhood thresholds. Every ensemble of k members out
of the seeds run is scored (pooled over the folds), and the metrics are averaged over those
ensembles: k = 1 is the single run, as idc.py reports it. Nothing is trained or predicted again.

This is a proxy for the fold ensemble of `histoclass cv` (members trained on different folds of
the training patients, their threshold fitted on out-of-fold predictions): it shows how much
averaging independent runs steadies the predictions, at k times the training.

    python benchmarks/seed_ensembles.py /tmp/idc-benchmark/<key> --row strong-patients --seeds 0 1 2
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import idc  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    idc.add_offline_arguments(parser)
    parser.add_argument("--row", required=True, help="the row's name in idc.py (its folder under runs/)")
    parser.add_argument("--seeds", nargs="+", type=int, required=True)
    args = parser.parse_args()
    rows, kinds, folds = idc.offline_patches(args)
    row_dir = args.work / "runs" / args.row
    run_folds = sorted(int(p.name.split("-")[1]) for p in row_dir.glob("fold-*")
                       if all((p / f"seed-{s}" / "heldout.json").is_file() for s in args.seeds))
    if not run_folds:
        sys.exit(f"no fold of {row_dir} has held-out predictions for every seed {args.seeds}")
    fold_rows = {k: [r for r, f in zip(rows, folds) if f == k] for k in run_folds}
    results = {(k, s): json.loads((row_dir / f"fold-{k}" / f"seed-{s}" / "heldout.json").read_text())
               for k in run_folds for s in args.seeds}
    print(f"{args.row}, folds {run_folds}, seeds {args.seeds}: each cell is the mean over the ensembles "
          "of k members (k = 1: single runs)\n")
    print("| members | patients | BAC | F1 | AUC | with the neighbourhood: BAC / F1 / AUC |")
    print("|---:|---|---:|---:|---:|---|")
    for size in range(1, len(args.seeds) + 1):
        scores = [score(members, fold_rows, results, kinds) for members in itertools.combinations(args.seeds, size)]
        for kind in ("all", "complete", "sampled"):
            mean = {name: np.mean([s[kind][name] for s in scores]) for name in scores[0][kind]}
            print(f"| {size} | {kind} | {mean['balanced_accuracy']:.3f} | {mean['f1']:.3f} | {mean['roc_auc']:.3f} "
                  f"| {mean['n_balanced_accuracy']:.3f} / {mean['n_f1']:.3f} / {mean['n_roc_auc']:.3f} |")


def score(members: tuple[int, ...], fold_rows: dict, results: dict, kinds: dict) -> dict:
    """kind -> metrics of the ensemble of `members` (seeds), pooled over the folds."""
    parts = {name: [] for name in ("labels", "patients", "prob", "predicted", "smoothed", "smoothed_predicted")}
    for k, rows in fold_rows.items():
        runs = [results[k, s] for s in members]
        mean = np.mean([r["prob"] for r in runs], axis=0)
        threshold = float(np.mean([r["threshold"] for r in runs]))
        neighbourhood = {"sigma": runs[0]["neighbourhood"]["sigma"],
                         "threshold": float(np.mean([r["neighbourhood"]["threshold"] for r in runs]))}
        near, near_predicted = idc.smoothed_predictions(rows, {"prob": mean, "neighbourhood": neighbourhood})
        parts["labels"].append(np.array([r["label"] for r in rows]))
        parts["patients"].append(np.array([r["patient"] for r in rows]))
        parts["prob"].append(mean)
        parts["predicted"].append((mean >= threshold).astype(int))
        parts["smoothed"].append(near)
        parts["smoothed_predicted"].append(near_predicted)
    joined = {name: np.concatenate(values) for name, values in parts.items()}
    out = {}
    for kind in idc.KINDS:
        keep = np.array([kind == "all" or kinds.get(p) == kind for p in joined["patients"]])
        alone = idc._metrics(joined["labels"][keep], joined["prob"][keep], joined["predicted"][keep])
        near = idc._metrics(joined["labels"][keep], joined["smoothed"][keep], joined["smoothed_predicted"][keep])
        out[kind] = {**{name: alone[name] for name in ("balanced_accuracy", "f1", "roc_auc")},
                     **{f"n_{name}": near[name] for name in ("balanced_accuracy", "f1", "roc_auc")}}
    return out


if __name__ == "__main__":
    main()
