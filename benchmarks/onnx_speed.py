#!/usr/bin/env python3
"""The ONNX engine against the Keras engine for one run, side by side in one process.

    python benchmarks/onnx_speed.py [--run RUN] [--images 4096] [--rounds 3] [--batch-size 512]

Images: the first `--images` real IDC patches of ../shared/data/idc-sample (sorted paths), at
the run's size, stain-normalized once by the run beforehand (normalization runs in numpy
before either engine, so it is not timed). Without `--run`, a strong run (histo_resnet with the
8 test-time views) is trained here for one epoch on 4 synthetic patients: speed depends on the
architecture and the views, not on how well the weights were trained.

Each engine (and `--variants` of the ONNX one) runs once to warm up, then in turn, `--rounds`
times, interleaved, on the same images: the table gives each one's best images/s, its ratio to
Keras's best, the spread of the per-round ratios (the machine is shared: other jobs' load
moves single rounds), images per second of this process's CPU time (all its threads: what
the work costs, whatever the other jobs take) and its ratio, and the largest difference from
Keras's probabilities.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

import histoclass  # noqa: E402
from histoclass.data.decode import BadImage, decode_file  # noqa: E402
from histoclass.inference.engines import KerasEngine, OnnxEngine  # noqa: E402

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "idc-sample"


def strong_run(base: Path) -> histoclass.Run:
    from histoclass.synth import generate_idc_dataset
    generate_idc_dataset(base / "synthetic", num_patients=4, seed=0, slide_scale=0.3, progress=False)
    histoclass.train(base / "synthetic", base / "strong", recipe="strong", num_epochs=1,
                     cache_dir=base / "cache")
    return histoclass.load_run(base / "strong")


def real_patches(data: Path, count: int, size: int) -> np.ndarray:
    """The first `count` patches (sorted paths) that decode; edge patches too small to use are
    passed over, as `histoclass train` passes them over."""
    images = []
    for path in sorted(data.glob("*/[01]/*.png")):
        try:
            images.append(decode_file(str(path), size)[0])
        except BadImage:
            continue
        if len(images) == count:
            return np.stack(images)
    raise SystemExit(f"{data} holds {len(images)} usable patches, fewer than --images {count}")


def engines(run, variants: list[str]) -> dict:
    tta = run.config.test_time_augmentation
    out = {"keras": KerasEngine(run.models, tta)}
    for variant in variants:
        if variant == "onnx":
            out[variant] = OnnxEngine(run.models, run.image_size, tta)
        elif variant == "onnx-one-run":  # the engine before: one run per batch, intra-op threads
            out[variant] = OnnxEngine(run.models, run.image_size, tta, spinning=True, split=False)
        elif variant == "onnx-one-run-no-spin":
            out[variant] = OnnxEngine(run.models, run.image_size, tta, split=False)
        elif variant == "onnx-1-thread":
            out[variant] = OnnxEngine(run.models, run.image_size, tta, threads=1)
        else:
            raise SystemExit(f"unknown variant {variant!r}")
    return out


def measure(named: dict, images: np.ndarray, rounds: int, batch_size: int) -> dict:
    outputs = {name: engine.model_probabilities(images, batch_size=batch_size)  # warm up
               for name, engine in named.items()}
    seconds = {name: [] for name in named}
    cpu = {name: [] for name in named}
    for _ in range(rounds):
        for name, engine in named.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            engine.model_probabilities(images, batch_size=batch_size)
            seconds[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    rows = {}
    for name in named:
        ratios = [k / s for k, s in zip(seconds["keras"], seconds[name])]
        rows[name] = {"images_per_s": len(images) / min(seconds[name]),
                      "ratio": min(seconds["keras"]) / min(seconds[name]),
                      "ratio_min": min(ratios), "ratio_max": max(ratios),
                      "images_per_cpu_s": len(images) / min(cpu[name]),
                      "cpu_ratio": min(cpu["keras"]) / min(cpu[name]),
                      "max_abs_difference": float(np.abs(outputs[name] - outputs["keras"]).max())}
    return rows


def table(rows: dict, count: int, batch_size: int, load: tuple) -> str:
    lines = [f"{count:,} real idc patches, batch {batch_size}, load average before "
             f"{load[0]:.1f}, after {load[1]:.1f} (2 cores)", "",
             "| engine | images/s (best) | ratio to Keras (best) | per-round ratios | "
             "images per CPU second | CPU ratio | max |difference| |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['images_per_s']:,.0f} | {r['ratio']:.2f}x | "
                     f"{r['ratio_min']:.2f}-{r['ratio_max']:.2f}x | {r['images_per_cpu_s']:,.0f} | "
                     f"{r['cpu_ratio']:.2f}x | {r['max_abs_difference']:.1e} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, help="a strong run's folder (default: train one here)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--images", type=int, default=4096)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--variants", nargs="+", default=["onnx", "onnx-one-run"],
                        help="ONNX engines to time beside Keras: onnx, onnx-one-run (the engine before this change), onnx-one-run-no-spin, onnx-1-thread")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="histoclass-onnx-speed-") as tmp:
        run = histoclass.load_run(args.run) if args.run else strong_run(Path(tmp))
        if not run.config.test_time_augmentation:
            print("note: this run has no test-time augmentation; the issue's case is the strong recipe")
        images = real_patches(args.data, args.images, run.image_size)
        images = np.asarray(run.normalized(images))
        load_before = os.getloadavg()[0]
        rows = measure(engines(run, args.variants), images, args.rounds, args.batch_size)
        print(table(rows, len(images), args.batch_size, (load_before, os.getloadavg()[0])))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
