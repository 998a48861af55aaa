"""Progress: bars on a terminal, plain log lines elsewhere, never `\\r` refreshes in a log file."""
from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from histoclass import progress
from histoclass.progress import PlainProgress, progress_bar

from conftest import make_idc_tree

SRC = Path(__file__).resolve().parents[1] / "src"


def test_off_a_terminal_the_bar_is_plain_lines(monkeypatch, caplog):
    monkeypatch.setattr(sys, "stderr", open(os.devnull, "w"))
    clock = iter([0.0, 4.0, 12.0, 13.0, 25.0, 26.0])
    monkeypatch.setattr(progress.time, "monotonic", lambda: next(clock))
    with caplog.at_level(logging.INFO, logger="histoclass.progress"):
        with progress_bar(40, "decoding", "img") as bar:
            assert isinstance(bar, PlainProgress)
            for _ in range(4):
                bar.update(10)  # at 4, 12, 13, 25 s: a line at 12 s and 25 s (every 10 s)
            bar.set_postfix(loss="0.1234")
    assert caplog.messages == ["decoding: 20/40 img (50%), 12 s", "decoding: 40/40 img (100%), 25 s",
                               "decoding: 40/40 img (100%), 26 s, loss 0.1234"]


def test_a_short_loop_or_a_disabled_bar_logs_nothing(monkeypatch, caplog):
    monkeypatch.setattr(sys, "stderr", open(os.devnull, "w"))
    with caplog.at_level(logging.INFO, logger="histoclass.progress"):
        with progress_bar(3, "predicting", "img") as bar:
            bar.update(3)
        with progress_bar(3, "predicting", "img", enabled=False) as bar:
            bar.update(3)
    assert caplog.messages == []


@pytest.mark.parametrize("command", ["train", "cv", "evaluate", "predict", "report", "export", "synth", "slide",
                                     "demo", "rebuild"])
def test_every_batch_command_takes_quiet(command, capsys):
    from histoclass.cli import main
    assert main([command, "--help"]) == 0
    assert "--quiet" in capsys.readouterr().out


@pytest.mark.slow
def test_train_with_stderr_in_a_file_writes_no_progress_refreshes(tmp_path):
    data = make_idc_tree(tmp_path / "data", num_patients=6, per_class=4)
    log_file = tmp_path / "train.log"
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    with open(log_file, "wb") as stderr:
        done = subprocess.run([sys.executable, "-m", "histoclass", "train", "--data", str(data), "--out",
                               str(tmp_path / "run"), "--epochs", "2", "--batch-size", "8", "--image-size", "32",
                               "--cache-dir", str(tmp_path / "cache")],
                              stdout=subprocess.PIPE, stderr=stderr, env=env, timeout=600)
    text = log_file.read_text()
    assert done.returncode == 0, text
    assert "\r" not in text
    assert "epoch 1: loss" in text and "epoch 2: loss" in text  # a plain line per epoch
    assert "it/s" not in text and "batch/s" not in text
