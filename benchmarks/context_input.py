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
    """The patch as uint8 RGB. Not histoclass's decoder: that one refuses the slide-edge slivers
    (under 8 px a side), which still fill their place in their neighbours' mosaics."""
    import cv2
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"{path}: not an image OpenCV can read")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def write_rgb(path: Path, image: np.ndarray) -> None:
    import cv2
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write {path}")


def glass_colour(images: list[np.ndarray]) -> np.ndarray:
    """The patient's glass: per channel, the 99th percentile of its pixels."""
    pixels = np.concatenate([image.reshape(-1, 3) for image in images])
    return np.percentile(pixels, 99, axis=0).round().astype(np.uint8)


def mosaics(images: dict[tuple[int, int], np.ndarray]):
    """Yields ((x, y), 150x150 mosaic) for each of one patient's patches (place -> pixels) that
    is not a sliver."""
    glass = glass_colour(list(images.values()))
    for (x, y), image in images.items():
        if min(image.shape[:2]) < MIN_SIDE:
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
        yield (x, y), mosaic


def stain_normalizer(patches: dict[str, list[tuple[Path, int, int]]], method: str, seed: int = 0):
    """A `StainNormalizer` as `strong` builds one: its reference fitted on a seeded sample of
    STAIN_SAMPLE whole patches (here of every patient's, since the folds are not known yet)."""
    from PIL import Image
    from histoclass.stain.context import StainNormalizer, fit_reference
    from histoclass.training.train import STAIN_SAMPLE
    whole = []
    for group in patches.values():
        for path, _, _ in group:
            with Image.open(path) as image:  # reads the header only
                if image.size == (PATCH, PATCH):
                    whole.append(path)
    chosen = np.sort(np.random.default_rng(seed).choice(len(whole), min(STAIN_SAMPLE, len(whole)), replace=False))
    return StainNormalizer(fit_reference(method, np.stack([read_rgb(whole[i]) for i in chosen])), seed=seed)


def write_context_folder(data: Path, out: Path, normalizer=None, normalized_out: Path | None = None) -> dict[str, int]:
    """Writes the mosaics under `out` with the layout and names of `data` (and its patients.csv),
    one patient at a time, each file read once. With a `normalizer` each patient's whole patches
    are first normalized as `strong` normalizes them (one transform per patient; slivers stay as
    they are), written under `normalized_out` too, and the mosaics are built from them."""
    counts = {"patients": 0, "patches": 0, "centres_with_all_8_neighbours": 0}
    for patient, patches in patient_patches(data).items():
        counts["patients"] += 1
        files = {(x, y): path for path, x, y in patches}
        images = {place: read_rgb(path) for place, path in files.items()}
        if normalizer is not None:
            whole = [place for place, image in images.items() if image.shape[:2] == (PATCH, PATCH)]
            normalized = normalizer.normalize(np.stack([images[place] for place in whole]), [patient] * len(whole))
            images.update(zip(whole, normalized))
            for place, image in images.items():
                write_rgb(normalized_out / files[place].relative_to(data), image)
        for place, mosaic in mosaics(images):
            write_rgb(out / files[place].relative_to(data), mosaic)
            counts["patches"] += 1
        for x, y in files:
            counts["centres_with_all_8_neighbours"] += all(
                (x + dx, y + dy) in files for dx in (-PATCH, 0, PATCH) for dy in (-PATCH, 0, PATCH))
    for folder in (out, normalized_out) if normalizer is not None else (out,):
        if (data / "patients.csv").is_file():
            shutil.copyfile(data / "patients.csv", folder / "patients.csv")
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
    normalizer, patches_out, context_out = None, None, args.out
    if args.stain_normalization != "none":
        normalizer = stain_normalizer(patient_patches(data), args.stain_normalization)
        patches_out, context_out = args.out / "patches", args.out / "context"
    counts = write_context_folder(data, context_out, normalizer, patches_out)
    if normalizer is not None:
        print(f"{args.stain_normalization}: patches normalized per patient under {patches_out}")
    print(f"{counts['patches']} mosaics of {counts['patients']} patients written under {context_out}; "
          f"{counts['centres_with_all_8_neighbours']} patches have all 8 neighbours")
    if (args.data / "patients.csv").is_file():
        with open(args.data / "patients.csv", newline="", encoding="utf-8") as handle:
            kinds = {row["patient"]: row["kind"] for row in csv.DictReader(handle)}
        print("patients by kind:", {k: sum(v == k for v in kinds.values()) for k in sorted(set(kinds.values()))})


if __name__ == "__main__":
    main()
