"""`histoclass predict --ray`: a real local Ray (2 CPUs), a worker killed mid-job, and a Ray
head started with `ray start --head` joined by its address. No mocks."""
from __future__ import annotations

import csv
import io
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import ActorKiller, patch, write_png

ray = pytest.importorskip("ray")

from histoclass.cluster.ray_engine import PoolPlan, plan_pool  # noqa: E402
from histoclass.errors import HistoclassError  # noqa: E402
from histoclass.inference.files import write_predictions_csv  # noqa: E402

ENV = {**os.environ, "RAY_memory_monitor_refresh_ms": "0", "RAY_USAGE_STATS_ENABLED": "0",
       "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}


# ---- sizing the pool (pure) -----------------------------------------------------------------

@pytest.mark.parametrize("resources, workers", [
    ({"CPU": 2.0}, None), ({"CPU": 2.0}, 2), ({"CPU": 1.0}, None), ({"CPU": 16.0}, None),
    ({"CPU": 3.0}, 4), ({"CPU": 8.0, "GPU": 2.0}, None), ({"CPU": 1.0, "GPU": 4.0}, 3)])
def test_pool_never_asks_more_than_ray_has(resources, workers):
    plan = plan_pool(resources, workers)
    assert plan.num_actors * plan.actor_cpus + plan.read_cpus <= resources["CPU"] + 1e-9
    assert plan.num_actors * plan.actor_gpus <= resources.get("GPU", 0)
    if workers is not None:
        assert plan.num_actors == min(workers, int(resources.get("GPU", 0)) or workers)


def test_pool_sizes():
    assert plan_pool({"CPU": 2.0}) == PoolPlan(1, 1.0, 0.0, 0.5)
    assert plan_pool({"CPU": 2.0}, 2) == PoolPlan(2, 0.75, 0.0, 0.5)
    assert plan_pool({"CPU": 16.0}) == PoolPlan(15, 1.0, 0.0, 1.0)
    assert plan_pool({"CPU": 8.0, "GPU": 2.0}) == PoolPlan(2, 1.0, 1.0, 1.0)


def test_pool_refuses_what_cannot_fit():
    with pytest.raises(HistoclassError, match=r"--workers 9 do not fit in the 2 CPUs Ray reports \(at most 6 here\)"):
        plan_pool({"CPU": 2.0}, 9)
    with pytest.raises(HistoclassError, match="reports 0 free CPUs"):
        plan_pool({"CPU": 0.0})


# ---- a local Ray ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """60 patches, one file that is not an image and one of an odd size."""
    folder = tmp_path_factory.mktemp("ray_images")
    rng = np.random.default_rng(7)
    for i in range(60):
        write_png(folder / f"p{i:03d}.png", patch(i % 2, rng))
    write_png(folder / "big.png", patch(1, rng, size=73))
    (folder / "broken.png").write_text("not a png")
    return folder


@pytest.fixture(scope="module")
def many_images(tmp_path_factory) -> Path:
    """300 patches: with 4 a batch, far more batches than an actor holds in flight, so the
    restarted actor must answer some."""
    folder = tmp_path_factory.mktemp("ray_many")
    rng = np.random.default_rng(8)
    for i in range(300):
        write_png(folder / f"m{i:03d}.png", patch(i % 2, rng))
    return folder


def csv_rows(text: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(text)))


def local_csv(run_dir: Path, inputs: list[Path], tmp_path: Path) -> str:
    from histoclass import load_run
    write_predictions_csv(load_run(run_dir).predict_files(inputs), tmp_path / "local.csv")
    return (tmp_path / "local.csv").read_text()


def assert_same_predictions(ray_text: str, local_text: str) -> None:
    ray_rows, local_rows = csv_rows(ray_text), csv_rows(local_text)
    assert [r["path"] for r in ray_rows] == [r["path"] for r in local_rows]
    assert [r["status"] for r in ray_rows] == [r["status"] for r in local_rows]
    assert [r["predicted_label"] for r in ray_rows] == [r["predicted_label"] for r in local_rows]
    ok = [i for i, r in enumerate(local_rows) if r["status"] == "ok"]
    np.testing.assert_allclose([float(ray_rows[i]["prob_malignant"]) for i in ok],
                               [float(local_rows[i]["prob_malignant"]) for i in ok], atol=1e-6)


