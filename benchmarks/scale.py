"""`histoclass predict` in one process vs on a local Ray (`--ray auto`) with 1 and 2 workers.

    python benchmarks/scale.py [--large 4000] [--small 200] [--work DIR]

Synthesises IDC-style patches (`histoclass synth`), trains the original CNN for one epoch on
them, then times each command end to end (a fresh process each: Python, the backend, Ray's
start-up and shut-down included) on a small and a large job, and prints images/s and Ray's
overhead against the single process. Every Ray CSV is checked against the local one (largest
difference in prob_malignant). CPU only: this machine has no GPU.
"""
from __future__ import annotations

import argparse
import csv
import os
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
    options = parser.parse_args()
    work = options.work or Path(tempfile.mkdtemp(prefix="histoclass-scale-"))
    data, run = work / "synth", work / "run"
    if not data.exists():
        histoclass("synth", data, "--patients", 6, "--slide-scale", 1.0, "--seed", 0, "--quiet")
    if not run.exists():
        histoclass("train", "--data", data, "--out", run, "--epochs", 1, "--cache-dir", work / "cache", "--quiet")
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


if __name__ == "__main__":
    main()
