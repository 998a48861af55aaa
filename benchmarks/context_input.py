#!/usr/bin/env python3
"""A context input, measured: does the model do better when it sees each IDC patch with the
patches around it, than with the patch alone and its neighbours' probabilities smoothed after?

IDC names carry each patch's place on its slide (`_x<X>_y<Y>`, a 50 px grid), so a patient's
patches give each one its neighbourhood. This script writes a copy of an IDC folder in which
every patch is replaced by the 3x3 mosaic of patches centred on it (150x150 px, same name, same
label: the centre's); a neighbour that the patient does not have (glass the Kaggle set left out,
or a patch not sampled) is filled with the patient's glass colour (the per-channel 99th
percentile of its pixels). Patches under 8 px a side (slide-edge slivers, which histoclass skips)
are not written as centres, so `benchmarks/idc.py` finds the same patches, patients and folds in
both folders; they still fill their place in their neighbours' mosaics.

    python benchmarks/context_input.py --out /tmp/idc-context            # writes the mosaics (~1 min)
    python benchmarks/idc.py --data /tmp/idc-context --rows \
        "context-75=strong:image_size=75" "context-100=strong:image_size=100" ...

histoclass resizes each mosaic to `image_size`: at 75 px the model sees three patches' width at
half the resolution (the centre patch as 25 px), at 100 px at two thirds. The same rows on the
plain folder (`strong`, and `strong:image_size=75`, the patch alone upsampled: as many pixels,
no context) tell context from input size. The numbers are in docs/recipe.md ("A context input").
"""
from __future__ import annotations

import argparse
import csv
import shutil
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "idc-sample"
PATCH = 50  # the Kaggle grid's step, in px
MIN_SIDE = 8  # as benchmarks/idc.py: histoclass skips smaller images


def patient_patches(data: Path) -> dict[str, list[tuple[Path, int, int]]]:
    """patient -> [(file, x, y)] from the IDC names under `data`."""
    from histoclass.data.records import parse_idc_name
    patches: dict[str, list[tuple[Path, int, int]]] = defaultdict(list)
    for path in sorted(data.rglob("*.png")):
        name = parse_idc_name(path.name)
        if name is not None:
            patches[name.patient_id].append((path, name.x, name.y))
    return patches


def read_rgb(path: Path) -> np.ndarray:
    import cv2
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"{path}: not an image OpenCV can read")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def glass_colour(images: list[np.ndarray]) -> np.ndarray:
    """The patient's glass: per channel, the 99th percentile of its pixels."""
    pixels = np.concatenate([image.reshape(-1, 3) for image in images])
    return np.percentile(pixels, 99, axis=0).round().astype(np.uint8)


def mosaics(patches: list[tuple[Path, int, int]]):
    """Yields (file, 150x150 mosaic) for each of one patient's patches that is not a sliver."""
    images = {(x, y): read_rgb(path) for path, x, y in patches}
    glass = glass_colour(list(images.values()))
    for path, x, y in patches:
        if min(images[(x, y)].shape[:2]) < MIN_SIDE:
            continue
        mosaic = np.empty((3 * PATCH, 3 * PATCH, 3), np.uint8)
        mosaic[:] = glass
        for row in range(3):
            for column in range(3):
                neighbour = images.get((x + (column - 1) * PATCH, y + (row - 1) * PATCH))
                if neighbour is not None:
                    height, width = min(neighbour.shape[0], PATCH), min(neighbour.shape[1], PATCH)
                    mosaic[row * PATCH:row * PATCH + height, column * PATCH:column * PATCH + width] = \
                        neighbour[:height, :width]
        yield path, mosaic


def write_rgb(path: Path, image: np.ndarray) -> None:
    import cv2
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write {path}")


def write_normalized_folder(data: Path, out: Path, method: str, seed: int = 0) -> str:
    """Writes `data`'s patches stain-normalized per patient, as `strong` normalizes them (one
    transform per patient from up to 64 of its patches, toward a reference fitted on a seeded
    sample of patches; here of every patient's, since the folds are not known yet). Slivers are
    copied as they are. Returns what the reference was fitted on."""
    from histoclass.stain.context import StainNormalizer, fit_reference
    from histoclass.training.train import STAIN_SAMPLE
    patches = patient_patches(data)
    images = {path: read_rgb(path) for group in patches.values() for path, _, _ in group}
    whole = [path for path, image in images.items() if image.shape[:2] == (PATCH, PATCH)]
    chosen = np.sort(np.random.default_rng(seed).choice(len(whole), min(STAIN_SAMPLE, len(whole)), replace=False))
    reference = fit_reference(method, np.stack([images[whole[i]] for i in chosen]))
    normalizer = StainNormalizer(reference, seed=seed)
    for patient, group in patches.items():
        paths = [path for path, _, _ in group if images[path].shape[:2] == (PATCH, PATCH)]
        normalized = normalizer.normalize(np.stack([images[p] for p in paths]), [patient] * len(paths))
        images.update(zip(paths, normalized))
    for path, image in images.items():
        write_rgb(out / path.relative_to(data), image)
    if (data / "patients.csv").is_file():
        shutil.copyfile(data / "patients.csv", out / "patients.csv")
    return f"{len(chosen)} patches of every patient"


def write_context_folder(data: Path, out: Path) -> dict[str, int]:
    """Writes the mosaics under `out` with the layout and names of `data` (and its patients.csv)."""
    counts = {"patients": 0, "patches": 0, "centres_with_all_8_neighbours": 0}
    for patient, patches in patient_patches(data).items():
        counts["patients"] += 1
        places = {(x, y) for _, x, y in patches}
        for path, mosaic in mosaics(patches):
            write_rgb(out / path.relative_to(data), mosaic)
            counts["patches"] += 1
        for _, x, y in patches:
            counts["centres_with_all_8_neighbours"] += all(
                (x + dx, y + dy) in places for dx in (-PATCH, 0, PATCH) for dy in (-PATCH, 0, PATCH))
    if (data / "patients.csv").is_file():
        shutil.copyfile(data / "patients.csv", out / "patients.csv")
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="an IDC folder (default: idc-sample)")
    parser.add_argument("--out", type=Path, required=True, help="where the mosaics go (a new folder)")
    parser.add_argument("--stain-normalization", choices=("none", "reinhard", "macenko"), default="none",
                        help="normalize each patient's patches first, into OUT/patches, and build the "
                             "mosaics from them, into OUT/context (train both with stain_normalization=none)")
    args = parser.parse_args()
    if args.out.exists() and any(args.out.iterdir()):
        sys.exit(f"{args.out} is not empty; give a new folder")
    data = args.data.resolve()
    if args.stain_normalization != "none":
        fitted_on = write_normalized_folder(data, args.out / "patches", args.stain_normalization)
        print(f"{args.stain_normalization}: patches normalized per patient under {args.out / 'patches'} "
              f"(reference fitted on {fitted_on})")
        data, args.out = args.out / "patches", args.out / "context"
    counts = write_context_folder(data, args.out)
    print(f"{counts['patches']} mosaics of {counts['patients']} patients written under {args.out}; "
          f"{counts['centres_with_all_8_neighbours']} patches have all 8 neighbours")
    if (args.data / "patients.csv").is_file():
        with open(args.data / "patients.csv", newline="", encoding="utf-8") as handle:
            kinds = {row["patient"]: row["kind"] for row in csv.DictReader(handle)}
        print("patients by kind:", {k: sum(v == k for v in kinds.values()) for k in sorted(set(kinds.values()))})


if __name__ == "__main__":
    main()
