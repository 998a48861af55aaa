"""Cold decoding of idc-sample: histoclass's decoder (worker processes writing into a fresh
cache) against a plain one-thread `cv2.imread` loop over the same files, side by side.

    PYTHONPATH=src python benchmarks/decode_speed.py [--data ../shared/data/idc-sample] [--repeats 3]

"Cold" is histoclass's cache (a new cache folder each time); the files themselves are in the
operating system's page cache for both sides alike (one warm-up pass first). Each repeat runs
the three ways in turn, and the table gives each one's median: on a shared machine the ratio
of runs made side by side is what holds, not the absolute numbers.
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path


def main() -> None:
    import cv2
    import numpy as np

    from histoclass.data import discover
    from histoclass.data.cache import _decode_into, load_images
    from histoclass.data.parallel import start_method, usable_cores

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[1].parent / "shared/data/idc-sample"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--size", type=int, default=50)
    args = parser.parse_args()
    records = discover(args.data).records
    files = [r.source for r in records]
    for name in files:  # the page cache warm for every way alike
        with open(name, "rb") as handle:
            handle.read()

    def imread_loop() -> None:
        for name in files:
            cv2.imread(name, cv2.IMREAD_COLOR)

    def histoclass_cold() -> None:
        with tempfile.TemporaryDirectory() as cache:
            decoded = load_images(records, args.size, cache_dir=cache, progress=False)
            assert decoded.usable.sum() > 0.99 * len(records)

    def threads_in_memory() -> None:  # the thread pool (the path under 2,048 images), into memory
        images = np.zeros((len(records), args.size, args.size, 3), np.uint8)
        _decode_into(images, records, args.size, None, False)

    ways = {"cv2.imread loop, one thread": imread_loop,
            f"histoclass, worker processes ({start_method()}), cold cache": histoclass_cold,
            "histoclass, thread pool, in memory": threads_in_memory}
    seconds: dict[str, list[float]] = {name: [] for name in ways}
    cpu: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(args.repeats):
        for name, way in ways.items():
            before, started = _cpu_seconds(), time.perf_counter()
            way()
            seconds[name].append(time.perf_counter() - started)
            cpu[name].append(_cpu_seconds() - before)
    base = statistics.median(seconds["cv2.imread loop, one thread"])
    print(f"{len(files):,} files of {args.data}; {usable_cores()} usable cores; load average "
          f"{os.getloadavg()[0]:.2f} at the end; medians of {args.repeats} repeats\n")
    print("| way | seconds | images/s | vs cv2.imread loop | CPU µs per image (all processes) |\n"
          "|---|---|---|---|---|")
    for name, values in seconds.items():
        median = statistics.median(values)
        print(f"| {name} | {median:.2f} | {len(files) / median:,.0f} | {base / median:.2f}x | "
              f"{statistics.median(cpu[name]) / len(files) * 1e6:.0f} |")
    print("\nCPU time counts this process and its ended worker processes (user + system): on a "
          "machine that other jobs load, it shows what each way costs where the wall clock cannot.")


def _cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


if __name__ == "__main__":
    main()
