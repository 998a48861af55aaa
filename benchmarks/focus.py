"""Focus, judged absolutely: how sharp real IDC patches are, how far a Gaussian blur takes them, and
how many blurred cells `histoclass slide`'s tile QC flags on rebuilt real slides, with the
slide-relative rule alone and with the run's training patches as a reference too (focus.json).

    nice -n 10 python benchmarks/focus.py --work /tmp/focus

No model is needed: the QC measures are the model's input tiles. The reference is measured on
the patches of the idc-sample patients that are not complete (a run's training patches stand
for them); the slides are the complete patients' (`histoclass rebuild`), as scanned, with an
out-of-focus band (Gaussian sigma 3 px at 4 µm/px, a quarter of the slide) and wholly out of
focus (sigma 1, 1.5, 3 px). Prints two tables: patches flagged by each candidate threshold, and
per slide version blurred cells flagged, clean cells flagged, slides warned (half or more of
their tiles blurred).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from histoclass.config import IDC_MICRONS_PER_PIXEL, IDC_PATCH_SIZE  # noqa: E402
from histoclass.data.decode import BadImage, decode_bytes, read_image_bytes  # noqa: E402
from histoclass.data.discover import discover  # noqa: E402
from histoclass.data.sharpness import focus_reference, sharpness  # noqa: E402
from histoclass.slides.qc import measure_tiles, tile_qc  # noqa: E402
from histoclass.slides.reader import open_slide  # noqa: E402
from histoclass.slides.rebuild import paint_patient  # noqa: E402
from histoclass.slides.tiling import plan_tiles, read_tiles  # noqa: E402
from histoclass.synth.artifacts import add_blur_band  # noqa: E402
from histoclass.synth.slide_file import write_pyramid_tiff  # noqa: E402

COMPLETE = ("8864", "8865", "8913", "8916", "8917", "8918", "8950", "8951", "8955", "8957", "8974", "8980",
            "8984", "9022", "9023", "9035", "9124", "9125", "10253", "14082", "14306")
SIGMAS = (0.5, 0.75, 1.0, 1.5, 2.0, 3.0)
CELL = IDC_PATCH_SIZE


def patches(records) -> np.ndarray:
    images = []
    for record in records:
        try:
            images.append(decode_bytes(read_image_bytes(record.source)))
        except BadImage:
            continue
    return np.stack([im for im in images if im.shape[:2] == (CELL, CELL)])


def blur(images: np.ndarray, sigma: float) -> np.ndarray:
    return np.stack([cv2.GaussianBlur(im, (0, 0), sigma) for im in images])


def candidates(reference: dict) -> dict[str, float]:
    p = reference["percentiles"]
    return {"0.5 x p01": 0.5 * p["p01"], "0.5 x p02": 0.5 * p["p02"], "0.5 x p05": 0.5 * p["p05"],
            "1.0 x p01": p["p01"], "1.0 x p02": p["p02"]}


def slide_cells(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    with open_slide(path) as slide:
        plan = plan_tiles(slide, IDC_MICRONS_PER_PIXEL, IDC_PATCH_SIZE)
        tiles, failed = read_tiles(slide, plan, np.arange(plan.num_tiles))
    return plan.xs // CELL, plan.ys // CELL, measure_tiles(tiles)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "idc-sample")
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--patients", nargs="+", default=list(COMPLETE))
    args = parser.parse_args()
    dataset = discover(args.data)
    training = patches([r for r in dataset.records if r.group not in COMPLETE])
    reference = focus_reference(training)
    print(f"reference: {reference['num_patches']} patches of the {len(set(r.group for r in dataset.records)) - 21} "
          f"incomplete patients; percentiles {reference['percentiles']}")
    rules = candidates(reference)

    held = patches([r for r in dataset.records if r.group in args.patients])
    print(f"\npatches of the complete patients ({len(held)}), share flagged by each absolute threshold")
    print("| patches | " + " | ".join(rules) + " |\n|---|" + "---|" * len(rules))
    for sigma in (0.0, *SIGMAS):
        values = sharpness(held if sigma == 0 else blur(held, sigma))
        judged = values[np.isfinite(values)]
        cells = [f"{100 * (judged < t).mean():.1f} %" for t in rules.values()]
        print(f"| {'as they are' if sigma == 0 else f'Gaussian sigma {sigma:g} px'} | " + " | ".join(cells) + " |")

    chosen = float(np.float32(0.5 * reference["percentiles"]["p02"]))
    versions = {"as scanned": None, "blurred band (sigma 3)": ("band", 3.0),
                "wholly blurred (sigma 1)": ("whole", 1.0), "wholly blurred (sigma 1.5)": ("whole", 1.5),
                "wholly blurred (sigma 3)": ("whole", 3.0)}
    print("\nrebuilt slides: blurred cells flagged / clean cells flagged / slides warned (half their tiles blurred)")
    print("| version | slide rule: blurred flagged | clean flagged | warned | + absolute (0.5 x p02): "
          "blurred flagged | clean flagged | warned |\n|---|---|---|---|---|---|---|")
    args.work.mkdir(parents=True, exist_ok=True)
    by_patient = {p: [r for r in dataset.records if r.group == p] for p in args.patients}
    painted = {p: paint_patient(records)[0] for p, records in by_patient.items()}
    for name, how in versions.items():
        totals = {rule: [0, 0, 0, 0, 0, 0] for rule in ("slide", "absolute")}
        for seed, (patient, rgb) in enumerate(painted.items()):
            blurred_px = np.zeros(rgb.shape[:2], bool)
            if how and how[0] == "band":
                rgb, blurred_px = add_blur_band(rgb, seed=seed, sigma=how[1])
            elif how:
                rgb, blurred_px = cv2.GaussianBlur(rgb, (0, 0), how[1]), np.ones(rgb.shape[:2], bool)
            path = write_pyramid_tiff(args.work / f"{patient}.tiff", rgb, IDC_MICRONS_PER_PIXEL)
            columns, rows, measures = slide_cells(path)
            share = np.array([blurred_px[r * CELL:(r + 1) * CELL, c * CELL:(c + 1) * CELL].mean()
                              for c, r in zip(columns, rows)])
            for rule, focus in (("slide", None), ("absolute", {"percentiles": reference["percentiles"]})):
                reasons = tile_qc(measures, focus=focus)
                flagged = reasons == "blur"
                t = totals[rule]
                t[0] += int((flagged & (share >= 0.5)).sum())
                t[1] += int((share >= 0.5).sum())
                t[2] += int((flagged & (share == 0)).sum())
                t[3] += int((share == 0).sum())
                t[4] += int(flagged.mean() >= 0.5)
                t[5] += 1

        def cells(t):
            ratio = lambda a, b: f"{100 * a / b:.1f} %" if b else "n/a"  # noqa: E731
            return f"{ratio(t[0], t[1])} | {ratio(t[2], t[3])} | {t[4]} of {t[5]}"
        print(f"| {name} | {cells(totals['slide'])} | {cells(totals['absolute'])} |", flush=True)
    print(f"\n(absolute threshold used: {chosen:.2f})")


if __name__ == "__main__":
    main()
