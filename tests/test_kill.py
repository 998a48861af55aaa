"""Interrupted runs: SIGKILL at random moments and Ctrl-C leave a run folder whose every file
is complete, and `histoclass train --resume` finishes it with the same split."""
from __future__ import annotations

import csv
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import make_idc_tree

KNOWN_FILES = {"model.keras", "last.keras", "config.json", "split.csv", "history.csv", "state.json",
               "metadata.json", "calibration.json", "focus.json", "skipped.csv", "train.log",
               "val_predictions.csv", "val_predictions.json"}
TEMPORARY = re.compile(r"^\..+\.tmp")  # what atomic_path leaves when killed mid-write
NUM_KILLS = 20
SEED = 20240611


def histoclass(*args, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.Popen([sys.executable, "-m", "histoclass", *map(str, args)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


@pytest.fixture(scope="module")
def small_data(tmp_path_factory) -> tuple[Path, Path]:
    """Data and a warm decoding cache, shared by every process of this module."""
    base = tmp_path_factory.mktemp("kill")
    data = make_idc_tree(base / "data", num_patients=6, per_class=16)
    return data, base / "cache"


def train_args(data: Path, cache: Path, run: Path, epochs: int = 12) -> list:
    return ["train", "--data", data, "--out", run, "--epochs", epochs, "--batch-size", 8,
            "--cache-dir", cache, "--quiet"]


def resume_args(cache: Path, run: Path) -> list:
    return ["train", "--resume", run, "--cache-dir", cache, "--quiet"]


def check_run_folder(run: Path) -> dict:
    """Every file present is whole: models load (safe mode), JSON and CSV parse, the files
    agree with each other. Returns state.json (or {})."""
    from histoclass.runs.model_file import load_model
    if not run.exists():  # killed before it made the folder
        return {}
    names = {p.name for p in run.iterdir()}
    assert not {n for n in names - KNOWN_FILES if not TEMPORARY.match(n)}, names
    for name in names & {"config.json", "state.json", "metadata.json", "calibration.json", "focus.json"}:
        assert isinstance(json.loads((run / name).read_text()), dict), name
    rows = {}
    for name in names & {"split.csv", "history.csv", "skipped.csv"}:
        with open(run / name, newline="", encoding="utf-8") as handle:
            table = list(csv.reader(handle))
        assert table and all(len(row) == len(table[0]) for row in table), name
        rows[name] = table
    for name in names & {"model.keras", "last.keras"}:
        model = load_model(run / name)
        assert tuple(model.output_shape) == (None, 2)
    if "config.json" in names:
        assert "split.csv" in names and "skipped.csv" in names  # written before config.json
    state = json.loads((run / "state.json").read_text()) if "state.json" in names else {}
    if state.get("epochs_done"):
        epochs = [int(row[0]) for row in rows["history.csv"][1:]]
        assert epochs[: state["epochs_done"]] == list(range(1, state["epochs_done"] + 1))
        assert {"last.keras", "model.keras"} <= names
    return state


def is_complete(run: Path) -> bool:
    metadata = run / "metadata.json"
    return metadata.is_file() and json.loads(metadata.read_text()).get("status") == "complete"


def read_bytes(path: Path) -> bytes | None:
    return path.read_bytes() if path.is_file() else None


@pytest.mark.slow
def test_sigkill_at_random_points_leaves_whole_files(small_data, tmp_path):
    data, cache = small_data
    # A first, uninterrupted run warms the cache and times a whole run.
    started = time.monotonic()
    reference = histoclass(*train_args(data, cache, tmp_path / "reference"))
    ready = None  # when the run folder exists: Python and TensorFlow are loaded by then
    while reference.poll() is None:
        if ready is None and (tmp_path / "reference" / "config.json").is_file():
            ready = time.monotonic() - started
        time.sleep(0.02)
    _, stderr = reference.communicate(timeout=300)
    assert reference.returncode == 0, stderr
    duration = time.monotonic() - started
    ready = 0.8 * (ready or 0.0)
    check_run_folder(tmp_path / "reference")

    rng = random.Random(SEED)
    run_number, kills, outcomes = 0, 0, []
    split_of: dict[Path, bytes] = {}
    # Kill points are drawn within the shortest whole run seen, so that few processes end by
    # themselves (the machine's load changes how long a run takes). A resumed run is about as
    # long as a new one, less the epochs already done.
    shortest = duration
    run = tmp_path / f"run{run_number}"
    while kills < NUM_KILLS:
        if (run / "config.json").is_file():
            kind, args = "resume", resume_args(cache, run)
        else:
            shutil.rmtree(run, ignore_errors=True)  # killed before it was a run: start again
            kind, args = "train", train_args(data, cache, run)
        started = time.monotonic()
        process = histoclass(*args)
        delay = rng.uniform(min(ready, 0.5 * shortest), 0.95 * shortest)
        try:
            process.wait(timeout=delay)
            if kind == "train":
                shortest = min(shortest, time.monotonic() - started)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGKILL)
            kills += 1
        _, stderr = process.communicate()
        assert "Traceback" not in stderr, stderr
        state = check_run_folder(run)
        outcomes.append((round(delay, 2), process.returncode, state.get("epochs_done")))
        split = read_bytes(run / "split.csv")
        if split is not None and (run / "config.json").is_file():
            assert split_of.setdefault(run, split) == split, "resume changed the split"
        if is_complete(run):
            run_number += 1
            run = tmp_path / f"run{run_number}"
    # Every killed run that was already a run finishes on --resume, with its split unchanged.
    for folder in sorted(tmp_path.glob("run*")):
        if not (folder / "config.json").is_file():
            continue
        if not is_complete(folder):
            process = histoclass(*resume_args(cache, folder))
            _, stderr = process.communicate(timeout=300)
            assert process.returncode == 0, stderr
        check_run_folder(folder)
        assert is_complete(folder)
        assert (folder / "split.csv").read_bytes() == split_of.get(folder, (folder / "split.csv").read_bytes())
        assert (folder / "split.csv").read_bytes() == (tmp_path / "reference" / "split.csv").read_bytes()
        assert not [p for p in folder.iterdir() if TEMPORARY.match(p.name)], "stale temporary files"
    print("kill points (delay s, exit code, epochs done):", outcomes)


@pytest.mark.slow
def test_ctrl_c_keeps_the_best_model_and_resume_finishes(small_data, tmp_path):
    from histoclass import load_run
    data, cache = small_data
    run = tmp_path / "run"
    # A process started with SIGINT ignored keeps it ignored (a background job of a shell, as when
    # the tests run under `nohup ... &`): the child gets the default back, as from a terminal.
    process = histoclass(*train_args(data, cache, run, epochs=40),
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        state = run / "state.json"
        if state.is_file() and json.loads(state.read_text()).get("epochs_done", 0) >= 1:
            break
        time.sleep(0.02)
    assert process.poll() is None, "training ended before it could be interrupted"
    split = (run / "split.csv").read_bytes()
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr and "interrupted" in stderr
    assert "--resume" in stderr
    state = check_run_folder(run)
    metadata = json.loads((run / "metadata.json").read_text())
    assert metadata["status"] == "interrupted"
    assert (run / "calibration.json").is_file()
    loaded = load_run(run)  # the best model so far, usable by evaluate and predict
    assert state["epochs_done"] >= 1
    assert 0 <= loaded.predict(np.full((50, 50, 3), 128, np.uint8)) <= 1

    process = histoclass(*resume_args(cache, run))
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr
    assert is_complete(run)
    assert (run / "split.csv").read_bytes() == split
    history = list(csv.DictReader(open(run / "history.csv", encoding="utf-8")))
    assert [int(float(row["epoch"])) for row in history] == list(range(1, len(history) + 1))
    assert json.loads((run / "state.json").read_text())["epochs_done"] == len(history) > state["epochs_done"]


def test_catch_up_after_a_kill_between_last_and_state(small_data, tmp_path, trained_run):
    """Killed after last.keras was replaced but before state.json: resume sees it and brings
    state.json and model.keras to that epoch instead of training it twice."""
    from histoclass.training.callbacks import catch_up
    from histoclass.fileio import file_sha256
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    state = json.loads((run / "state.json").read_text())
    done = state["epochs_done"]
    # Roll state.json back one epoch, as if the process died just before writing it.
    stale = {**state, "epochs_done": done - 1, "last_sha256": "0" * 64, "wait": 0,
             "best_value": -1.0 if state["monitor"].endswith("auc") else 1e9, "best_epoch": done - 1}
    (run / "state.json").write_text(json.dumps(stale))
    (run / "model.keras").write_bytes(b"the previous best")
    caught_up = catch_up(run, stale)
    assert caught_up["epochs_done"] == done
    assert caught_up["last_sha256"] == file_sha256(run / "last.keras")
    assert caught_up["best_epoch"] == done  # history.csv says epoch `done` improved on -1
    assert (run / "model.keras").read_bytes() == (run / "last.keras").read_bytes()
    assert json.loads((run / "state.json").read_text()) == caught_up
    assert catch_up(run, caught_up) == caught_up  # in step: nothing to do


# ---- a disk that fills up mid-write --------------------------------------------------------

def test_full_disk_keeps_the_old_file(tmp_path, monkeypatch):
    import errno
    from histoclass.errors import HistoclassError
    from histoclass.fileio import write_json_atomic
    target = tmp_path / "metrics.json"
    write_json_atomic(target, {"auc": 0.9})
    before = target.read_bytes()
    real_write_bytes = Path.write_bytes

    def write_half_then_fail(self, data):
        real_write_bytes(self, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device", str(self))

    monkeypatch.setattr(Path, "write_bytes", write_half_then_fail)
    with pytest.raises(HistoclassError, match=r"the disk is full while writing .*metrics.json.*nothing was overwritten"):
        write_json_atomic(target, {"auc": 0.95, "padding": "x" * 10_000})
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]  # no temporary file left


def limited_file_size(limit: int):
    """For a child process: files may not grow past `limit` bytes, as on a nearly full disk
    (writes then fail with EFBIG instead of killing the process with SIGXFSZ)."""
    def apply() -> None:
        import resource
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    return apply


@pytest.mark.parametrize("limit, cache_name, what", [
    (1_000_000, "fresh-cache", r"\.npy"),  # the decoding cache (1.4 MB) does not fit
    (3_000_000, None, r"last\.keras"),  # the cache fits; the model (7 MB) does not
])
def test_training_on_a_full_disk_says_so_and_leaves_whole_files(small_data, tmp_path, limit, cache_name, what):
    data, cache = small_data
    if cache_name:
        cache = tmp_path / cache_name
    else:  # warm the shared cache first, without a limit
        process = histoclass(*train_args(data, cache, tmp_path / "warm", epochs=1))
        assert process.wait(timeout=300) == 0
    run = tmp_path / "run"
    process = histoclass(*train_args(data, cache, run), preexec_fn=limited_file_size(limit))
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 2, stderr
    assert "Traceback" not in stderr
    error = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(error) == 1 and re.search(f"the disk is full while writing .*{what}", error[0]), stderr
    check_run_folder(run)
    assert not [p for p in run.iterdir() if TEMPORARY.match(p.name)]
    if cache_name:
        assert not list(cache.glob(".*.tmp*")) and not list(cache.glob("*.npy"))
