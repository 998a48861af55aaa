#!/usr/bin/env python3
"""histoclass against the reference system (the original project's Keras script), side by side, on this machine.

    python benchmarks/run.py                      # BreastMNIST, LC25000 lung, IDC-scale synthetic
    python benchmarks/run.py --sets breastmnist,lung
    python benchmarks/run.py --quick              # smoke run: small sets, 1 epoch, a few minutes

Each system runs in its own child process (peak resident memory is the child's own, from
`wait4`), one after the other, never two at once. Prints a table of ratios (histoclass /
reference) and writes benchmarks/results.json.

The sets and their splits (the same images for both systems):
- breastmnist: trained on the official train split, tested on the official val split (78
  images): the official test split is held back for acceptance and is not here. histoclass takes
  its own validation part (early stopping, temperature, threshold) out of train; the reference
  holds out its usual 20 % (validation_split) for nothing but its log.
- lung: LC25000 lung, split by source-tile group: 20 % of the groups are the test set (a text
  file of group ids for the reference's manifest mode, a split CSV for histoclass).
- idc: `histoclass synth --patients 279` (277k 50x50 PNG patches, made once into --work), split
  by patient (49 test patients, as in the published split); one epoch each, since the reference
  needs ~2 minutes an epoch and holds the whole set as float32.

"Time to the reference's AUC": the reference reports its AUC on the test set after its last
epoch; for histoclass it is the training time (validation included) until its per-epoch
validation AUC first reaches that value. The reference's time is its whole training time.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
REFERENCE = SHARED / "reference" / "seed_reference.py"
TCMALLOC = Path("/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4")
SETS = ("breastmnist", "lung", "idc")
IDC_PATIENTS = 279
IDC_MAX_TEST = 20_000  # histoclass's quality and inference speed on a seeded sample of the test patches


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sets", default=",".join(SETS), help=f"comma-separated, of {', '.join(SETS)}")
    parser.add_argument("--quick", action="store_true", help="small sets and 1 epoch: a smoke run")
    parser.add_argument("--recipe", default=None,
                        help="histoclass recipe for every set (default: strong; strong_no_aug for BreastMNIST, "
                             "ultrasound, where flips are not symmetries)")
    parser.add_argument("--epochs", type=int, default=None, help="histoclass's most epochs (default: the recipe's)")
    parser.add_argument("--reference-epochs", type=int, default=10, help="the reference's epochs (default 10, its own)")
    parser.add_argument("--idc-epochs", type=int, default=1, help="epochs of each system on the IDC-scale set")
    parser.add_argument("--work", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "histoclass-bench",
                        help="folder for generated data, caches and runs")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results.json")
    parser.add_argument("--no-tcmalloc", action="store_true", help="run histoclass without LD_PRELOADing tcmalloc")
    args = parser.parse_args(argv)
    sets = [s.strip() for s in args.sets.split(",") if s.strip()]
    unknown = set(sets) - set(SETS)
    if unknown:
        parser.error(f"unknown set(s) {', '.join(sorted(unknown))}; choose from {', '.join(SETS)}")
    if not REFERENCE.is_file():
        parser.error(f"the reference script {REFERENCE} is not here (it lives in ../shared/reference)")
    args.work.mkdir(parents=True, exist_ok=True)

    results = {"machine": _machine(), "quick": args.quick, "sets": {}}
    for name in sets:
        print(f"== {name}", file=sys.stderr, flush=True)
        prepare = {"breastmnist": _prepare_breastmnist, "lung": _prepare_lung, "idc": _prepare_idc}[name]
        task = prepare(args.work / name, args.quick)
        reference_epochs = args.idc_epochs if name == "idc" else (1 if args.quick else args.reference_epochs)
        epochs = args.idc_epochs if name == "idc" else (1 if args.quick else args.epochs)
        reference = _run_reference(task, reference_epochs)
        print(f"   reference: {json.dumps(reference)}", file=sys.stderr, flush=True)
        recipe = args.recipe or ("strong_no_aug" if name == "breastmnist" else "strong")
        ours = _run_histoclass(task, args.work / name, recipe, epochs, reference.get("roc_auc"),
                               tcmalloc=not args.no_tcmalloc)
        print(f"   histoclass: {json.dumps({k: v for k, v in ours.items() if k != 'val_auc_by_epoch'})}",
              file=sys.stderr, flush=True)
        results["sets"][name] = {"split": task["description"], "reference": reference, "histoclass": ours,
                                 "ratios": _ratios(reference, ours)}
        _write_json(args.out, results)
    print(format_table(results))
    print(f"\nwrote {args.out}")
    return 0


# ---- the sets ----------------------------------------------------------------------------

def _prepare_breastmnist(work: Path, quick: bool) -> dict:
    """train = official train, test = official val; a val key of 0 images keeps both loaders happy."""
    source = SHARED / "data" / "breastmnist" / "breastmnist_trainval.npz"
    work.mkdir(parents=True, exist_ok=True)
    npz = work / "breastmnist_train_test.npz"
    if not npz.is_file():
        with np.load(source) as arrays:
            train_images, train_labels = arrays["train_images"], arrays["train_labels"]
            np.savez(npz, train_images=train_images, train_labels=train_labels,
                     val_images=train_images[:0], val_labels=train_labels[:0],
                     test_images=arrays["val_images"], test_labels=arrays["val_labels"])
    return {"name": "breastmnist", "reference_args": ["npz", str(npz), str(npz)], "data": str(npz),
            "split_file": None,
            "description": "train: official train (546); test: official val (78); histoclass's val from train"}


def _prepare_lung(work: Path, quick: bool) -> dict:
    from histoclass.data.splits import split_by_group
    source = SHARED / "data" / "lc25000-lung"
    rows = list(csv.DictReader(open(source / "manifest.csv", newline="")))
    groups = np.array([r["group"] for r in rows], dtype=object)
    labels = np.array([1 if r["label"] == "malignant" else 0 for r in rows])
    work.mkdir(parents=True, exist_ok=True)
    if quick:  # a fifth of the groups, for a smoke run
        keep_groups = set(np.unique(groups)[::5])
        keep = np.array([g in keep_groups for g in groups])
        rows, groups, labels = [r for r, k in zip(rows, keep) if k], groups[keep], labels[keep]
    # Test = 20 % of the groups; of the rest histoclass takes 15 % of all for validation.
    parts = split_by_group(labels, groups, (0.65, 0.15, 0.20), seed=0, balance="images")  # as its results were made
    group_part = dict(zip(groups, parts))
    # The reference reads TRAIN_ROOT/manifest.csv; a copy with absolute paths in the work folder.
    test_groups, split_file = _write_split_for_both(
        work, ((source / row["path"], row["label"], row["group"]) for row in rows), group_part, work)
    return {"name": "lung", "reference_args": ["manifest", str(work), str(work / "test_groups.txt")],
            "data": str(source), "split_file": str(split_file),
            "description": f"by source-tile group: {len(test_groups)} of {len(group_part)} groups "
                           f"({int((parts == 'test').sum())} images) are the test set"}


def _write_split_for_both(manifest_dir: Path, manifest_rows, group_part: dict, work: Path):
    """One split, written for each system: manifest.csv + test_groups.txt for the reference,
    split.csv (group,split) for histoclass. Returns (test groups, split.csv path)."""
    test_groups = sorted(g for g, p in group_part.items() if p == "test")
    with open(manifest_dir / "manifest.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "group"])
        writer.writerows([str(path), label, group] for path, label, group in manifest_rows)
    (manifest_dir / "test_groups.txt").write_text("\n".join(test_groups) + "\n")
    split_file = work / "split.csv"
    with open(split_file, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["group", "split"])
        writer.writerows(sorted(group_part.items()))
    return test_groups, split_file


def _prepare_idc(work: Path, quick: bool) -> dict:
    from histoclass.data.splits import split_by_group
    patients = 24 if quick else IDC_PATIENTS
    data = work / f"idc-synth-{patients}"
    if not (data / ".complete").is_file():
        if data.exists():
            shutil.rmtree(data)
        print(f"   making {patients} synthetic patients in {data} (once)", file=sys.stderr, flush=True)
        subprocess.run([sys.executable, "-m", "histoclass", "synth", str(data), "--patients", str(patients),
                        "--quiet"], check=True, stdout=subprocess.DEVNULL)
        (data / ".complete").write_text("")
    from histoclass.data import discover
    dataset = discover(data)
    groups = dataset.groups
    # The published IDC split: 84 train, 29 validation, 49 test patients of 162 (0.52/0.18/0.30).
    parts = split_by_group(dataset.labels, groups, (0.52, 0.18, 0.30), seed=0, balance="images")  # as its results were made
    group_part = dict(zip(groups, parts))
    manifest_dir = work / "reference"
    manifest_dir.mkdir(parents=True, exist_ok=True)
    test_groups, split_file = _write_split_for_both(
        manifest_dir, ((r.source, r.label, r.group) for r in dataset.records), group_part, work)
    return {"name": "idc", "reference_args": ["manifest", str(manifest_dir), str(manifest_dir / "test_groups.txt")],
            "data": str(data), "split_file": str(split_file), "max_test": IDC_MAX_TEST,
            "description": f"synthetic IDC-scale, {len(dataset.records)} patches of {len(group_part)} patients, "
                           f"by patient: {len(test_groups)} test patients ({int((parts == 'test').sum())} patches; "
                           f"histoclass is scored on a seeded sample of {IDC_MAX_TEST:,} of them)"}


# ---- running the two systems -------------------------------------------------------------

def _spawn(command: list[str], env: dict | None = None) -> dict:
    """Runs a child; returns its exit code, stdout, stderr tail, wall seconds and peak RSS (MB)."""
    import tempfile
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        started = time.perf_counter()
        process = subprocess.Popen(command, stdout=out, stderr=err, text=True, cwd=ROOT,
                                   env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})})
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - started
        out.seek(0)
        err.seek(0)
        return {"code": process.returncode, "stdout": out.read(), "stderr": err.read()[-3000:],
                "wall_s": wall, "peak_rss_mb": usage.ru_maxrss / 1024}


def _run_reference(task: dict, epochs: int) -> dict:
    child = _spawn([sys.executable, str(REFERENCE), *task["reference_args"], "--epochs", str(epochs)])
    if child["code"] != 0:
        raise RuntimeError(f"the reference failed on {task['name']}:\n{child['stderr']}")
    result = json.loads([line for line in child["stdout"].splitlines() if line.startswith("{")][-1])
    num_files = result["n_train"] + result["n_test"]
    result.update(wall_s=round(child["wall_s"], 1), peak_rss_mb=round(child["peak_rss_mb"]),
                  decode_files_per_s=round(num_files / result["load_s"], 1),
                  reload_s=result["load_s"],  # it has no cache: every run decodes again
                  time_to_target_auc_s=result["train_s"])
    return result


def _run_histoclass(task: dict, work: Path, recipe: str, epochs: int | None, target_auc: float | None,
                    tcmalloc: bool) -> dict:
    job_dir = work / "histoclass"
    if job_dir.exists():
        shutil.rmtree(job_dir)
    job_dir.mkdir(parents=True)
    spec = {"data": task["data"], "split_file": task["split_file"], "cache_dir": str(job_dir / "cache"),
            "work_dir": str(job_dir), "recipe": recipe, "target_auc": target_auc,
            "overrides": {"num_epochs": epochs} if epochs else {}, "max_test": task.get("max_test")}
    spec_path = job_dir / "spec.json"
    spec_path.write_text(json.dumps(spec))
    env = {"LD_PRELOAD": str(TCMALLOC)} if tcmalloc and TCMALLOC.is_file() else {}
    job = Path(__file__).with_name("histoclass_job.py")
    child = _spawn([sys.executable, str(job), "job", str(spec_path), str(job_dir / "result.json")], env)
    if child["code"] != 0:
        raise RuntimeError(f"histoclass failed on {task['name']}:\n{child['stderr']}")
    result = json.loads((job_dir / "result.json").read_text())
    result.update(wall_s=round(child["wall_s"], 1), peak_rss_mb=round(child["peak_rss_mb"]))
    reload = _spawn([sys.executable, str(job), "reload", str(spec_path), str(job_dir / "reload.json")], env)
    if reload["code"] != 0:
        raise RuntimeError(f"histoclass's cached reload failed on {task['name']}:\n{reload['stderr']}")
    result["reload_s"] = json.loads((job_dir / "reload.json").read_text())["reload_s"]
    result["reload_peak_rss_mb"] = round(reload["peak_rss_mb"])
    return result


# ---- the report --------------------------------------------------------------------------

# (key, label, higher is better)
SPEED_ROWS = [("decode_files_per_s", "decode files/s", True), ("reload_s", "cached reload s", False),
              ("train_img_per_s", "training images/s", True),
              ("time_to_target_auc_s", "time to ref. AUC s", False),
              ("predict_img_per_s", "inference images/s", True), ("peak_rss_mb", "peak memory MB", False)]
QUALITY_ROWS = [("accuracy", "accuracy"), ("balanced_accuracy", "balanced accuracy"), ("f1", "F1"),
                ("roc_auc", "ROC-AUC"), ("errors_per_1000", "errors / 1,000")]


def _ratios(reference: dict, ours: dict) -> dict:
    for result in (reference, ours):  # the two may score different numbers of test images
        result["errors_per_1000"] = round(1000 * (1 - result["accuracy"]), 1)
    ratios = {}
    for key, _, _ in SPEED_ROWS:
        a, b = ours.get(key), reference.get(key)
        ratios[key] = round(a / b, 3) if a is not None and b else None
    ratios["predict_tta_img_per_s"] = (round(ours["predict_tta_img_per_s"] / reference["predict_img_per_s"], 3)
                                       if reference.get("predict_img_per_s") else None)
    return ratios


def format_table(results: dict) -> str:
    lines = []
    for name, entry in results["sets"].items():
        ref, ours, ratios = entry["reference"], entry["histoclass"], entry["ratios"]
        lines.append(f"\n{name}: {entry['split']}")
        lines.append(f"  reference: the original CNN, {ref['epochs']} epochs; histoclass: {ours['recipe']} recipe "
                     f"({ours['model']}, batch {ours['batch_size']}), {ours['epochs_done']} epochs "
                     f"(best {ours['best_epoch']}), TTA {'on' if ours['test_time_augmentation'] else 'off'}, "
                     f"tcmalloc {'on' if ours['tcmalloc'] else 'off'}")
        lines.append(f"  {'':22}{'reference':>12}{'histoclass':>12}{'ratio':>9}")
        for key, label, _ in SPEED_ROWS:
            lines.append(f"  {label:22}{_fmt(ref.get(key)):>12}{_fmt(ours.get(key)):>12}{_fmt(ratios.get(key), 2):>9}")
        lines.append(f"  {'inference with 8 TTA':22}{'':>12}{_fmt(ours.get('predict_tta_img_per_s')):>12}"
                     f"{_fmt(ratios.get('predict_tta_img_per_s'), 2):>9}")
        for key, label in QUALITY_ROWS:
            digits = 1 if key == "errors_per_1000" else 4
            lines.append(f"  {label:22}{_fmt(ref.get(key), digits):>12}{_fmt(ours.get(key), digits):>12}")
        lines.append(f"  {'ECE after temperature':22}{'':>12}{_fmt(ours.get('test_ece_calibrated'), 4):>12}"
                     f"   (val {_fmt(ours.get('val_ece_after'), 4)}, raw test {_fmt(ours.get('test_ece_raw'), 4)})")
    return "\n".join(lines)


def _fmt(value, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, int) or (isinstance(value, float) and abs(value) >= 100 and digits <= 1):
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


def _machine() -> dict:
    import platform
    return {"platform": platform.platform(), "cpu_count": os.cpu_count(), "python": sys.version.split()[0],
            "started": time.strftime("%Y-%m-%dT%H:%M:%S")}


def _write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)


if __name__ == "__main__":
    sys.exit(main())