@pytest.mark.slow
def test_predict_on_ray_writes_the_local_csv(local_ray, trained_run, images, tmp_path):
    from histoclass.cluster.ray_predict import predict_files_on_ray
    predictions, throughput = predict_files_on_ray(trained_run, [images], "auto", num_workers=2, batch_size=16)
    write_predictions_csv(predictions, tmp_path / "ray.csv")
    expected = local_csv(trained_run, [images], tmp_path)
    assert_same_predictions((tmp_path / "ray.csv").read_text(), expected)
    broken = [p for p in predictions if p.path.endswith("broken.png")]
    assert broken[0].status.startswith("skipped: not an image")
    assert sum(throughput.images.values()) == 62
    assert "62 images" in throughput.summary()


@pytest.mark.slow
def test_a_killed_worker_is_restarted_and_the_job_completes(local_ray, trained_run, many_images, tmp_path):
    """The only model actor is killed (SIGKILL) as the first results arrive: Ray restarts it,
    retries its batches, and every file still gets its local number."""
    from histoclass.cluster.ray_predict import predict_files_on_ray
    kill_first_worker = ActorKiller()

    predictions, _ = predict_files_on_ray(trained_run, [many_images], "auto", num_workers=1, batch_size=4,
                                          on_batch=kill_first_worker)
    assert kill_first_worker.killed
    assert any(not w.endswith(f":{kill_first_worker.killed[0]}") for w in kill_first_worker.workers_after_kill), "no restarted worker answered"
    write_predictions_csv(predictions, tmp_path / "ray.csv")
    assert_same_predictions((tmp_path / "ray.csv").read_text(), local_csv(trained_run, [many_images], tmp_path))


# ---- a Ray head started by `ray start`, joined by its address ---------------------------------

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_predict_joins_a_ray_head_by_address(trained_run, images, tmp_path):
    port = free_port()
    # Ray 2.60 guards a cluster with a token; both sides get this one (nothing from ~/.ray).
    env = {**ENV, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16)}
    ray_cli = Path(sys.executable).with_name("ray")
    # --block keeps the head in this one process group, which the test ends on its own.
    head = subprocess.Popen([str(ray_cli), "start", "--head", "--port", str(port), "--node-ip-address",
                             "127.0.0.1", "--num-cpus", "2", "--include-dashboard", "false",
                             "--disable-usage-stats", "--block"], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        out = tmp_path / "ray.csv"
        deadline = time.monotonic() + 120
        while True:  # the head takes a few seconds to listen
            done = subprocess.run([sys.executable, "-m", "histoclass", "predict", str(trained_run), str(images),
                                   "--ray", f"127.0.0.1:{port}", "--output", str(out), "--quiet"],
                                  env=env, capture_output=True, text=True, timeout=600)
            if done.returncode == 0 or time.monotonic() > deadline or head.poll() is not None:
                break
            time.sleep(3)
        assert done.returncode == 0, done.stderr[-2000:]
        assert "images in" in done.stderr and "worker(s)" in done.stderr  # the throughput summary
        assert_same_predictions(out.read_text(), local_csv(trained_run, [images], tmp_path))
    finally:
        os.killpg(head.pid, signal.SIGTERM)  # `ray start --block` stops what it started
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait()


@pytest.mark.slow
def test_a_wrong_address_is_a_clear_error(trained_run, tmp_path):
    write_png(tmp_path / "one.png", patch(0, np.random.default_rng(0)))
    done = subprocess.run([sys.executable, "-m", "histoclass", "predict", str(trained_run), str(tmp_path),
                           "--ray", f"127.0.0.1:{free_port()}", "--quiet"],
                          env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "could not join the Ray cluster at '127.0.0.1:" in done.stderr


@pytest.mark.slow
def test_predict_without_ray_never_imports_it(trained_run, images):
    code = ("import sys\nfrom histoclass.cli import main\n"
            f"code = main(['predict', {str(trained_run)!r}, {str(images)!r}, '--quiet'])\n"
            "assert 'ray' not in sys.modules, 'ray was imported'\nsys.exit(code)")
    done = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count(".png,") == 62
