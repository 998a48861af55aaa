#!/usr/bin/env python3
"""The Kaggle-scale measurements of benchmarks/gpu.sh, as a user runs the landed code: a table
of decoding, one epoch of each recipe at its defaults, inference of both engines and slides.

    KERAS_BACKEND=jax python benchmarks/gpu_bench.py --out DIR [--quick] [--no-tensorflow]

Kaggle scale: `histoclass synth --patients 279` (about 277,000 50 px patches, the Kaggle IDC
set's size). `--quick`: 12 patients at a third of the slide size, for a CPU in a few minutes.
`--no-tensorflow`: TensorFlow cannot be imported (as on the GPU machines it is absent from),
so that a quick run on a machine that has it proves the GPU path never needs it.
Every training run is 2 epochs: the first pays the compilation, the second is the epoch's cost.
Writes DIR/gpu_table.md and DIR/gpu_results.json.
"""
from __future__ import annotations

import argparse
import importlib.abc
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path


class _NoTensorFlow(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "tensorflow" or name.startswith("tensorflow."):
            raise ImportError(f"{name} is blocked: this run proves the GPU path needs no TensorFlow")
        return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--no-tensorflow", action="store_true")
    parser.add_argument("--patients", type=int, default=None)
    parser.add_argument("--work", type=Path, default=None, help="folder for the data and runs (default: a temporary one)")
    args = parser.parse_args()
    if args.no_tensorflow:
        sys.meta_path.insert(0, _NoTensorFlow())
    args.out.mkdir(parents=True, exist_ok=True)
    patients = args.patients or (12 if args.quick else 279)
    slide_scale = 0.35 if args.quick else 1.0
    results: dict = {"patients": patients, "quick": args.quick, "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
    with tempfile.TemporaryDirectory(prefix="histoclass-gpu-", dir=args.work) as tmp:
        work = Path(tmp)
        try:
            measure(work, patients, slide_scale, results, args)
        finally:
            (args.out / "gpu_results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
            (args.out / "gpu_table.md").write_text(table(results))
            print(table(results), flush=True)
    return 0


def step(results: dict, name: str):
    """Runs one measurement; a failure is recorded in the table, the others still run."""
    def wrap(function):
        started = time.perf_counter()
        try:
            results[name] = function()
        except Exception as err:  # noqa: BLE001 - the benchmark reports and goes on
            results[name] = {"error": f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"}
        results[name]["wall_seconds"] = round(time.perf_counter() - started, 1)
        print(f"{name}: {results[name]}", flush=True)
        return function
    return wrap


def measure(work: Path, patients: int, slide_scale: float, results: dict, args) -> None:
    import numpy as np

    import histoclass
    from histoclass.data import discover
    from histoclass.data.cache import load_images
    from histoclass.data.parallel import usable_cores
    from histoclass.synth import generate_idc_dataset
    from histoclass.training.accelerator import accelerator_platform

    data = work / "synthetic"

    @step(results, "synth")  # first: its worker processes start before JAX's threads do
    def _():
        started = time.perf_counter()
        summary = generate_idc_dataset(data, num_patients=patients, seed=0, slide_scale=slide_scale, progress=False)
        generate_idc_dataset(work / "slide-patches", num_patients=2, seed=1, slide_scale=slide_scale,
                             progress=False, slides_dir=work / "slides")
        return {"patches": summary.num_patches, "seconds": round(time.perf_counter() - started, 1)}

    import keras
    results["machine"] = {"backend": keras.backend.backend(), "accelerator": accelerator_platform(),
                          "cpus": usable_cores(), "python": platform.python_version(),
                          "tensorflow_importable": _importable("tensorflow"),
                          "load_average": os.getloadavg()[0]}
    if keras.backend.backend() == "jax":
        import jax
        results["machine"]["devices"] = [str(d) for d in jax.devices()]
    print(f"machine: {results['machine']}", flush=True)

    records = discover(data).records

    @step(results, "decoding")
    def _():
        import cv2
        started = time.perf_counter()
        decoded = load_images(records, 50, cache_dir=work / "cache-decoding", progress=False)
        seconds = time.perf_counter() - started
        sample = [r.source for r in records[:: max(1, len(records) // 20000)]]
        started = time.perf_counter()
        for name in sample:
            cv2.imread(name)
        imread_per_s = len(sample) / (time.perf_counter() - started)
        return {"images": len(records), "usable": int(decoded.usable.sum()), "seconds": round(seconds, 1),
                "images_per_s": round(len(records) / seconds), "imread_loop_images_per_s": round(imread_per_s),
                "vs_imread_loop": round(len(records) / seconds / imread_per_s, 2)}

    runs = {}
    for recipe in ("original", "strong"):
        @step(results, f"train {recipe}")
        def _(recipe=recipe):
            started = time.perf_counter()
            run = histoclass.train(data, work / f"run-{recipe}", recipe=recipe, num_epochs=2,
                                   cache_dir=work / "cache")
            seconds = time.perf_counter() - started
            runs[recipe] = run
            history = [json.loads(json.dumps(row)) for row in _history(run.folder)]
            train_images = run.data.get("parts", {}).get("train", {}).get("images")
            return {"batch_size": run.config.batch_size, "learning_rate": run.config.learning_rate,
                    "train_images": train_images,
                    "epoch_seconds": [row["seconds"] for row in history],
                    "images_per_s_epoch_2": round(train_images / history[-1]["seconds"]) if train_images else None,
                    "val_auc": [round(row.get("val_auc", float("nan")), 4) for row in history],
                    "whole_train_seconds": round(seconds, 1)}

    test_images = None
    for recipe, run in runs.items():
        for engine in ("keras", "onnx"):
            @step(results, f"inference {recipe} {engine}")
            def _(run=run, engine=engine):
                nonlocal test_images
                if engine == "onnx" and keras.backend.backend() != "tensorflow":
                    # The run is converted to ONNX by tf2onnx, which needs TensorFlow.
                    return {"error": f"not available: the ONNX engine converts with TensorFlow, absent here "
                                     f"(Keras on {keras.backend.backend()})"}
                if test_images is None:
                    decoded = load_images(records, 50, cache_dir=work / "cache", progress=False)
                    rows = np.flatnonzero(decoded.usable)[:65536]
                    test_images = np.asarray(decoded.images[rows])
                run.use_engine(engine)
                run.model_probabilities(test_images[:1024])  # compiled once, before the clock
                started = time.perf_counter()
                run.model_probabilities(test_images)
                seconds = time.perf_counter() - started
                return {"images": len(test_images), "images_per_s": round(len(test_images) / seconds),
                        "test_time_augmentation": run.config.test_time_augmentation}

    if "original" in runs:
        @step(results, "slides")
        def _():
            from histoclass.slides.pipeline import run_slides
            slides = work / "slides"
            runs["original"].use_engine("keras")
            files = sorted(p for p in slides.iterdir() if p.suffix in (".tif", ".tiff"))
            started = time.perf_counter()
            summaries = run_slides(runs["original"].folder, files, work / "slides-out", progress=False)
            seconds = time.perf_counter() - started
            tiles = sum(s.get("tiles_classified", 0) for s in summaries)
            return {"slides": len(files), "tiles": tiles, "seconds": round(seconds, 1),
                    "tiles_per_s": round(tiles / seconds), "status": [s["status"] for s in summaries]}


def _history(folder: Path) -> list[dict]:
    import csv
    with open(folder / "history.csv", newline="") as handle:
        return [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(handle)]


def _importable(name: str) -> bool:
    import importlib.util
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def table(results: dict) -> str:
    machine = results.get("machine", {})
    lines = [f"{results.get('patients')} synthetic patients ({'quick, ' if results.get('quick') else ''}"
             f"{results.get('synth', {}).get('patches', '?')} patches); Keras backend {machine.get('backend')}, "
             f"accelerator {machine.get('accelerator') or 'none (CPU)'}, {machine.get('cpus')} CPUs, "
             f"devices {machine.get('devices', '-')}; TensorFlow importable: {machine.get('tensorflow_importable')}",
             "", "| step | measured | images/s |", "|---|---|---|"]

    def row(name: str, text, rate="") -> None:
        entry = results.get(name)
        if entry is None:
            return
        if "error" in entry:
            lines.append(f"| {name} | not measured: {entry['error']} | |")
        else:
            lines.append(f"| {name} | {text(entry)} | {rate(entry) if rate else ''} |")

    row("synth", lambda e: f"{e['patches']:,} patches in {e['seconds']} s")
    row("decoding", lambda e: f"{e['images']:,} PNGs, cold cache, {e['seconds']} s; one-thread cv2.imread loop "
                              f"{e['imread_loop_images_per_s']:,}/s ({e['vs_imread_loop']}x)",
        lambda e: f"{e['images_per_s']:,}")
    for recipe in ("original", "strong"):
        row(f"train {recipe}", lambda e: f"batch {e['batch_size']}, lr {e['learning_rate']:.3g}: epochs "
                                         f"{' / '.join(f'{s:.1f}' for s in e['epoch_seconds'])} s (the first "
                                         f"compiles), val AUC {' / '.join(map(str, e['val_auc']))}; whole "
                                         f"`train` {e['whole_train_seconds']} s",
            lambda e: f"{e['images_per_s_epoch_2']:,} (epoch 2)" if e.get("images_per_s_epoch_2") else "")
        for engine in ("keras", "onnx"):
            row(f"inference {recipe} {engine}", lambda e: f"{e['images']:,} images"
                + (", 8 TTA views each" if e["test_time_augmentation"] else ""), lambda e: f"{e['images_per_s']:,}")
    row("slides", lambda e: f"{e['slides']} synthetic slides, {e['tiles']:,} tiles, {e['seconds']} s (original CNN)",
        lambda e: f"{e['tiles_per_s']:,} tiles/s")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
