"""`histoclass train --devices`: JAX over two virtual CPU devices (DataParallel) and TensorFlow
over two logical CPUs (MirroredStrategy) train, and their loss matches one device with the
same global batch. Each run is its own process: device counts are fixed at backend start-up."""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import make_idc_tree

from histoclass.errors import HistoclassError
from histoclass.training.devices import parse_devices

TWO_TF_CPUS = """
import sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from histoclass.cli import main
sys.exit(main(sys.argv[1:]))
"""


def backend_env(backend: str) -> dict:
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    if backend == "jax":
        env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
        env["JAX_PLATFORMS"] = "cpu"
    return env


def histoclass(backend: str, *args, wait: bool = True):
    command = ([sys.executable, "-c", TWO_TF_CPUS] if backend == "tensorflow"
               else [sys.executable, "-m", "histoclass"]) + [str(a) for a in args]
    if not wait:
        return subprocess.Popen(command, env=backend_env(backend), stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
    return subprocess.run(command, env=backend_env(backend), capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_idc_tree(tmp_path_factory.mktemp("devices") / "data", num_patients=6, per_class=8)


def first_epoch_loss(run: Path) -> float:
    with open(run / "history.csv", newline="") as handle:
        return float(next(csv.DictReader(handle))["loss"])


def test_devices_option_is_a_count_or_all():
    assert parse_devices("all") is None and parse_devices("2") == 2
    for bad in ("0", "-1", "two"):
        with pytest.raises(HistoclassError, match=rf"--devices '{bad}' is neither a positive number nor 'all'"):
            parse_devices(bad)


@pytest.mark.slow
@pytest.mark.parametrize("backend, tolerance", [
    ("jax", 1e-4),  # the same dropout masks: the same numbers up to float rounding
    ("tensorflow", 0.03),  # each replica draws its own dropout mask (measured: 0.007 apart)
])
def test_two_devices_train_like_one(backend, tolerance, data, tmp_path):
    cache = tmp_path / "cache"
    common = ["train", "--data", data, "--epochs", 1, "--batch-size", 16, "--cache-dir", cache, "--quiet"]
    one = histoclass(backend, *common, "--out", tmp_path / "one")
    assert one.returncode == 0, one.stderr[-3000:]
    two = histoclass(backend, *common, "--out", tmp_path / "two", "--devices", "2")
    assert two.returncode == 0, two.stderr[-3000:]
    distribution = json.loads((tmp_path / "two" / "metadata.json").read_text())["distribution"]
    assert distribution["count"] == 2 and distribution["backend"] == backend
    assert distribution["strategy"] == ("DataParallel" if backend == "jax" else "MirroredStrategy")
    assert json.loads((tmp_path / "one" / "metadata.json").read_text())["distribution"]["count"] == 1
    assert abs(first_epoch_loss(tmp_path / "two") - first_epoch_loss(tmp_path / "one")) < tolerance
    assert (tmp_path / "two" / "model.keras").is_file() and (tmp_path / "two" / "calibration.json").is_file()


@pytest.mark.slow
def test_more_devices_than_there_are_is_a_clear_error(data, tmp_path):
    done = histoclass("jax", "train", "--data", data, "--out", tmp_path / "run", "--devices", 3,
                      "--cache-dir", tmp_path / "cache", "--quiet")
    assert done.returncode == 2
    assert "--devices 3 asked for, but this machine has 2" in done.stderr
    assert not (tmp_path / "run" / "config.json").exists()


@pytest.mark.slow
def test_an_interrupted_two_device_run_resumes(data, tmp_path):
    """Killed after its first epoch on two devices, the run resumes on two devices and ends
    with every epoch in its history; the learning rate scaled once (--scale-lr) stays so."""
    run, cache = tmp_path / "run", tmp_path / "cache"
    process = histoclass("jax", "train", "--data", data, "--out", run, "--epochs", 3, "--batch-size", 8,
                         "--devices", 2, "--scale-lr", "--cache-dir", cache, "--quiet", wait=False)
    try:
        deadline = time.monotonic() + 600
        while process.poll() is None and time.monotonic() < deadline:
            state = run / "state.json"
            if state.is_file() and json.loads(state.read_text()).get("epochs_done", 0) >= 1:
                process.send_signal(signal.SIGKILL)
                break
            time.sleep(0.2)
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
    assert process.returncode == -signal.SIGKILL, "the run ended before it could be interrupted"
    config = json.loads((run / "config.json").read_text())
    assert config["train"]["learning_rate"] == pytest.approx(2e-3)
    resumed = histoclass("jax", "train", "--resume", run, "--devices", 2, "--cache-dir", cache, "--quiet")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    with open(run / "history.csv", newline="") as handle:
        assert [int(row["epoch"]) for row in csv.DictReader(handle)] == [1, 2, 3]
    metadata = json.loads((run / "metadata.json").read_text())
    assert metadata["status"] == "complete" and metadata["distribution"]["count"] == 2
