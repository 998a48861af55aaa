#!/usr/bin/env python3
"""Threshold rules compared offline on the held-out patients of a `benchmarks/idc.py` work folder.

For every histoclass row, fold and seed that idc.py trained, the threshold is chosen on the
run's own validation predictions (its val_predictions.csv) by Youden's J or by maximum F1
(`evaluation.threshold`), for the patches alone and for their probabilities smoothed over each
patient's neighbouring patches (`evaluation.neighbourhood`), then applied to the fold's held-out
patients (heldout.json). Balanced accuracy and F1 pooled over the folds per seed, then the mean
over seeds, by patient kind. Nothing is trained or predicted again.

    python benchmarks/threshold_rules.py /tmp/idc-benchmark/<key>    # the folder idc.py made under --work
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import idc  # noqa: E402
from histoclass.data.records import parse_idc_name  # noqa: E402
from histoclass.evaluation.metrics import confusion_counts, rates  # noqa: E402
from histoclass.evaluation.neighbourhood import smooth_patients  # noqa: E402
from histoclass.evaluation.threshold import choose_threshold  # noqa: E402

RULES = ("youden", "f1")
KINDS = ("all", "complete", "sampled")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    idc.add_offline_arguments(parser)
    args = parser.parse_args()
    rows, kinds, folds = idc.offline_patches(args)
    print("| row | patients | " + " | ".join(f"{'smoothed, ' if smoothed else ''}{rule}: BAC / F1"
                                             for smoothed in (False, True) for rule in RULES) + " |")
    print("|---|---|" + "---|" * (2 * len(RULES)))
    for row_dir in sorted((args.work / "runs").iterdir()):
        if row_dir.name == "reference":  # its threshold is the script's 0.5
            continue
        scores = score_row(row_dir, rows, folds, kinds)
        for kind in KINDS:
            cells = [f"{np.mean(scores[kind, smoothed, rule], axis=0)[0]:.3f} / "
                     f"{np.mean(scores[kind, smoothed, rule], axis=0)[1]:.3f}"
                     for smoothed in (False, True) for rule in RULES]
            print(f"| {row_dir.name} | {kind} | " + " | ".join(cells) + " |")


def score_row(row_dir: Path, rows: list[dict], folds: np.ndarray, kinds: dict) -> dict:
    """(kind, smoothed, rule) -> [(BAC, F1) per seed], each pooled over the row's folds; a seed
    still training on some fold (no heldout.json yet) is left out."""
    pooled: dict = {}
    fold_dirs = sorted(row_dir.glob("fold-*"))
    finished = set.intersection(*({d.name for d in f.glob("seed-*") if (d / "heldout.json").is_file()}
                                  for f in fold_dirs))
    for fold_dir in fold_dirs:
        fold = int(fold_dir.name.split("-")[1])
        held = [r for r, f in zip(rows, folds) if f == fold]
        labels = np.array([r["label"] for r in held])
        groups = [r["patient"] for r in held]
        names = [parse_idc_name(Path(r["path"]).name) for r in held]
        kind = np.array([kinds.get(g, "all") for g in groups])
        for seed_dir in sorted(fold_dir / name for name in finished):
            prob = np.asarray(json.loads((seed_dir / "heldout.json").read_text())["prob"])
            with open(seed_dir / "run" / "val_predictions.csv", newline="", encoding="utf-8") as handle:
                val = list(csv.DictReader(handle))
            val_labels = np.array([int(r["label"]) for r in val])
            val_prob = np.array([float(r["prob_malignant"]) for r in val])
            for smoothed in (False, True):
                if smoothed:
                    val_scores = smooth_patients(val_prob, [r["group"] for r in val],
                                                 [int(r["x"]) if r["x"] else None for r in val],
                                                 [int(r["y"]) if r["y"] else None for r in val])[0]
                    scores = smooth_patients(prob, groups, [n.x if n else None for n in names],
                                             [n.y if n else None for n in names])[0]
                else:
                    val_scores, scores = val_prob, prob
                for rule in RULES:
                    called = scores >= choose_threshold(val_labels, val_scores, rule)["threshold"]
                    for name in KINDS:
                        mask = np.ones(len(kind), bool) if name == "all" else kind == name
                        parts = pooled.setdefault((name, smoothed, rule), {}).setdefault(seed_dir.name, [])
                        parts.append((labels[mask], called[mask]))
    out = {}
    for key, seeds in pooled.items():
        out[key] = []
        for parts in seeds.values():
            found = rates(*confusion_counts(np.concatenate([p[0] for p in parts]),
                                            np.concatenate([p[1] for p in parts])))
            out[key].append((found["balanced_accuracy"], found["f1"]))
    return out


if __name__ == "__main__":
    main()
