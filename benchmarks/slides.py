"""Whole slides, measured: tile-vs-patch parity, Dice against the true tumour region, throughput
against the model's in-memory rate, and peak memory on a 100,000 x 100,000 px slide.

    python benchmarks/slides.py            # the demo-sized model (16 patients, 8 epochs): ~10 min on 2 cores
    python benchmarks/slides.py --quick    # 8 patients, 4 epochs: a smoke run (Dice not comparable)

Everything is built in --work (default: a temporary folder): synthetic IDC-style patches and
their whole slides (`synth --slides`), a model trained on the patches as `histoclass demo` does,
and two large pyramidal TIFFs written tile by tile (mostly glass, compressed). Prints a table.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import resource
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
from histoclass.slides.pipeline import predict_plan  # noqa: E402
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


def test_patients(run: Path) -> list[str]:
    with open(run / "split.csv", newline="") as handle:
        return sorted({row["group"] for row in csv.DictReader(handle) if row["part"] == "test"})


# ---- parity and Dice ---------------------------------------------------------------------

def parity_and_dice(run_obj, data: Path, slides: Path, patients: list[str]) -> dict:
    max_pixel, max_prob, compared, dice, pooled = 0, 0.0, 0, [], [0, 0]
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
        truth = cv2.imread(str(slides / "truth" / f"{patient}.png"), cv2.IMREAD_GRAYSCALE) > 0
        predicted = malignant_mask(probability_map(plan, prob), run_obj.threshold, plan.stride, plan.dimensions)
        both, total = int((truth & predicted).sum()), int(truth.sum() + predicted.sum())
        dice.append(2 * both / total if total else 1.0)
        pooled[0] += both
        pooled[1] += total
    return {"tiles_compared": compared, "max_pixel_difference": max_pixel, "max_prob_difference": max_prob,
            "dice_per_slide": dice, "dice_mean": float(np.mean(dice)), "dice_pooled": 2 * pooled[0] / pooled[1]}


# ---- throughput --------------------------------------------------------------------------

def throughput(run_obj, work: Path, repeats: int = 2) -> dict:
    """The same tiles, side by side: the model on arrays in memory, and `slide` from the file
    (opening, thumbnail, tissue, planning, reading and the model)."""
    from histoclass.synth.slide_file import write_pyramid_tiff
    from histoclass.synth.tissue import render_slide
    path = work / "throughput.tiff"
    if not path.exists():
        rgb, _, _ = render_slide(np.random.default_rng(7), 3000, 3000, tumour_fraction=0.3)
        write_pyramid_tiff(path, rgb, run_obj.config.mpp)
    with open_slide(path) as slide:
        plan = plan_tiles(slide, run_obj.config.mpp, run_obj.image_size)
        tiles, _ = read_tiles(slide, plan, np.arange(plan.num_tiles))
    run_obj.model_probabilities(tiles[:256])  # warm up
    memory_s, slide_s = [], []
    for _ in range(repeats):
        started = time.perf_counter()
        run_obj.calibrated(run_obj.model_probabilities(tiles, batch_size=256))
        memory_s.append(time.perf_counter() - started)
        started = time.perf_counter()
        with open_slide(path) as slide:
            plan = plan_tiles(slide, run_obj.config.mpp, run_obj.image_size)
            predict_plan(run_obj, slide, plan, batch_size=256, workers=2, progress=False)
        slide_s.append(time.perf_counter() - started)
    return {"tiles": plan.num_tiles, "memory_rate": plan.num_tiles / min(memory_s),
            "slide_rate": plan.num_tiles / min(slide_s)}


# ---- a large slide, written tile by tile -------------------------------------------------

def write_large_slide(path: Path, side: int, tissue_bank: list[np.ndarray], mpp: float = 0.25) -> dict:
    """A `side` x `side` px pyramidal TIFF at `mpp` µm/px (levels 1, 4, 16, 64, 256, as in SVS):
    glass with ellipses of tissue covering about 8 % of it. The level at 16x (4 µm/px, what the
    model reads) holds painted synthetic tissue; the other levels hold its flat colour. Tiles are
    compressed once and repeated, so the file is small and quick to write."""
    import tifffile
    glass = np.full((TILE, TILE, 3), 243, np.uint8)
    flat = np.full((TILE, TILE, 3), np.median(np.stack(tissue_bank), axis=(0, 1, 2)), np.uint8)
    encode = lambda tile: zlib.compress(np.ascontiguousarray(tile).tobytes(), 6)  # noqa: E731
    glass_bytes, flat_bytes = encode(glass), encode(flat)
    bank_bytes = [encode(t) for t in tissue_bank]
    # tissue layout in level-0 tiles of the largest slide's grid, scaled to this one
    layout_side = 512
    layout = np.zeros((layout_side, layout_side), np.uint8)
    rng = np.random.default_rng(11)
    for _ in range(6):
        centre = tuple(int(v) for v in rng.uniform(0.2, 0.8, 2) * layout_side)
        axes = tuple(int(v) for v in rng.uniform(0.05, 0.12, 2) * layout_side)
        cv2.ellipse(layout, centre, axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
    with tifffile.TiffWriter(path, bigtiff=True) as writer:
        downsample = 1
        while True:
            level_side = -(-side // downsample)
            per_side = -(-level_side // TILE)
            centres = (np.arange(per_side) + 0.5) * TILE * downsample / side * layout_side
            index = np.clip(centres.astype(int), 0, layout_side - 1)
            tissue = layout[np.ix_(index, index)].astype(bool)
            textured = downsample == 16

            def tiles():
                for r in range(per_side):
                    for c in range(per_side):
                        if not tissue[r, c]:
                            yield glass_bytes
                        else:
                            yield bank_bytes[(r * 7 + c * 3) % len(bank_bytes)] if textured else flat_bytes

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
    parser.add_argument("--work", type=Path, default=None, help="Folder to build in (kept; reused when present)")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="histoclass-slides-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    patients, scale, epochs = (8, 0.6, 4) if args.quick else (16, 0.8, 8)  # the demo's: 16, 0.8, 8
    data, slides, run = build_run(work, patients, scale, epochs)
    import histoclass
    run_obj = histoclass.load_run(run)
    print(f"model: {run_obj!r}, {run_obj.config.mpp} µm/px; built in {time.perf_counter() - started:.0f} s", flush=True)
    quality = parity_and_dice(run_obj, data, slides, test_patients(run))
    speed = throughput(run_obj, work)
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

    ratio = speed["slide_rate"] / speed["memory_rate"]
    big, quarter = memory[100_000], memory[50_000]
    rows = [
        ("parity: tiles compared with synth's patches", f"{quality['tiles_compared']}", ""),
        ("parity: max pixel difference", f"{quality['max_pixel_difference']}", "0"),
        ("parity: max |prob difference|", f"{quality['max_prob_difference']:.2e}", "<= 1e-5"),
        ("Dice vs true tumour mask, mean of test slides", f"{quality['dice_mean']:.3f} "
         f"({', '.join(f'{d:.2f}' for d in quality['dice_per_slide'])})", ">= 0.75"),
        ("Dice pooled over test slides", f"{quality['dice_pooled']:.3f}", ">= 0.75"),
        ("model on in-memory tiles (tiles/s)", f"{speed['memory_rate']:.0f} ({speed['tiles']} tiles)", ""),
        ("slide: open, tissue, plan, read, model (tiles/s)", f"{speed['slide_rate']:.0f}", ""),
        ("throughput ratio slide / in-memory", f"{ratio:.2f}", ">= 0.70"),
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
        {"quality": quality, "speed": speed, "memory": {str(k): v for k, v in memory.items()}}, indent=2))


if __name__ == "__main__":
    main()
