#!/usr/bin/env python3
"""`histoclass serve` and the ONNX engine, measured side by side in one process (loopback only).

    python benchmarks/serve.py [--requests 2000] [--clients 32] [--time-limit 300] [--out benchmarks/serve.json]

1. ONNX Runtime against Keras `predict`: images/s of `Run.model_probabilities` (uint8, batch 512,
   no test-time augmentation) for the original CNN and histo_resnet, alternating twice and
   keeping each one's best; the largest difference between their probabilities.
2. `histoclass serve` in its own process on 127.0.0.1: `--clients` concurrent clients send
   `--requests` requests of one 50x50 PNG each: requests/s, p50 and p99 latency, errors,
   model calls (how well the batcher combined them), the server's resident memory before and
   after; once per engine.
3. One request of 256 images against `Run.predict` on the same arrays (best of 5 each).

Runs are trained here for one epoch on synthetic slides (`histoclass.synth`): speed does not
depend on how well a model was trained. Every loop is bounded in count and in time.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import cv2  # noqa: E402
import numpy as np  # noqa: E402

import histoclass  # noqa: E402
from histoclass.inference.engines import KerasEngine, OnnxEngine  # noqa: E402


def make_runs(base: Path) -> dict[str, histoclass.Run]:
    from histoclass.synth import generate_idc_dataset
    data = base / "synthetic"
    generate_idc_dataset(data, num_patients=6, seed=0, slide_scale=0.4, progress=False)
    runs = {}
    for label, recipe in (("original CNN", "original"), ("histo_resnet", "strong")):
        runs[label] = histoclass.train(data, base / recipe, recipe=recipe, num_epochs=1, cache_dir=base / "cache")
    return runs


def engine_speed(run, images: np.ndarray, repeats: int = 2) -> dict:
    engines = {"keras": KerasEngine(run.models, False), "onnx": OnnxEngine(run.models, run.image_size, False)}
    best, outputs = {name: 0.0 for name in engines}, {}
    for _ in range(repeats):
        for name, engine in engines.items():
            engine.model_probabilities(images[:512])  # warm up
            start = time.perf_counter()
            outputs[name] = engine.model_probabilities(images, batch_size=512)
            best[name] = max(best[name], len(images) / (time.perf_counter() - start))
    return {"keras_images_per_s": best["keras"], "onnx_images_per_s": best["onnx"],
            "ratio": best["onnx"] / best["keras"],
            "max_abs_difference": float(np.abs(outputs["onnx"] - outputs["keras"]).max())}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def process_rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


@contextlib.contextmanager
def server(run_dir: Path, engine: str):
    """`histoclass serve` in its own process on 127.0.0.1, as a user starts it."""
    import httpx
    port = free_port()
    process = subprocess.Popen([sys.executable, "-c", "import sys; from histoclass.cli import main; sys.exit(main())",
                                "serve", str(run_dir), "--port", str(port), "--engine", engine],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"histoclass serve did not start (exit code {process.poll()})")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            time.sleep(0.2)
        yield url, process.pid
    finally:
        process.terminate()
        process.wait(timeout=30)


async def load_test(url: str, png: bytes, num_requests: int, num_clients: int, time_limit: float) -> dict:
    import httpx
    latencies, errors = [], 0
    remaining = iter(range(num_requests))
    stop_at = time.monotonic() + time_limit

    async def client(session):
        nonlocal errors
        for _ in remaining:
            if time.monotonic() > stop_at:
                return
            start = time.perf_counter()
            try:
                answer = await session.post(f"{url}/predict", files=[("files", ("p.png", png, "image/png"))])
                ok = answer.status_code == 200 and answer.json()["results"][0]["status"] == "ok"
            except httpx.HTTPError:
                ok = False
            latencies.append(time.perf_counter() - start)
            errors += not ok

    limits = httpx.Limits(max_connections=num_clients, max_keepalive_connections=num_clients)
    async with httpx.AsyncClient(timeout=60, limits=limits) as session:
        start = time.perf_counter()
        await asyncio.gather(*(client(session) for _ in range(num_clients)))
        elapsed = time.perf_counter() - start
    latencies = np.array(latencies)
    return {"requests": len(latencies), "errors": errors, "requests_per_s": len(latencies) / elapsed,
            "p50_ms": float(np.percentile(latencies, 50) * 1000), "p99_ms": float(np.percentile(latencies, 99) * 1000)}


def service(run, engine: str, args, png: bytes, batch: np.ndarray) -> dict:
    import httpx
    run.use_engine(engine)  # Run.predict below uses the same engine as the service
    with server(run.folder, engine) as (url, pid):
        httpx.post(f"{url}/predict", files=[("files", ("p.png", png, "image/png"))], timeout=60)  # warm up
        rss_before = process_rss_mib(pid)
        calls_before = httpx.get(f"{url}/health").json()["model_calls"]
        result = asyncio.run(load_test(url, png, args.requests, args.clients, args.time_limit))
        result["model_calls"] = httpx.get(f"{url}/health").json()["model_calls"] - calls_before
        result.update(rss_before_mib=rss_before, rss_after_mib=process_rss_mib(pid))
        files = [("files", (f"{i}.png", encoded(image), "image/png")) for i, image in enumerate(batch)]
        request_s, predict_s = [], []
        for _ in range(5):
            start = time.perf_counter()
            answer = httpx.post(f"{url}/predict", files=files, timeout=120)
            request_s.append(time.perf_counter() - start)
            start = time.perf_counter()
            direct = run.predict(batch)
            predict_s.append(time.perf_counter() - start)
        served = np.array([r["prob_malignant"] for r in answer.json()["results"]])
    result.update(request_256_images_per_s=len(batch) / min(request_s),
                  predict_256_images_per_s=len(batch) / min(predict_s),
                  request_vs_predict=min(predict_s) / min(request_s),
                  request_max_abs_difference=float(np.abs(served - direct).max()))
    return result


def encoded(image: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".png", image[..., ::-1])
    return data.tobytes()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--time-limit", type=float, default=300.0, help="seconds per load test at most")
    parser.add_argument("--images", type=int, default=8192, help="images for the engine comparison")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("serve.json"))
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (args.images, 50, 50, 3), dtype=np.uint8)
    # The machine's load is printed with the table: on a shared CPU it moves every number.
    results: dict = {"cpu_count": os.cpu_count(), "load_average_before": os.getloadavg()[0],
                     "engines": {}, "service": {}}
    with tempfile.TemporaryDirectory(prefix="histoclass-bench-") as tmp:
        runs = make_runs(Path(tmp))
        for label, run in runs.items():
            results["engines"][label] = engine_speed(run, images)
            print(f"{label}: {results['engines'][label]}", flush=True)
        run = runs["original CNN"]
        png = encoded(images[0])
        for engine in ("keras", "onnx"):
            results["service"][engine] = service(run, engine, args, png, images[:256])
            print(f"service, {engine} engine: {results['service'][engine]}", flush=True)
    results["load_average_after"] = os.getloadavg()[0]
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))
    return 0


def table(results: dict) -> str:
    lines = [f"CPU cores: {results['cpu_count']}; 1-minute load average {results['load_average_before']:.1f} "
             f"before, {results['load_average_after']:.1f} after", "",
             "| model | Keras predict (images/s) | ONNX Runtime (images/s) | ratio | max |difference| |",
             "|---|---:|---:|---:|---:|"]
    for label, r in results["engines"].items():
        lines.append(f"| {label} | {r['keras_images_per_s']:,.0f} | {r['onnx_images_per_s']:,.0f} | "
                     f"{r['ratio']:.2f}x | {r['max_abs_difference']:.1e} |")
    lines += ["", "| service (original CNN) | keras engine | onnx engine |", "|---|---:|---:|"]
    rows = [("requests (1 image each)", "requests", "{:,}"), ("errors", "errors", "{}"),
            ("requests/s", "requests_per_s", "{:,.0f}"), ("p50 latency (ms)", "p50_ms", "{:.1f}"),
            ("p99 latency (ms)", "p99_ms", "{:.1f}"), ("model calls", "model_calls", "{:,}"),
            ("RSS before / after (MiB)", None, None),
            ("one request of 256 images (images/s)", "request_256_images_per_s", "{:,.0f}"),
            ("Run.predict on the same 256 (images/s)", "predict_256_images_per_s", "{:,.0f}"),
            ("request / Run.predict", "request_vs_predict", "{:.2f}x"),
            ("max |served - Run.predict|", "request_max_abs_difference", "{:.1e}")]
    for name, key, fmt in rows:
        cells = []
        for engine in ("keras", "onnx"):
            r = results["service"][engine]
            cells.append(f"{r['rss_before_mib']:,.0f} / {r['rss_after_mib']:,.0f}" if key is None else fmt.format(r[key]))
        lines.append(f"| {name} | {' | '.join(cells)} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
