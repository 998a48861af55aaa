"""The neighbourhood, measured: Dice on rebuilt real slides of held-out patients with each tile's
own probability, and with the probabilities smoothed over neighbouring tiles at the threshold
fitted on the validation patients' patch grids (calibration.json `neighbourhood`).

    nice -n 10 python benchmarks/neighbourhood.py --work /tmp/neighbourhood          # trains once, cached
    python benchmarks/neighbourhood.py --work /tmp/neighbourhood --epochs 2           # a smoke run

One run (the `strong` recipe) is trained on the idc-sample patients other than HELD_OUT and
VALIDATION (split file; test = HELD_OUT); finalize fits the neighbourhood's threshold on the
VALIDATION patients (complete ones: their patches form grids). The HELD_OUT patients are rebuilt
(`histoclass rebuild`) and run through `histoclass slide --truth` twice: as the run is, and with
the neighbourhood removed from a copy of its calibration.json. Prints per slide and pooled
Dice (over classified tiles), tile balanced accuracy and the neighbourhood's fitted values.
"""
from __future__ import annotations

import argparse
import csv
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

HELD_OUT = ("8864", "8865", "10253", "8917", "9124")
VALIDATION = ("8950", "8955", "9035", "9125", "14082")


def trained_run(work: Path, data: Path, epochs: int) -> Path:
    from histoclass.config import config_for_recipe
    from histoclass.training.train import train
    run = work / f"run-{epochs}ep"
    if (run / "calibration.json").exists():
        return run
    shutil.rmtree(run, ignore_errors=True)
    patients = [row["patient"] for row in csv.DictReader(open(data / "patients.csv"))]
    split = work / "split.csv"
    work.mkdir(parents=True, exist_ok=True)
    with open(split, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["group", "split"])
        for patient in patients:
            writer.writerow([patient, "test" if patient in HELD_OUT else "val" if patient in VALIDATION else "train"])
    config = config_for_recipe("strong", num_epochs=epochs)
    print(f"training {run.name} ...", flush=True)
    return train(data, run, config, split_file=split, cache_dir=work / "cache", progress=False)


def slide_versions(work: Path, data: Path) -> dict[str, Path]:
    """The held-out patients' rebuilt slides (with their annotations beside them) as scanned,
    with an out-of-focus band, and wholly out of focus."""
    import cv2
    from histoclass.config import IDC_MICRONS_PER_PIXEL
    from histoclass.slides.reader import open_slide
    from histoclass.slides.rebuild import rebuild_slides
    from histoclass.synth.artifacts import add_blur_band
    from histoclass.synth.slide_file import write_pyramid_tiff
    rebuilt = work / "rebuilt"
    if not rebuilt.exists():
        rebuild_slides(data, rebuilt, progress=False)
    versions = {"as scanned": rebuilt, "blurred band (sigma 3 px)": work / "band", "wholly blurred (sigma 1.5 px)":
                work / "blurred"}
    for seed, patient in enumerate(HELD_OUT):
        if (work / "blurred" / f"{patient}.tiff").exists():
            continue
        with open_slide(rebuilt / f"{patient}.tiff") as slide:
            rgb = slide.read_region((0, 0), 0, slide.dimensions)
        write_pyramid_tiff(work / "band" / f"{patient}.tiff", add_blur_band(rgb, seed=seed)[0], IDC_MICRONS_PER_PIXEL)
        write_pyramid_tiff(work / "blurred" / f"{patient}.tiff", cv2.GaussianBlur(rgb, (0, 0), 1.5),
                           IDC_MICRONS_PER_PIXEL)
    return versions


def score(summaries: list[dict]) -> dict:
    ok = [s for s in summaries if s["status"] == "ok" and "tp" in s.get("truth", {})]
    tp, fp, fn, tn = (sum(s["truth"][k] for s in ok) for k in ("tp", "fp", "fn", "tn"))
    unclassified = sum(s["truth"]["tumour_tiles_unclassified"] + s["truth"]["tumour_tiles_off_tissue"] for s in ok)
    sensitivity, specificity = tp / max(tp + fn, 1), tn / max(tn + fp, 1)
    return {"dice": 2 * tp / max(2 * tp + fp + fn, 1), "dice_all": 2 * tp / max(2 * tp + fp + fn + unclassified, 1),
            "bac": (sensitivity + specificity) / 2, "sensitivity": sensitivity, "specificity": specificity,
            "per_slide": " ".join("n/a" if s["truth"]["dice"] is None else f"{s['truth']['dice']:.2f}" for s in ok),
            "warned": sum(bool(s.get("out_of_focus")) for s in ok), "slides": len(ok),
            "blurred": (sum(s.get("tiles_qc", {}).get("blur", 0) for s in ok)
                        / max(sum(s["tiles_on_tissue"] for s in ok), 1))}


def main() -> None:
    from histoclass.inference.run import load_run
    from histoclass.slides.pipeline import run_slides
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "idc-sample")
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--train-only", action="store_true")
    args = parser.parse_args()
    run_folder = trained_run(args.work, args.data, args.epochs)
    if args.train_only:
        return
    calibration = json.loads((run_folder / "calibration.json").read_text())
    print(f"run {run_folder}: tile threshold {calibration['threshold']:.3f}; "
          f"neighbourhood {calibration.get('neighbourhood')}")
    # The same run without focus.json: blur judged against each slide alone (the runs before it).
    before = args.work / f"{run_folder.name}-without-focus"
    if not before.exists():
        shutil.copytree(run_folder, before)
        (before / "focus.json").unlink(missing_ok=True)
    runs = {"focus.json": load_run(run_folder), "slide alone": load_run(before)}
    results = args.work / "results"
    shutil.rmtree(results, ignore_errors=True)
    print("| slides (held-out patients) | blur reference | calls | Dice | Dice counting unclassified | tile BAC | "
          "sensitivity | specificity | tiles blurred | warned out of focus | Dice per slide |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    rebuilt = args.work / "rebuilt"
    for version, folder in slide_versions(args.work, args.data).items():
        for reference, run in runs.items():
            for calls, smoothed in (("tiles alone", False), ("neighbourhood", True)):
                if reference == "slide alone" and (smoothed or version == "as scanned"):
                    continue
                out = results / f"{folder.name}-{reference.replace(' ', '-')}-{calls.replace(' ', '-')}"
                summaries = run_slides(run, [folder / f"{p}.tiff" for p in HELD_OUT], out, progress=False,
                                       truth=rebuilt, neighbourhood=smoothed)
                m = score(summaries)
                print(f"| {version} | {reference} | {calls} | {m['dice']:.3f} | {m['dice_all']:.3f} | {m['bac']:.3f} | "
                      f"{m['sensitivity']:.3f} | {m['specificity']:.3f} | {100 * m['blurred']:.1f} % | "
                      f"{m['warned']} of {m['slides']} | {m['per_slide']} |", flush=True)


if __name__ == "__main__":
    main()
