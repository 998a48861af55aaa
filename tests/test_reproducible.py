"""Reproducibility: the same data, config and seed give the same split, the same weights and,
on CPU, the same metrics; metadata.json says what else could make two runs differ."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import make_idc_tree
from test_bad_inputs import run_cli

# What may differ between two runs of one seed: when they ran and how long they took.
TIMING_KEYS = {"started", "training_seconds"}


def train_process(data: Path, run: Path, cache: Path, seed: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run([sys.executable, "-m", "histoclass", "train", "--data", str(data), "--out", str(run),
                           "--epochs", "3", "--batch-size", "8", "--seed", str(seed), "--cache-dir", str(cache),
                           "--quiet"], env=env, capture_output=True, text=True, timeout=600)


def history_without_timing(run: Path) -> list[dict]:
    with open(run / "history.csv", newline="", encoding="utf-8") as handle:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(handle)]


def weights(run: Path) -> list[np.ndarray]:
    from histoclass.runs.model_file import load_model
    return load_model(run / "model.keras").get_weights()


@pytest.fixture(scope="module")
def three_runs(tmp_path_factory) -> dict[str, Path]:
    """Seed 7 twice (in separate processes; the first decodes, the second reads the cache) and
    seed 8 once."""
    base = tmp_path_factory.mktemp("repro")
    data = make_idc_tree(base / "data", num_patients=8, per_class=6, seed=3)
    runs = {"a": (base / "a", 7), "b": (base / "b", 7), "other_seed": (base / "c", 8)}
    for name, (run, seed) in runs.items():
        result = train_process(data, run, base / "cache", seed)
        assert result.returncode == 0, result.stderr
    return {name: run for name, (run, _) in runs.items()}


@pytest.mark.slow
def test_same_seed_same_split_weights_and_history(three_runs):
    a, b = three_runs["a"], three_runs["b"]
    assert (a / "split.csv").read_bytes() == (b / "split.csv").read_bytes()
    assert history_without_timing(a) == history_without_timing(b)
    assert all(np.array_equal(x, y) for x, y in zip(weights(a), weights(b)))
    assert json.loads((a / "calibration.json").read_text()) == json.loads((b / "calibration.json").read_text())


@pytest.mark.slow
def test_same_seed_same_metrics(three_runs, tmp_path):
    metrics = []
    for name in ("a", "b"):
        code, _, stderr = run_cli(["evaluate", three_runs[name], "--out", tmp_path / name, "-q",
                                   "--cache-dir", tmp_path / "cache"])
        assert code == 0, stderr
        metrics.append(json.loads((tmp_path / name / "metrics.json").read_text()))
    assert metrics[0] == metrics[1]
    assert (tmp_path / "a" / "predictions.csv").read_bytes() == (tmp_path / "b" / "predictions.csv").read_bytes()


@pytest.mark.slow
def test_another_seed_gives_another_model(three_runs):
    assert not all(np.array_equal(x, y) for x, y in zip(weights(three_runs["a"]), weights(three_runs["other_seed"])))


@pytest.mark.slow
def test_metadata_says_why_runs_differ(three_runs):
    a, b, c = (json.loads((three_runs[n] / "metadata.json").read_text()) for n in ("a", "b", "other_seed"))
    assert a["status"] == "complete" and a["seed"] == 7
    assert {"histoclass", "python", "keras", "numpy", "backend", "tensorflow"} <= set(a["versions"])
    for key in ("platform", "machine", "cpu_count", "devices", "floatx", "environment_variables"):
        assert key in a, key
    assert a["deterministic_ops"] is True
    assert a["environment_variables"].get("CUDA_VISIBLE_DEVICES") == ""
    assert {k for k in a if a[k] != b[k]} <= TIMING_KEYS  # same seed: only the clock differs
    assert "seed" in {k for k in a if a[k] != c[k]}
    config_a, config_c = (json.loads((three_runs[n] / "config.json").read_text()) for n in ("a", "other_seed"))
    assert config_a["data"]["fingerprint"] == config_c["data"]["fingerprint"]  # the same data
    assert {k for k in config_a["train"] if config_a["train"][k] != config_c["train"][k]} == {"seed"}
