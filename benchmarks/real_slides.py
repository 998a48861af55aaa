"""Real slides, measured: a run scored on slides rebuilt from held-out complete idc-sample patients
(`histoclass rebuild`: their real patches at their coordinates, the IDC annotation as truth), each
slide made six ways, as issue 24 lists them.

    nice -n 10 python benchmarks/real_slides.py --work /tmp/real-slides                 # trains a proxy run
    python benchmarks/real_slides.py --work /tmp/real-slides --run runs/idc            # a run of yours
    nice -n 10 python benchmarks/real_slides.py --work /tmp/real-slides --stain-normalization reinhard

Without --run, a run of the original CNN of model.py (`original` recipe, --epochs epochs, a
proxy: quick, not a strong model) is trained on every idc-sample patient except the held-out
ones (validation: the two small malignant-only patients and the smallest other complete one)
and cached in --work. A run given with --run should not have seen the held-out patients.

The versions of each slide (the same tissue; realistic glass from `synth.glass` unless said):
- as scanned, flat glass: the rebuilt slide on plain white glass (the earlier releases' slides);
- as scanned, realistic glass: uneven light (~10 grey levels across, over the tissue too),
  vignetting, tint, noise, dust and a coverslip edge;
- re-stained: other stain amounts (`synth.restain`, another lab's protocol);
- other stain colours: the same stain amounts through other H and E vectors;
- ink over tumour + one blurred band: four semi-transparent pen strokes (blue, green, black, red)
  through malignant cells, and a band out of focus (Gaussian, 3 px);
- wholly out of focus: the whole slide blurred (Gaussian, 3 px).

Columns, over the slides pooled, per 50 px patch cell (one tile at the model's 4 µm/px):
Dice and tile BAC and specificity over the annotated cells the tiles classified; classified tiles
on glass (a classified tile on no patch cell); missed tissue (patch cells with no classified
tile, leaving out cells with any ink or blur); inked cells classified (cells at least INK_SHARE
inked); blurred cells flagged (at least BLUR_SHARE blurred, QC reason set); slides whose
summary.json carries a QC warning. Then, from `summary.json` `truth` (`--truth`, the slide's own
scoring of its tiles against the annotation, pooled over the slides): Dice counting the
unclassified and off-tissue tumour tiles as missed (`dice_all`), and `coverage`, the share of
the annotated tumour area under classified tiles (weighted by each slide's annotated area).
"""
from __future__ import annotations

import argparse
import csv
import json
import logging
import shutil
import sys
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from histoclass.config import IDC_MICRONS_PER_PIXEL, IDC_PATCH_SIZE  # noqa: E402
from histoclass.data.discover import discover  # noqa: E402
from histoclass.slides.rebuild import glass_seed, paint_patient, tumor_annotation  # noqa: E402
from histoclass.stain.maths import HED_FROM_RGB, RGB_FROM_HED, density_table, intensity  # noqa: E402
from histoclass.synth.artifacts import add_blur_band, add_pen_ink  # noqa: E402
from histoclass.synth.glass import add_scanner_glass  # noqa: E402
from histoclass.synth.restain import restain_like_another_lab  # noqa: E402
from histoclass.synth.slide_file import write_pyramid_tiff  # noqa: E402
from histoclass.fileio import write_json_atomic  # noqa: E402

COMPLETE = ("8864", "8865", "8913", "8916", "8917", "8918", "8950", "8951", "8955", "8957", "8974", "8980",
            "8984", "9022", "9023", "9035", "9124", "9125", "10253", "14082", "14306")
HELD_OUT = ("8864", "8865", "8913", "10253")
SMALL_MALIGNANT_ONLY = ("8918", "8957")  # 120 and 83 patches: validation's malignant side
CELL = IDC_PATCH_SIZE  # level-0 px of one tile at the model's 4 µm/px and 50 px
INK_SHARE = 0.1  # a cell with at least this share of ink pixels is an inked cell
BLUR_SHARE = 0.5  # ... of blurred pixels, a blurred cell
INK_STRENGTH = (0.3, 0.7)  # semi-transparent strokes: the tissue shows through
BLUR_SIGMA = 3.0
VERSIONS = ("as scanned, flat glass", "as scanned, realistic glass", "re-stained", "other stain colours",
            "ink over tumour + blurred band", "wholly out of focus")


