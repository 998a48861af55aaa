#!/usr/bin/env python3
"""One /predict request of 256 real IDC PNGs against `Run.predict` on the same images already
decoded, and `Run.predict_files` on the same files, side by side (original CNN, Keras engine).

    PYTHONPATH=src python benchmarks/request_speed.py [--data ../shared/data/idc-sample] [--repeats 7]

The original CNN is cheap, so every overhead of the service shows: reading the multipart
upload, decoding, the batcher, the JSON answer. `histoclass serve` runs in its own process on
127.0.0.1 as a user starts it (benchmarks/serve.py's `server`). The run is trained here for one
epoch on synthetic patches: speed does not depend on how well a model was trained. Each way's
best of `--repeats`, taken in turn, so that the machine's load touches them alike.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    import httpx
    import numpy as np

    import histoclass
    from histoclass.data.decode import decode_file
    from histoclass.synth import generate_idc_dataset
    from serve import server

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[1].parent / "shared/data/idc-sample"))
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    import cv2
    files = sorted(str(p) for p in Path(args.data).glob("*/*/*.png"))
    files = [f for f in files if cv2.imread(f).shape[:2] == (50, 50)][:args.images]  # full patches only
    decoded = np.stack([decode_file(f, 50)[0] for f in files])
    payload = [("files", (Path(f).name, Path(f).read_bytes(), "image/png")) for f in files]
    with tempfile.TemporaryDirectory(prefix="histoclass-bench-") as tmp:
        generate_idc_dataset(Path(tmp) / "synthetic", num_patients=6, seed=0, slide_scale=0.4, progress=False)
        run = histoclass.train(Path(tmp) / "synthetic", Path(tmp) / "run", recipe="original", num_epochs=1,
                               cache_dir=Path(tmp) / "cache")
        seconds = {"Run.predict (decoded)": [], "/predict request": [], "Run.predict_files": []}
        with server(run.folder, "keras") as (url, _), httpx.Client(timeout=120) as client:
            answer = client.post(f"{url}/predict", files=payload).json()  # warm up every path
            run.predict(decoded), run.predict_files(files)
            for _ in range(args.repeats):
                start = time.perf_counter()
                direct = run.predict(decoded)
                seconds["Run.predict (decoded)"].append(time.perf_counter() - start)
                start = time.perf_counter()
                answer = client.post(f"{url}/predict", files=payload).json()
                seconds["/predict request"].append(time.perf_counter() - start)
                start = time.perf_counter()
                from_files = run.predict_files(files)
                seconds["Run.predict_files"].append(time.perf_counter() - start)
        served = np.array([r["prob_malignant"] for r in answer["results"]])
        listed = np.array([p.prob_malignant for p in from_files])
    base = min(seconds["Run.predict (decoded)"])
    print(f"{len(files)} real 50x50 PNGs of {args.data}; original CNN, Keras engine "
          f"({os.environ.get('KERAS_BACKEND', 'tensorflow')}); {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.1f}; best of {args.repeats}\n")
    print("| way | seconds | images/s | vs Run.predict |\n|---|---|---|---|")
    for name, values in seconds.items():
        print(f"| {name} | {min(values):.3f} | {len(files) / min(values):,.0f} | {base / min(values):.2f}x |")
    print(f"\nlargest |difference| of probabilities: request {np.abs(served - direct).max():.1e}, "
          f"predict_files {np.abs(listed - direct).max():.1e}")


if __name__ == "__main__":
    main()
