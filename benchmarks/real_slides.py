"""Real slides, measured: a `strong` run trained without patient P, scored on P's rebuilt slide
(`histoclass rebuild`) against its IDC annotation (`histoclass slide --truth`), as scanned,
re-stained as another lab would, and with pen ink and an out-of-focus band.

    nice -n 10 python benchmarks/real_slides.py --work /tmp/real-slides            # 12 epochs a run
    python benchmarks/real_slides.py --work /tmp/real-slides --quick                # 2 epochs: a smoke run

For each complete idc-sample patient P (8864, 8865, 10253) a run is trained on the other 16
patients (split file: validation = the smallest other complete patient, which holds both
classes, and two malignant-only patients; no test part) and cached in --work by patient and
epochs (delete --work/runs after the strong recipe changes). Prints a table:
Dice of malignant tiles (pooled over the slides, and per slide), tile balanced accuracy, the
share of annotated tissue (IDC patches) with no tile on the slide's tissue, and with no
classified tile (QC-flagged tiles are not classified), the share of classified tiles on glass, inked tiles classified, blurred tiles flagged and clean tiles flagged (the last two
need tiles.csv's `qc` column: n/a where the slide step has none). Versions whose artefact
module is missing are left out with a note.
"""
from __future__ import annotations

import argparse
import csv
import json
import logging
import shutil
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from histoclass.config import IDC_MICRONS_PER_PIXEL, IDC_PATCH_SIZE  # noqa: E402
from histoclass.data.discover import discover  # noqa: E402
from histoclass.slides.rebuild import paint_patient, rebuild_slides  # noqa: E402
from histoclass.synth.slide_file import write_pyramid_tiff  # noqa: E402

COMPLETE = ("8864", "8865", "10253")
SMALL_MALIGNANT_ONLY = ("8918", "8957")  # 120 and 83 patches: validation's malignant side
CELL = IDC_PATCH_SIZE  # level-0 px of one tile at the model's 4 µm/px and 50 px
INK_SHARE = 0.1  # a tile with at least this share of ink pixels is an inked tile
BLUR_SHARE = 0.5  # ... of blurred pixels, a blurred tile


# ---- runs ----------------------------------------------------------------------------------

def split_without(patient: str, patients: list[str]) -> dict[str, str]:
    """group -> part for a run that never sees `patient`."""
    others = [p for p in COMPLETE if p != patient]
    sizes = {p: n for p, n in patients}
    val = {min(others, key=lambda p: sizes[p]), *SMALL_MALIGNANT_ONLY}
    return {p: ("val" if p in val else "train") for p, _ in patients if p != patient}


def trained_run(work: Path, data: Path, patient: str, epochs: int) -> Path:
    from histoclass.config import config_for_recipe
    from histoclass.training.train import train
    run = work / "runs" / f"without-{patient}-{epochs}ep"
    if (run / "calibration.json").exists():
        return run
    shutil.rmtree(run, ignore_errors=True)
    dataset = discover(data)
    counts: dict[str, int] = {}
    for record in dataset.records:
        counts[record.group] = counts.get(record.group, 0) + 1
    split = work / "splits" / f"without-{patient}.csv"
    split.parent.mkdir(parents=True, exist_ok=True)
    with open(split, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["group", "split"])
        writer.writerows(sorted(split_without(patient, sorted(counts.items())).items()))
    config = config_for_recipe("strong", num_epochs=epochs, test_fraction=0.0)
    print(f"training {run.name} ({epochs} epochs) ...", flush=True)
    return train(data, run, config, split_file=split, cache_dir=work / "cache", progress=False)


# ---- slide versions --------------------------------------------------------------------------

def artefact_modules():
    """(restain, add_pen_ink, add_blur_band), None for each not in this checkout yet."""
    try:
        from histoclass.synth.restain import restain_like_another_lab
    except ImportError:
        restain_like_another_lab = None
    try:
        from histoclass.synth.artifacts import add_blur_band, add_pen_ink
    except ImportError:
        add_pen_ink = add_blur_band = None
    return restain_like_another_lab, add_pen_ink, add_blur_band


