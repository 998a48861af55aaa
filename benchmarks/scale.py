"""`histoclass predict` and `histoclass slide` in one process vs on a local Ray (`--ray auto`)
with 1 and 2 workers.

    python benchmarks/scale.py [--part predict|slides|all] [--large 4000] [--small 200] [--slides 20] [--work DIR]

Synthesises IDC-style patches (`histoclass synth`), trains the original CNN for one epoch on
them, then times each command end to end (a fresh process each: Python, the backend, Ray's
start-up and shut-down included) on a small and a large job, and prints images/s and Ray's
overhead against the single process. Every Ray CSV is checked against the local one (largest
difference in prob_malignant). The slides part paints `--slides` small pyramidal TIFFs (the
small job: 20 slides of 500 x 400 px, tiles side by side; the large job: 20 slides of
1000 x 800 px, 4 times the tiles) and reports slides/s, tiles/s, Ray's overhead and the
largest difference of any tile's prob_malignant in tiles.csv. CPU only: this machine has no GPU.
"""
from __future__ import annotations

import argparse
import csv
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": "",
       "RAY_memory_monitor_refresh_ms": "0", "RAY_USAGE_STATS_ENABLED": "0"}
MODES = {"local, 1 process": [], "Ray, 1 worker": ["--ray", "auto", "--workers", "1"],
         "Ray, 2 workers": ["--ray", "auto", "--workers", "2"]}


def histoclass(*args) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "histoclass", *map(str, args)], env=ENV, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def probabilities(path: Path) -> dict[str, float]:
    with open(path, newline="") as handle:
        return {row["path"]: float(row["prob_malignant"] or "nan") for row in csv.DictReader(handle)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=200)
    parser.add_argument("--large", type=int, default=4000)
    parser.add_argument("--work", type=Path, default=None, help="folder to keep the data and run in")
    parser.add_argument("--slides", type=int, default=20, help="slides in each slide job")
    parser.add_argument("--part", choices=("predict", "slides", "all"), default="all")
    options = parser.parse_args()
    work = options.work or Path(tempfile.mkdtemp(prefix="histoclass-scale-"))
    data, run = work / "synth", work / "run"
    if not data.exists():
        histoclass("synth", data, "--patients", 6, "--slide-scale", 1.0, "--seed", 0, "--quiet")
    if not run.exists():
        histoclass("train", "--data", data, "--out", run, "--epochs", 1, "--cache-dir", work / "cache", "--quiet")
    if options.part in ("predict", "all"):
        predict_part(options, work, data, run)
    if options.part in ("slides", "all"):
        slides_part(options, work, run)


def predict_part(options, work: Path, data: Path, run: Path) -> None:
    files = sorted(str(p) for p in data.rglob("*.png"))
    print(f"{len(files)} synthetic patches in {data}; run {run}; {os.cpu_count()} CPUs, no GPU\n")
    print(f"{'job':<8}{'images':>8}  {'mode':<18}{'seconds':>9}{'images/s':>10}{'overhead s':>12}{'max |dp|':>10}")
    for job, count in (("small", options.small), ("large", options.large)):
        count = min(count, len(files))
        folder = work / job
        if not folder.exists():  # a folder of symbolic links: one argument, same files
            folder.mkdir()
            for i, source in enumerate(files[:count]):
                (folder / f"{i:06d}.png").symlink_to(source)
        local_seconds, local_probs = None, None
        for mode, extra in MODES.items():
            out = work / f"{job}-{mode.split(',')[0].lower()}-{extra[-1] if extra else 1}.csv"
            seconds = histoclass("predict", run, folder, "--output", out, "--quiet", *extra)
            probs = probabilities(out)
            if local_seconds is None:
                local_seconds, local_probs, overhead, diff = seconds, probs, "", ""
            else:
                overhead = f"{seconds - local_seconds:+.1f}"
                diff = f"{max(abs(probs[k] - local_probs[k]) for k in local_probs):.1e}"
            print(f"{job:<8}{count:>8}  {mode:<18}{seconds:>9.1f}{count / seconds:>10.1f}{overhead:>12}{diff:>10}")


SLIDE_JOBS = {"small": ((500, 400), []), "large": ((1000, 800), [])}


def slide_probabilities(out: Path) -> tuple[dict[tuple, float], int]:
    """prob_malignant of every tile of every slide of a `histoclass slide` output, and the
    number of slides analysed."""
    probs, slides = {}, 0
    for tiles in sorted(out.glob("*/tiles.csv")):
        slides += 1
        with open(tiles, newline="") as handle:
            for row in csv.DictReader(handle):
                probs[(tiles.parent.name, row["x"], row["y"])] = float(row["prob_malignant"] or "nan")
    return probs, slides


def slides_part(options, work: Path, run: Path) -> None:
    import numpy as np
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from histoclass.synth.slide_file import write_pyramid_tiff
    from histoclass.synth.tissue import render_slide
    print(f"\n`histoclass slide` on {options.slides} synthetic pyramidal TIFFs (4 µm/px, the model's), "
          f"{os.cpu_count()} CPUs, no GPU\n")
    print(f"{'job':<7}{'slides':>7}{'tiles':>8}  {'mode':<18}{'seconds':>9}{'slides/s':>10}{'tiles/s':>9}"
          f"{'overhead s':>12}{'max |dp|':>10}")
    for job, ((width, height), extra_job) in SLIDE_JOBS.items():
        folder = work / f"slides-{job}"
        if not folder.exists():
            folder.mkdir()
            for i in range(options.slides):
                rgb, _, _ = render_slide(np.random.default_rng(100 + i), width, height, tumour_fraction=0.4)
                write_pyramid_tiff(folder / f"slide{i:03d}.tiff", rgb, 4.0)
        local_seconds, local_probs = None, None
        for mode, extra in MODES.items():
            out = work / f"slides-{job}-{mode.split(',')[0].lower()}-{extra[-1] if extra else 1}"
            if out.exists():
                shutil.rmtree(out)
            seconds = histoclass("slide", run, folder, "--out", out, "--mpp", 4.0, "--quiet", *extra_job, *extra)
            probs, slides = slide_probabilities(out)
            tiles = len(probs)
            if local_seconds is None:
                local_seconds, local_probs, overhead, diff = seconds, probs, "", ""
            else:
                assert probs.keys() == local_probs.keys(), "the Ray job's tiles differ from the local one's"
                overhead = f"{seconds - local_seconds:+.1f}"
                diff = f"{max(abs(probs[k] - local_probs[k]) for k in local_probs):.1e}"
            print(f"{job:<7}{slides:>7}{tiles:>8}  {mode:<18}{seconds:>9.1f}{slides / seconds:>10.2f}"
                  f"{tiles / seconds:>9.1f}{overhead:>12}{diff:>10}", flush=True)


if __name__ == "__main__":
    main()
