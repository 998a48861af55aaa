#!/usr/bin/env python3
"""BreastMNIST with the test part held out by us: what `--test-fraction 0` gains.

The official test split is kept back for acceptance checks, so this holds out a seeded,
stratified 20 % of train+val itself (`heldout.npz`, as `test_*` arrays) and trains on the rest
(`dev.npz`: the official train and val arrays less the held-out images), three ways, over seeds:

- histoclass, defaults: a test part is carved out of train (15 %), so fewer images train;
- histoclass, `--test-fraction 0`: every dev image trains or validates (val is the official one);
- the reference: the original project's Keras script, trained on dev train+val.

All three use the original CNN of model.py and 10 epochs, and are scored on the same held-out
images. Prints a table of ROC-AUC and accuracy (mean, min-max over seeds).

    python benchmarks/breastmnist_holdout.py [--seeds 0,1,2] [--work DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
NPZ = SHARED / "data" / "breastmnist" / "breastmnist_trainval.npz"
REFERENCE = SHARED / "reference" / "seed_reference.py"
HOLDOUT_FRACTION = 0.2


def write_split(work: Path, seed: int = 0) -> tuple[Path, Path]:
    """dev.npz (train/val less the held-out images) and heldout.npz (test_*), stratified by label."""
    z = np.load(NPZ)
    rng = np.random.default_rng(seed)
    dev, heldout = {}, {"test_images": [], "test_labels": []}
    for part in ("train", "val"):
        images, labels = z[f"{part}_images"], z[f"{part}_labels"]
        hold = np.zeros(len(labels), bool)
        for value in np.unique(labels):
            members = np.flatnonzero(labels.reshape(-1) == value)
            hold[rng.choice(members, round(HOLDOUT_FRACTION * len(members)), replace=False)] = True
        dev[f"{part}_images"], dev[f"{part}_labels"] = images[~hold], labels[~hold]
        heldout["test_images"].append(images[hold])
        heldout["test_labels"].append(labels[hold])
    work.mkdir(parents=True, exist_ok=True)
    np.savez(work / "dev.npz", **dev)
    np.savez(work / "heldout.npz", **{k: np.concatenate(v) for k, v in heldout.items()})
    return work / "dev.npz", work / "heldout.npz"


def histoclass_run(dev: Path, heldout: Path, run_dir: Path, seed: int, test_fraction: float | None) -> dict:
    import histoclass
    overrides = {"seed": seed, **({} if test_fraction is None else {"test_fraction": test_fraction})}
    run = histoclass.train(dev, run_dir, "original", cache_dir=run_dir.parent / "cache", **overrides)
    metrics = run.evaluate(heldout, cache_dir=run_dir.parent / "cache")
    parts = json.loads((run_dir / "config.json").read_text())["data"]["parts"]
    return {"roc_auc": metrics["roc_auc"], "accuracy": metrics["accuracy"],
            "balanced_accuracy": metrics["balanced_accuracy"], "n_test": metrics["n"],
            "n_train": parts["train"]["images"], "n_val": parts["val"]["images"]}


def reference_run(dev: Path, heldout: Path, seed: int) -> dict:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    out = subprocess.run([sys.executable, str(REFERENCE), "npz", str(dev), str(heldout), "--epochs", "10",
                          "--seed", str(seed)], capture_output=True, text=True, env=env, check=True).stdout
    result = json.loads([line for line in out.splitlines() if line.startswith("{")][-1])
    # It trains on 80 % of dev train+val and uses the other 20 % for Keras's validation_split.
    return {"roc_auc": result["roc_auc"], "accuracy": result["accuracy"],
            "balanced_accuracy": result["balanced_accuracy"], "n_test": result["n_test"],
            "n_train": round(result["n_train"] * 0.8), "n_val": result["n_train"] - round(result["n_train"] * 0.8)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--work", type=Path, default=Path("/tmp/histoclass-breastmnist-holdout"))
    args = parser.parse_args()
    if not NPZ.is_file():
        print(f"BreastMNIST is not at {NPZ}; nothing to measure")
        return 1
    dev, heldout = write_split(args.work)
    results: dict[str, list[dict]] = {"histoclass, defaults (test carved)": [],
                                      "histoclass, --test-fraction 0": [], "reference script": []}
    for seed in [int(s) for s in args.seeds.split(",")]:
        results["histoclass, defaults (test carved)"].append(
            histoclass_run(dev, heldout, args.work / f"default-{seed}", seed, None))
        results["histoclass, --test-fraction 0"].append(
            histoclass_run(dev, heldout, args.work / f"all-{seed}", seed, 0.0))
        results["reference script"].append(reference_run(dev, heldout, seed))
        print(f"seed {seed} done", flush=True)
    print(f"\nBreastMNIST, original CNN, 10 epochs; {results['reference script'][0]['n_test']} held-out images "
          f"(seeded stratified {HOLDOUT_FRACTION:.0%} of train+val); seeds {args.seeds}")
    print(f"{'system':<38}{'train imgs':>11}{'val imgs':>9}{'ROC-AUC mean':>14}{'(min-max)':>16}{'accuracy':>10}"
          f"{'balanced acc.':>15}")
    for name, rows in results.items():
        auc = [r["roc_auc"] for r in rows]
        acc = [r["accuracy"] for r in rows]
        balanced = [r["balanced_accuracy"] for r in rows]
        n_val = rows[0]["n_val"]
        print(f"{name:<38}{rows[0]['n_train']:>11}{'-' if n_val is None else n_val:>9}{np.mean(auc):>14.4f}"
              f"{f'({min(auc):.3f}-{max(auc):.3f})':>16}{np.mean(acc):>10.4f}{np.mean(balanced):>15.4f}")
    print("histoclass: at the threshold chosen on its validation part; the reference: at 0.5")
    (args.work / "results.json").write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