# ---- the run -------------------------------------------------------------------------------

def trained_run(work: Path, data: Path, held_out: list[str], epochs: int, recipe: str,
                stain_normalization: str | None = None) -> Path:
    """A run of `recipe` that never saw `held_out`, trained once and cached in `work`
    (`stain_normalization`: the recipe's own when None)."""
    from histoclass.config import config_for_recipe
    from histoclass.training.train import train
    stain = f"-{stain_normalization}" if stain_normalization else ""
    run = work / "runs" / f"{recipe}{stain}-{epochs}ep-without-{'-'.join(held_out)}"
    if (run / "calibration.json").exists():
        return run
    shutil.rmtree(run, ignore_errors=True)
    counts: dict[str, int] = {}
    for record in discover(data).records:
        counts[record.group] = counts.get(record.group, 0) + 1
    others = [p for p in COMPLETE if p not in held_out and p not in SMALL_MALIGNANT_ONLY and p in counts]
    val = {min(others, key=counts.get), *SMALL_MALIGNANT_ONLY}
    split = work / "splits" / f"{run.name}.csv"
    split.parent.mkdir(parents=True, exist_ok=True)
    with open(split, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["group", "split"])
        writer.writerows(sorted((p, "val" if p in val else "train") for p in counts if p not in held_out))
    config = config_for_recipe(recipe, num_epochs=epochs, test_fraction=0.0, stain_normalization=stain_normalization)
    print(f"training {run.name} ...", flush=True)
    return train(data, run, config, split_file=split, cache_dir=work / "cache", progress=False)


# ---- the slides ----------------------------------------------------------------------------

def other_stain_colours(rgb: np.ndarray, seed: int) -> np.ndarray:
    """`rgb` with the same haematoxylin and eosin amounts (colour deconvolution, `stain.maths`)
    through other stain vectors: haematoxylin and eosin each turned by about 0.15 (another
    lab's dyes); the residual channel is kept, glass stays glass."""
    rng = np.random.default_rng(seed)
    vectors = RGB_FROM_HED.astype(np.float64).copy()
    for row in (0, 1):
        vectors[row] = np.clip(vectors[row] + rng.normal(0, 0.12, 3), 0.02, None)
        vectors[row] /= np.linalg.norm(vectors[row])
    matrix = HED_FROM_RGB.astype(np.float64) @ vectors
    table = density_table()
    out = np.empty_like(rgb)
    for top in range(0, rgb.shape[0], 512):
        density = np.maximum(table[rgb[top:top + 512]] @ matrix, 0.0)
        out[top:top + 512] = np.clip(np.rint(intensity(density)), 0, 255).astype(np.uint8)
    return out


def cell_shares(mask: np.ndarray) -> np.ndarray:
    """Share of True pixels per 50 px cell, (rows, columns)."""
    rows, columns = mask.shape[0] // CELL, mask.shape[1] // CELL
    return mask[:rows * CELL, :columns * CELL].reshape(rows, CELL, columns, CELL).mean(axis=(1, 3))


