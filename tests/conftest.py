"""Shared fixtures: tiny images built in tmp_path, and the real data in ../shared/data."""
from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import cv2
import numpy as np
import pytest
from hypothesis import settings

# The same examples on every run: a CI failure is reproducible, never a matter of luck.
settings.register_profile("histoclass", derandomize=True, deadline=None)
settings.load_profile("histoclass")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def shared_data(name: str) -> Path:
    """A folder of ../shared/data; the test is skipped, saying why, where it is absent."""
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"real data {path} is not on this machine (it lives beside the project in shared/data)")
    return path


def write_png(path: Path, image: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, encoded = cv2.imencode(".png", image[..., ::-1] if image.ndim == 3 else image)
    assert ok
    path.write_bytes(encoded.tobytes())
    return path


def patch(label: int, rng: np.random.Generator, size: int = 50) -> np.ndarray:
    """A learnable toy patch: malignant ones are darker and purple, benign ones pink."""
    base = np.array([120, 60, 160]) if label else np.array([235, 170, 200])
    noise = rng.normal(0, 20, (size, size, 3))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def make_idc_tree(root: Path, num_patients: int = 6, per_class: int = 6, seed: int = 0) -> Path:
    """A tiny IDC-layout tree: <patient>/<label>/<patient>_idx5_x<X>_y<Y>_class<label>.png."""
    rng = np.random.default_rng(seed)
    for p in range(num_patients):
        patient = str(10000 + p)
        for label in (0, 1):
            for i in range(per_class):
                x, y = 1 + 50 * i, 1 + 50 * (label * 10 + p % 3)
                write_png(root / patient / str(label) / f"{patient}_idx5_x{x}_y{y}_class{label}.png",
                          patch(label, rng))
    return root


@pytest.fixture
def idc_tree(tmp_path) -> Path:
    return make_idc_tree(tmp_path / "idc")


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> Path:
    """One small run of the original CNN, shared by the tests that need a trained model."""
    from histoclass.config import config_for_recipe
    from histoclass.training.train import train
    base = tmp_path_factory.mktemp("trained")
    data = make_idc_tree(base / "data", num_patients=8, per_class=10)
    config = config_for_recipe("original", num_epochs=3, batch_size=16)
    run = train(data, base / "run", config, cache_dir=base / "cache", progress=False)
    # Training stored the sharpness of its patches (focus.json); these toy patches are pixel
    # noise, sharper than any tissue, against which every painted slide of the tests would be
    # out of focus. The run judges blur against painted tissue instead (synthetic data, seeded;
    # no model involved); what training wrote is kept beside the run for its own test.
    from histoclass.data.sharpness import focus_reference
    from histoclass.fileio import write_json_atomic
    from histoclass.synth.tissue import render_slide
    (run / "focus.json").replace(base / "focus_from_training.json")
    tiles = []
    for seed in range(4):
        rgb, _, tissue = render_slide(np.random.default_rng(100 + seed), 500, 400, tumour_fraction=0.4)
        tiles += [rgb[y:y + 50, x:x + 50] for y in range(0, 350, 50) for x in range(0, 450, 50)
                  if tissue[y:y + 50, x:x + 50].mean() >= 0.5]
    write_json_atomic(run / "focus.json", focus_reference(np.stack(tiles)))
    return run


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray of 2 CPUs for the tests of one module, shut down after them."""
    import ray
    os.environ.setdefault("RAY_memory_monitor_refresh_ms", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             object_store_memory=256 * 2**20)
    try:
        yield
    finally:
        ray.shutdown()


def chromium_path() -> str:
    """Chromium for the browser tests; the test is skipped, saying why, where there is none."""
    import shutil
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("no Chromium on this machine (Debian: apt-get install chromium; .ci/run installs it)")


class ActorKiller:
    """An `on_batch` hook for the Ray tests: SIGKILLs the model actor of the first batch that
    comes back, then records which workers answered after it."""

    def __init__(self):
        self.killed: list[int] = []
        self.workers_after_kill: set[str] = set()

    def __call__(self, batch) -> None:
        import signal
        if self.killed:
            self.workers_after_kill.update(str(w) for w in batch["worker"])
            return
        pid = int(str(batch["worker"][0]).rsplit(":", 1)[1])
        os.kill(pid, signal.SIGKILL)
        self.killed.append(pid)
