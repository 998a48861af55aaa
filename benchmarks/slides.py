"""Whole slides, measured: tile-vs-patch parity, Dice against the true tumour region, throughput
against the model's in-memory rate, and peak memory on a 100,000 x 100,000 px slide.

    python benchmarks/slides.py            # the demo-sized model (16 patients, 8 epochs): ~5 min on 2 cores
    python benchmarks/slides.py --quick    # 8 patients, 4 epochs: a smoke run (Dice not comparable)
    python benchmarks/slides.py --epochs 20             # a longer-trained model's Dice

Everything is built in --work (default: a temporary folder): synthetic IDC-style patches and
their whole slides (`synth --slides`), a model trained on the patches as `histoclass demo` does,
and two large pyramidal TIFFs written tile by tile (mostly glass, compressed). Prints a table.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from histoclass.data.records import parse_idc_name  # noqa: E402
from histoclass.slides.pipeline import classify_plan, predict_plan  # noqa: E402
from histoclass.slides.qc import tile_qc  # noqa: E402
from histoclass.slides.reader import open_slide  # noqa: E402
from histoclass.slides.regions import malignant_mask, probability_map  # noqa: E402
from histoclass.slides.tiling import plan_tiles, read_tiles  # noqa: E402

TILE = 256


# ---- data and model ----------------------------------------------------------------------

def build_run(work: Path, patients: int, slide_scale: float, epochs: int) -> tuple[Path, Path, Path]:
    from histoclass.config import config_for_recipe
    from histoclass.synth import generate_idc_dataset
    from histoclass.training.train import train
    data, slides, run = work / "data", work / "data-slides", work / "run"
    if not run.exists():
        generate_idc_dataset(data, num_patients=patients, seed=0, slide_scale=slide_scale, progress=False,
                             slides_dir=slides)
        train(data, run, config_for_recipe("original", num_epochs=epochs, batch_size=64),
              cache_dir=work / "cache", progress=False)
    return data, slides, run


def write_fresh_slides(work: Path, first: int, count: int, slide_scale: float) -> tuple[Path, list[str]]:
    """Slides of patients the model never saw (indices after the trained ones; same generator),
    with their truth masks."""
    from histoclass.synth.dataset import patient_ids, render_patient_slide
    from histoclass.synth.slide_file import write_pyramid_tiff
    folder = work / "fresh-slides"
    ids = list(patient_ids(0, first + count)[first:])
    if not folder.exists():
        (folder / "truth").mkdir(parents=True)
        for offset, patient in enumerate(ids):
            rgb, tumour, _ = render_patient_slide(0, first + offset, slide_scale)
            write_pyramid_tiff(folder / f"{patient}.tiff", rgb, 4.0)
            cv2.imwrite(str(folder / "truth" / f"{patient}.png"), tumour.astype(np.uint8) * 255)
    return folder, ids


def test_patients(run: Path) -> list[str]:
    with open(run / "split.csv", newline="") as handle:
        return sorted({row["group"] for row in csv.DictReader(handle) if row["part"] == "test"})


# ---- parity and Dice ---------------------------------------------------------------------

def parity(run_obj, data: Path, slides: Path, patients: list[str]) -> dict:
    """Tiles cut by `slide` against the patches `synth` wrote for the same places."""
    max_pixel, max_prob, compared = 0, 0.0, 0
    for patient in patients:
        patches = {}
        for path in (data / patient).rglob("*.png"):
            idc = parse_idc_name(path.name)
            patches[(idc.x - 1, idc.y - 1)] = cv2.imread(str(path))[..., ::-1]
        with open_slide(slides / f"{patient}.tiff") as slide:
            plan = plan_tiles(slide, run_obj.config.mpp, run_obj.image_size)
            prob, _ = predict_plan(run_obj, slide, plan, progress=False)
            batch, _ = read_tiles(slide, plan, np.arange(plan.num_tiles))
        shared = [i for i, xy in enumerate(zip(plan.xs.tolist(), plan.ys.tolist())) if xy in patches]
        same = np.stack([patches[(plan.xs[i], plan.ys[i])] for i in shared])
        max_pixel = max(max_pixel, int(np.abs(batch[shared].astype(int) - same).max()))
        max_prob = max(max_prob, float(np.abs(prob[shared] - run_obj.predict(same)).max()))
        compared += len(shared)
    return {"tiles_compared": compared, "max_pixel_difference": max_pixel, "max_prob_difference": max_prob}


def dice(run_obj, slides: Path, patients: list[str]) -> dict:
    """Dice of the predicted malignant region (the map at the run's threshold, in level-0
    pixels) against the true tumour mask; and the same for tiles labelled from the mask itself
    (half or more of the tile inside), the most a tile-level map can reach."""
    per_slide, pooled, ceiling = [], [0, 0], [0, 0]
    for patient in patients:
        truth = cv2.imread(str(slides / "truth" / f"{patient}.png"), cv2.IMREAD_GRAYSCALE) > 0
        with open_slide(slides / f"{patient}.tiff") as slide:
            plan = plan_tiles(slide, run_obj.config.mpp, run_obj.image_size)
            prob, _ = predict_plan(run_obj, slide, plan, progress=False)
        inside = np.array([truth[y:y + plan.tile_side, x:x + plan.tile_side].mean()
                           for x, y in zip(plan.xs, plan.ys)])
        for values, threshold, total in ((prob, run_obj.threshold, pooled), (inside, 0.5, ceiling)):
            predicted = malignant_mask(probability_map(plan, values), threshold, plan.stride, plan.dimensions)
            overlap, size = int((truth & predicted).sum()), int(truth.sum() + predicted.sum())
            total[0] += overlap
            total[1] += size
            if total is pooled:
                per_slide.append(2 * overlap / size if size else 1.0)
    return {"dice_per_slide": per_slide, "dice_mean": float(np.mean(per_slide)),
            "dice_pooled": 2 * pooled[0] / pooled[1], "dice_ceiling": 2 * ceiling[0] / ceiling[1]}


# ---- throughput --------------------------------------------------------------------------

def throughput(run_obj, path: Path, repeats: int = 5) -> dict:
    """The same tiles, side by side: the model on arrays in memory, and `slide` from the file
    (opening, thumbnail, tissue, planning, reading, the model and quality control), alternated. Wall-clock rates
    are the best of `repeats`; on a shared machine they swing with the neighbours' load, so the
    CPU time of this process (all its threads) is compared too, as the median of the repeats."""
    with open_slide(path) as slide:
        plan = plan_tiles(slide, run_obj.config.mpp, run_obj.image_size)
        tiles, _ = read_tiles(slide, plan, np.arange(plan.num_tiles))
    run_obj.model_probabilities(tiles[:1024])  # warm up
    timings = {"memory_s": [], "slide_s": [], "memory_cpu_s": [], "slide_cpu_s": []}
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        run_obj.calibrated(run_obj.model_probabilities(tiles, batch_size=256))
        timings["memory_s"].append(time.perf_counter() - wall)
        timings["memory_cpu_s"].append(time.process_time() - cpu)
        wall, cpu = time.perf_counter(), time.process_time()
        with open_slide(path) as slide:
            plan = plan_tiles(slide, run_obj.config.mpp, run_obj.image_size)
            prob, _, measures = classify_plan(run_obj, slide, plan, batch_size=256, workers=2, progress=False)
            tile_qc(measures, np.isfinite(prob))
        timings["slide_s"].append(time.perf_counter() - wall)
        timings["slide_cpu_s"].append(time.process_time() - cpu)
    n = plan.num_tiles
    return {"tiles": n, "memory_rate": n / min(timings["memory_s"]), "slide_rate": n / min(timings["slide_s"]),
            "memory_cpu_rate": n / float(np.median(timings["memory_cpu_s"])),
            "slide_cpu_rate": n / float(np.median(timings["slide_cpu_s"])), **timings}


# ---- a large slide, written tile by tile -------------------------------------------------

def write_large_slide(path: Path, side: int, tissue_bank: list[np.ndarray], mpp: float = 0.25) -> dict:
    """A `side` x `side` px pyramidal TIFF at `mpp` µm/px (levels 1, 4, 16, 64, ..., as in SVS):
    glass with ellipses of tissue covering about a third of it, the same shapes at any `side`.
    The level at 16x (4 µm/px, what the model reads) holds painted synthetic tissue, the coarser
    ones (the thumbnail's) its flat colour, both drawn pixel by pixel from the tissue layout; the
    two finest levels, never read, hold whole tiles of glass or flat colour, compressed once and
    repeated, so the file is small and quick to write."""
    import tifffile
    glass_value = 243
    glass = np.full((TILE, TILE, 3), glass_value, np.uint8)
    colour = np.median(np.stack(tissue_bank), axis=(0, 1, 2)).astype(np.uint8)
    flat = np.broadcast_to(colour, (TILE, TILE, 3))
    encode = lambda tile: zlib.compress(np.ascontiguousarray(tile).tobytes(), 6)  # noqa: E731
    glass_bytes, flat_bytes = encode(glass), encode(flat)
    layout_side = 512
    layout = np.zeros((layout_side, layout_side), np.uint8)
    rng = np.random.default_rng(11)
    for _ in range(6):
        centre = tuple(int(v) for v in rng.uniform(0.25, 0.75, 2) * layout_side)
        axes = tuple(int(v) for v in rng.uniform(0.10, 0.20, 2) * layout_side)
        cv2.ellipse(layout, centre, axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
    with tifffile.TiffWriter(path, bigtiff=True) as writer:
        downsample = 1
        while True:
            level_side = -(-side // downsample)
            per_side = -(-level_side // TILE)
            if downsample >= 16:  # drawn pixel by pixel
                mask = cv2.resize(layout, (level_side, level_side), interpolation=cv2.INTER_NEAREST)
                mask = np.pad(mask, ((0, per_side * TILE - level_side), (0, per_side * TILE - level_side)))

                def tiles(mask=mask, textured=downsample == 16):
                    for r in range(per_side):
                        for c in range(per_side):
                            inside = mask[r * TILE:(r + 1) * TILE, c * TILE:(c + 1) * TILE].astype(bool)
                            if not inside.any():
                                yield glass_bytes
                                continue
                            tissue = tissue_bank[(r * 7 + c * 3) % len(tissue_bank)] if textured else flat
                            yield encode(np.where(inside[..., None], tissue, glass))
            else:  # whole tiles, by their centre
                centres = (np.arange(per_side) + 0.5) * TILE * downsample / side * layout_side
                index = np.clip(centres.astype(int), 0, layout_side - 1)
                inside = layout[np.ix_(index, index)].astype(bool)

                def tiles(inside=inside):
                    for r in range(per_side):
                        for c in range(per_side):
                            yield flat_bytes if inside[r, c] else glass_bytes

            per_cm = 1e4 / (mpp * downsample)
            writer.write(tiles(), shape=(level_side, level_side, 3), dtype=np.uint8, tile=(TILE, TILE),
                         compression="zlib", photometric="rgb", resolution=(per_cm, per_cm),
                         resolutionunit="CENTIMETER", subfiletype=0 if downsample == 1 else 1, metadata=None)
            if per_side == 1:
                break
            downsample *= 4
    return {"side": side, "bytes": path.stat().st_size}


def tissue_bank(mpp_model: float) -> list[np.ndarray]:
    from histoclass.synth.tissue import render_slide
    rgb, _, tissue = render_slide(np.random.default_rng(3), 1600, 1600, tumour_fraction=0.3)
    bank = []
    for y in range(0, 1600 - TILE, TILE // 2):
        for x in range(0, 1600 - TILE, TILE // 2):
            if tissue[y:y + TILE, x:x + TILE].all():
                bank.append(rgb[y:y + TILE, x:x + TILE].copy())
    return bank[:32]


def peak_memory(run: Path, slide: Path, out: Path) -> dict:
    """Runs `histoclass slide` in a child process and reads its peak resident memory."""
    probe = ("import resource, subprocess, sys, time; t = time.perf_counter(); "
             "code = subprocess.call(sys.argv[1:]); "
             "print(code, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, time.perf_counter() - t)")
    command = [sys.executable, "-c", probe, sys.executable, "-m", "histoclass", "slide", str(run), str(slide),
               "--out", str(out), "--quiet"]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=True)
    code, kib, seconds = result.stdout.split()[-3:]
    if code != "0":
        raise RuntimeError(f"histoclass slide failed on {slide}: {result.stderr[-2000:]}")
    summary = json.loads((out / slide.name / "summary.json").read_text())
    return {"peak_rss_gb": int(kib) / 1024**2, "seconds": float(seconds), "tiles": summary["tiles_on_tissue"],
            "level_read": summary["level_read"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="8 patients, 4 epochs: a smoke run")
    parser.add_argument("--epochs", type=int, default=None, help="Train longer than the demo (Dice of a better model)")
    parser.add_argument("--work", type=Path, default=None, help="Folder to build in (kept; reused when present)")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="histoclass-slides-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    patients, scale, epochs = (8, 0.6, 4) if args.quick else (16, 0.8, 8)  # the demo's: 16, 0.8, 8
    epochs = args.epochs or epochs
    data, slides, run = build_run(work, patients, scale, epochs)
    import histoclass
    run_obj = histoclass.load_run(run)
    print(f"model: {run_obj!r}, {run_obj.config.mpp} µm/px; built in {time.perf_counter() - started:.0f} s", flush=True)
    fresh, fresh_ids = write_fresh_slides(work, patients, 8, scale)
    same = parity(run_obj, data, slides, test_patients(run))
    held_out = dice(run_obj, slides, test_patients(run))
    unseen = dice(run_obj, fresh, fresh_ids)
    bank = tissue_bank(run_obj.config.mpp)
    memory = {}
    for side in (100_000, 50_000):
        path = work / f"large-{side}.tiff"
        if not path.exists():
            write_large_slide(path, side, bank)
        out = work / f"large-{side}-out"
        if out.exists():
            import shutil
            shutil.rmtree(out)
        memory[side] = {**peak_memory(run, path, out), "file_mb": path.stat().st_size / 1e6}
    speed = throughput(run_obj, work / "large-100000.tiff")

    ratio = speed["slide_rate"] / speed["memory_rate"]
    cpu_ratio = speed["slide_cpu_rate"] / speed["memory_cpu_rate"]
    big, quarter = memory[100_000], memory[50_000]
    rows = [
        ("parity: tiles compared with synth's patches", f"{same['tiles_compared']}", ""),
        ("parity: max pixel difference", f"{same['max_pixel_difference']}", "0"),
        ("parity: max |prob difference|", f"{same['max_prob_difference']:.2e}", "<= 1e-5"),
        (f"Dice, run's {len(held_out['dice_per_slide'])} test patients: pooled", f"{held_out['dice_pooled']:.3f} "
         f"(per slide {', '.join(f'{d:.2f}' for d in held_out['dice_per_slide'])})", ">= 0.75"),
        (f"Dice, {len(unseen['dice_per_slide'])} unseen patients: pooled", f"{unseen['dice_pooled']:.3f} "
         f"(per slide {', '.join(f'{d:.2f}' for d in unseen['dice_per_slide'])})", ">= 0.75"),
        ("Dice of tiles labelled from the truth (ceiling)",
         f"{held_out['dice_ceiling']:.3f} / {unseen['dice_ceiling']:.3f}", ""),
        ("model on in-memory tiles: tiles per wall s (best)", f"{speed['memory_rate']:.0f} ({speed['tiles']} tiles)", ""),
        ("100k slide, open to last prob: tiles per wall s (best)", f"{speed['slide_rate']:.0f}", ""),
        ("throughput ratio slide / in-memory, wall clock", f"{ratio:.2f}", ">= 0.70"),
        ("model on in-memory tiles: tiles per CPU s (median)", f"{speed['memory_cpu_rate']:.0f}", ""),
        ("100k slide: tiles per CPU s (median)", f"{speed['slide_cpu_rate']:.0f}", ""),
        ("throughput ratio slide / in-memory, CPU time", f"{cpu_ratio:.2f}", ">= 0.80"),
        ("100,000 x 100,000 px slide: peak RSS (GB)",
         f"{big['peak_rss_gb']:.2f} ({big['tiles']} tiles, {big['seconds']:.0f} s, {big['file_mb']:.0f} MB file)", "<= 1.5"),
        ("50,000 x 50,000 px slide: peak RSS (GB)",
         f"{quarter['peak_rss_gb']:.2f} ({quarter['tiles']} tiles, {quarter['seconds']:.0f} s)", ""),
        ("peak RSS, large / quarter", f"{big['peak_rss_gb'] / quarter['peak_rss_gb']:.3f}", "<= 1.10"),
    ]
    width = max(len(r[0]) for r in rows)
    value_width = max(len(r[1]) for r in rows)
    print(f"\n{'measure':<{width}}  {'value':<{value_width}}  target")
    print(f"{'-' * width}  {'-' * value_width}  ------")
    for name, value, target in rows:
        print(f"{name:<{width}}  {value:<{value_width}}  {target}")
    print(f"\n{'quick mode: ' if args.quick else ''}{patients} patients, slide scale {scale}, {epochs} epochs; "
          f"{os.cpu_count()} CPUs; total {time.perf_counter() - started:.0f} s; work folder {work}")
    (work / "slides_benchmark.json").write_text(json.dumps(
        {"parity": same, "dice_test": held_out, "dice_unseen": unseen, "speed": speed, "memory": {str(k): v for k, v in memory.items()}}, indent=2))


if __name__ == "__main__":
    main()