def write_versions(work: Path, data: Path, patients: list[str]) -> dict:
    """{patient: {"cells": {cell: label}, "slides": {version: (path, ink shares, blur shares)}}}."""
    dataset = discover(data)
    out = {}
    for patient in patients:
        rgb, boxes, _ = paint_patient([r for r in dataset.records if r.group == patient])
        cells = {(left // CELL, top // CELL): label for left, top, _, _, label in boxes}
        seed = glass_seed(patient)
        folder = work / "slides"
        folder.mkdir(parents=True, exist_ok=True)
        write_json_atomic(folder / f"{patient}.geojson", tumor_annotation(boxes))
        slides = {}

        def write(version, paint):
            """paint() -> (image, ink shares or None, blur shares or None), only when not cached."""
            path = folder / version.replace(" ", "-").replace(",", "").replace("+", "and") / f"{patient}.tiff"
            path.parent.mkdir(parents=True, exist_ok=True)
            if not path.with_suffix(".npz").exists():
                image, ink, blur = paint()
                write_pyramid_tiff(path, image, IDC_MICRONS_PER_PIXEL)
                np.savez_compressed(path.with_suffix(".npz"), ink=ink if ink is not None else np.zeros(0),
                                    blur=blur if blur is not None else np.zeros(0))
            saved = np.load(path.with_suffix(".npz"))
            slides[version] = (path, saved["ink"] if saved["ink"].size else None,
                               saved["blur"] if saved["blur"].size else None)

        def ink_and_blur():
            rng = np.random.default_rng(seed)
            tumour = [c for c, label in cells.items() if label == 1]
            centres = [((x + 0.5) * CELL, (y + 0.5) * CELL) for x, y in
                       (tumour[i] for i in rng.choice(len(tumour), 4, replace=len(tumour) < 4))]
            inked, ink = add_pen_ink(rgb, seed=seed, colors=("blue", "green", "black", "red"), through=centres,
                                     strength=INK_STRENGTH)
            marked, band = add_blur_band(add_scanner_glass(inked, seed), seed=seed, sigma=BLUR_SIGMA)
            return marked, cell_shares(ink), cell_shares(band)

        write(VERSIONS[0], lambda: (rgb, None, None))
        write(VERSIONS[1], lambda: (add_scanner_glass(rgb, seed), None, None))
        write(VERSIONS[2], lambda: (add_scanner_glass(restain_like_another_lab(rgb, seed=seed), seed), None, None))
        write(VERSIONS[3], lambda: (add_scanner_glass(other_stain_colours(rgb, seed), seed), None, None))
        write(VERSIONS[4], ink_and_blur)
        write(VERSIONS[5], lambda: (add_scanner_glass(cv2.GaussianBlur(rgb, (0, 0), BLUR_SIGMA), seed), None,
                                    np.ones((rgb.shape[0] // CELL, rgb.shape[1] // CELL))))
        out[patient] = {"cells": cells, "slides": slides}
    return out


# ---- scoring -------------------------------------------------------------------------------

def score_slide(result: Path, cells: dict, ink, blur) -> dict:
    """Counts over one slide's result folder (see the module's docstring)."""
    summary = json.loads((result / "summary.json").read_text())
    if summary["status"] != "ok":
        return {"error": summary["error"]}
    with open(result / "tiles.csv", newline="") as handle:
        tiles = list(csv.DictReader(handle))
    listed = {(int(t["x"]) // CELL, int(t["y"]) // CELL): t for t in tiles}
    classified = {c: int(t["label"]) for c, t in listed.items() if t["label"] != ""}

    def share(grid, c):
        return 0.0 if grid is None or c[1] >= grid.shape[0] or c[0] >= grid.shape[1] else float(grid[c[1], c[0]])

    inked = {c for c in set(cells) | set(listed) if share(ink, c) >= INK_SHARE}
    blurred = {c for c in cells if share(blur, c) >= BLUR_SHARE}
    touched = {c for c in cells if share(ink, c) > 0 or share(blur, c) > 0}  # set aside by QC, rightly
    pairs = [(cells[c], label) for c, label in classified.items() if c in cells]
    out = {"tp": sum(t == 1 and p == 1 for t, p in pairs), "fp": sum(t == 0 and p == 1 for t, p in pairs),
           "fn": sum(t == 1 and p == 0 for t, p in pairs), "tn": sum(t == 0 and p == 0 for t, p in pairs),
           "classified": len(classified), "on_glass": sum(c not in cells for c in classified),
           "plain_cells": len(set(cells) - touched - blurred),
           "plain_missed": len(set(cells) - touched - blurred - set(classified)),
           "inked": len(inked), "inked_classified": len(inked & set(classified)),
           "blurred": len(blurred),
           "blurred_flagged": sum(c in listed and listed[c].get("qc", "") not in ("", None) for c in blurred),
           "warned": int(bool(summary.get("qc_warning")))}
    truth = summary.get("truth") or {}
    if truth.get("dice_all") is not None:
        area = truth["annotated_area_mm2"]
        out.update({"truth_tp": truth["tp"], "truth_fp": truth["fp"],
                    "truth_fn_all": truth["fn"] + truth["tumour_tiles_unclassified"] + truth["tumour_tiles_off_tissue"],
                    "truth_area": area, "truth_covered": (truth["coverage"] or 0.0) * area})
    return out


def ratio(a, b):
    return a / b if b else float("nan")


def row(version: str, scores: dict[str, dict]) -> list[str]:
    ok = [s for s in scores.values() if "error" not in s]
    total = {k: sum(s.get(k, 0) for s in ok) for k in set().union(*ok)} if ok else {}
    if not ok:
        return [version] + ["failed"] * (len(HEADER) - 1)
    dice = ratio(2 * total["tp"], 2 * total["tp"] + total["fp"] + total["fn"])
    sensitivity, specificity = ratio(total["tp"], total["tp"] + total["fn"]), ratio(total["tn"], total["tn"] + total["fp"])
    pct = lambda x: "n/a" if x != x else f"{100 * x:.1f} %"  # noqa: E731
    return [version, f"{dice:.3f}", f"{(sensitivity + specificity) / 2:.3f}", f"{specificity:.2f}",
            pct(ratio(total["on_glass"], total["classified"])), pct(ratio(total["plain_missed"], total["plain_cells"])),
            pct(ratio(total["inked_classified"], total["inked"])), pct(ratio(total["blurred_flagged"], total["blurred"])),
            f"{total['warned']} of {len(scores)}" + (f" ({len(scores) - len(ok)} failed)" if len(ok) < len(scores) else ""),
            f"{ratio(2 * total.get('truth_tp', 0), 2 * total.get('truth_tp', 0) + total.get('truth_fp', 0) + total.get('truth_fn_all', 0)):.3f}",
            pct(ratio(total.get("truth_covered", 0.0), total.get("truth_area", 0.0)))]


HEADER = ["version", "Dice", "tile BAC", "specificity", "classified tiles on glass", "missed tissue",
          "inked cells classified", "blurred cells flagged", "slides warned", "dice_all", "coverage"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "idc-sample")
    parser.add_argument("--work", type=Path, required=True, help="Folder for the run (kept), slides and results.")
    parser.add_argument("--run", type=Path, help="A trained run to score (default: train a proxy in --work).")
    parser.add_argument("--recipe", default="original", help="Recipe of the proxy run (default: the original CNN).")
    parser.add_argument("--epochs", type=int, default=4, help="Epochs of the proxy run.")
    parser.add_argument("--stain-normalization", choices=("none", "reinhard", "macenko"),
                        help="Stain normalization of the proxy run (default: the recipe's); cached separately.")
    parser.add_argument("--tiles-alone", action="store_true",
                        help="Call each tile alone (histoclass slide --tiles-alone), not from the neighbourhood.")
    parser.add_argument("--patients", nargs="+", default=list(HELD_OUT), help="Held-out complete patients.")
    parser.add_argument("--versions", nargs="+", type=int, default=list(range(len(VERSIONS))),
                        help=f"Which versions (0-{len(VERSIONS) - 1}): {'; '.join(VERSIONS)}.")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    from histoclass.slides.pipeline import run_slides
    run = args.run or trained_run(args.work, args.data, args.patients, args.epochs, args.recipe,
                                  args.stain_normalization)
    slides = write_versions(args.work, args.data, args.patients)
    results = args.work / "results" / (run.name + ("-tiles-alone" if args.tiles_alone else ""))
    shutil.rmtree(results, ignore_errors=True)
    table = []
    for index in args.versions:
        version = VERSIONS[index]
        scores = {}
        for patient in args.patients:
            path, ink, blur = slides[patient]["slides"][version]
            out = results / path.parent.name / patient
            run_slides(run, [path], out, progress=False, truth=args.work / "slides" / f"{patient}.geojson",
                       neighbourhood=False if args.tiles_alone else None)
            scores[patient] = score_slide(out / path.name, slides[patient]["cells"], ink, blur)
        (results / path.parent.name / "scores.json").write_text(json.dumps(scores, indent=1))
        table.append(row(version, scores))
        print(" | ".join(table[-1]), flush=True)
    print(f"\n{run}{' (tiles alone)' if args.tiles_alone else ''} on {len(args.patients)} held-out complete idc-sample patients ({', '.join(args.patients)})")
    print("| " + " | ".join(HEADER) + " |")
    print("|" + "---|" * len(HEADER))
    for line in table:
        print("| " + " | ".join(line) + " |")


if __name__ == "__main__":
    main()