def write_versions(work: Path, data: Path, patients: list[str]) -> dict[str, dict]:
    """version -> {"folder", "masks": {patient: (ink, blur)}, "tissue": {patient: patch cells}}."""
    restain, add_pen_ink, add_blur_band = artefact_modules()
    rebuilt = work / "rebuilt"
    if not rebuilt.exists():
        rebuild_slides(data, rebuilt, progress=False)
    dataset = discover(data)
    versions = {"as scanned": {"folder": rebuilt, "masks": {}}}
    if restain is not None:
        versions["re-stained"] = {"folder": work / "slides-restained", "masks": {}}
    else:
        print("note: histoclass.synth.restain is not in this checkout; no re-stained row")
    if add_pen_ink is not None:
        versions["ink and blur"] = {"folder": work / "slides-ink-blur", "masks": {}}
    else:
        print("note: histoclass.synth.artifacts is not in this checkout; no ink-and-blur row")
    tissue = {}
    for seed, patient in enumerate(patients):
        records = [r for r in dataset.records if r.group == patient]
        rgb, boxes, _ = paint_patient(records)
        tissue[patient] = {(left // CELL, top // CELL) for left, top, *_ in boxes}
        if "re-stained" in versions:
            write_pyramid_tiff(versions["re-stained"]["folder"] / f"{patient}.tiff", restain(rgb, seed=seed),
                               IDC_MICRONS_PER_PIXEL)
        if "ink and blur" in versions:
            inked, ink = add_pen_ink(rgb, seed=seed)
            marked, blur = add_blur_band(inked, seed=seed)
            write_pyramid_tiff(versions["ink and blur"]["folder"] / f"{patient}.tiff", marked, IDC_MICRONS_PER_PIXEL)
            versions["ink and blur"]["masks"][patient] = (cell_shares(ink), cell_shares(blur))
    for version in versions.values():
        version["tissue"] = tissue
    return versions


def cell_shares(mask: np.ndarray) -> np.ndarray:
    """Share of True pixels per 50 px cell, (rows, columns)."""
    rows, columns = mask.shape[0] // CELL, mask.shape[1] // CELL
    cells = mask[:rows * CELL, :columns * CELL].reshape(rows, CELL, columns, CELL)
    return cells.mean(axis=(1, 3))


# ---- scoring -------------------------------------------------------------------------------

def score_slide(result: Path, tissue: set, masks) -> dict:
    summary = json.loads((result / "summary.json").read_text())
    if summary["status"] != "ok":
        return {"error": summary["error"]}
    with open(result / "tiles.csv", newline="") as handle:
        tiles = list(csv.DictReader(handle))
    has_qc = bool(tiles) and "qc" in tiles[0]
    cell = lambda t: (int(t["x"]) // CELL, int(t["y"]) // CELL)  # noqa: E731
    classified = [t for t in tiles if t["label"] != ""]
    classified_cells = {cell(t) for t in classified}
    listed = {cell(t): t for t in tiles}
    out = {**summary["truth"], "has_qc": has_qc,
           "tissue_cells": len(tissue), "tissue_cells_untiled": len(tissue - set(listed)),
           "tissue_cells_unclassified": len(tissue - classified_cells),
           "classified": len(classified), "classified_on_glass": sum(cell(t) not in tissue for t in classified)}
    ink, blur = masks if masks else (None, None)

    def share(grid, c):
        return 0.0 if grid is None or c[1] >= grid.shape[0] or c[0] >= grid.shape[1] else float(grid[c[1], c[0]])

    candidates = tissue | set(listed)
    inked = [c for c in candidates if share(ink, c) >= INK_SHARE]
    blurred = [c for c in tissue if share(blur, c) >= BLUR_SHARE]
    clean = [c for c in listed if share(ink, c) == 0 and share(blur, c) == 0]
    out.update(inked=len(inked), inked_classified=sum(c in classified_cells for c in inked),
               blurred=len(blurred), clean=len(clean))
    if has_qc:
        out.update(blurred_flagged=sum(c in listed and listed[c]["qc"] != "" for c in blurred),
                   clean_flagged=sum(listed[c]["qc"] != "" for c in clean))
    return out


def ratio(a, b):
    return a / b if b else float("nan")


def row(version: str, scores: dict[str, dict]) -> list[str]:
    ok = [s for s in scores.values() if "error" not in s]
    total = {k: sum(s[k] for s in ok) for k in ("tp", "fp", "fn", "tn", "tissue_cells", "tissue_cells_untiled",
                                                "tissue_cells_unclassified", "classified", "classified_on_glass", "inked", "inked_classified",
                                                "blurred", "clean")}
    dice = ratio(2 * total["tp"], 2 * total["tp"] + total["fp"] + total["fn"])
    bac = (ratio(total["tp"], total["tp"] + total["fn"]) + ratio(total["tn"], total["tn"] + total["fp"])) / 2
    per_slide = ", ".join(f"{p} {s['dice']:.3f}" if "error" not in s and s["dice"] is not None else f"{p} failed"
                          for p, s in scores.items())
    has_qc = ok and all(s["has_qc"] for s in ok)
    fmt = lambda x: "n/a" if x != x else f"{100 * x:.1f} %"  # noqa: E731
    return [version, f"{dice:.3f} ({per_slide})", f"{bac:.3f}",
            fmt(ratio(total["tissue_cells_untiled"], total["tissue_cells"])),
            fmt(ratio(total["tissue_cells_unclassified"], total["tissue_cells"])),
            fmt(ratio(total["classified_on_glass"], total["classified"])),
            fmt(ratio(total["inked_classified"], total["inked"])) if total["inked"] else "n/a",
            fmt(ratio(sum(s["blurred_flagged"] for s in ok), total["blurred"])) if has_qc and total["blurred"] else "n/a",
            fmt(ratio(sum(s["clean_flagged"] for s in ok), total["clean"])) if has_qc else "n/a"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "idc-sample")
    parser.add_argument("--work", type=Path, required=True, help="Folder for runs (kept), slides and results.")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--quick", action="store_true", help="2 epochs a run: a smoke run, not comparable")
    parser.add_argument("--patients", nargs="+", default=list(COMPLETE))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    from histoclass.slides.pipeline import run_slides
    epochs = 2 if args.quick else args.epochs
    runs = {p: trained_run(args.work, args.data, p, epochs) for p in args.patients}
    versions = write_versions(args.work, args.data, args.patients)
    results = args.work / f"results-{epochs}ep"
    shutil.rmtree(results, ignore_errors=True)
    table = []
    for name, version in versions.items():
        scores = {}
        for patient in args.patients:
            out = results / name.replace(" ", "-") / patient
            run_slides(runs[patient], [version["folder"] / f"{patient}.tiff"], out, truth=args.work / "rebuilt",
                       progress=False)
            scores[patient] = score_slide(out / f"{patient}.tiff", version["tissue"][patient],
                                          version["masks"].get(patient))
        (results / name.replace(" ", "-") / "scores.json").write_text(json.dumps(scores, indent=1))
        table.append(row(name, scores))
    header = ["version", "Dice of malignant tiles (per slide)", "tile BAC", "annotated tissue with no tile",
              "... not classified (no tile, QC or unreadable)",
              "classified tiles on glass", "inked tiles classified", "blurred tiles flagged", "clean tiles flagged"]
    print(f"\nstrong recipe, {epochs} epochs, each slide scored by the run trained without its patient")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for line in table:
        print("| " + " | ".join(line) + " |")


if __name__ == "__main__":
    main()
