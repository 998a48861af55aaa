"""Decoding in worker processes (data/parallel.py) gives the pixels and skip reasons that
decoding here gives, and what cv2 reads from the files."""
from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from histoclass.data import cache as cache_module
from histoclass.data.cache import load_images
from histoclass.data.decode import BadImage, decode_file
from histoclass.data.parallel import decode_in_processes
from histoclass.data.records import ImageRecord

from conftest import shared_data, write_png


def _real_patches(count: int) -> list[str]:
    root = shared_data("idc-sample")
    files = sorted(str(p) for p in (root / "8864").glob("*/*.png"))
    if len(files) < count:
        pytest.skip(f"idc-sample holds fewer than {count} patches of patient 8864")
    return files[:count]


def _bad_files(folder: Path) -> dict[str, str]:
    """Bad files and the start of the reason each must give."""
    folder.mkdir()
    (folder / "text.png").write_text("hello, not an image")
    (folder / "empty.png").write_bytes(b"")
    good = cv2.imencode(".png", np.full((50, 50, 3), 200, np.uint8))[1].tobytes()
    (folder / "truncated.png").write_bytes(good[: len(good) // 2])
    damaged = bytearray(good)
    damaged[40] ^= 0xFF  # inside IHDR/IDAT: the chunk's checksum fails
    (folder / "damaged.png").write_bytes(bytes(damaged))
    (folder / "a_folder.png").mkdir()
    return {str(folder / "text.png"): "not an image", str(folder / "empty.png"): "empty file",
            str(folder / "truncated.png"): "truncated PNG", str(folder / "damaged.png"): "damaged PNG",
            str(folder / "a_folder.png"): "a folder"}


@pytest.fixture(params=["fork", "spawn"])
def start_method(request, monkeypatch):
    from histoclass.data import parallel
    monkeypatch.setattr(parallel, "start_method", lambda: request.param)
    return request.param


def test_workers_write_what_cv2_reads_and_name_bad_files(tmp_path, start_method):
    real = _real_patches(40)
    bad = _bad_files(tmp_path / "bad")
    small = write_png(tmp_path / "small.png", np.random.default_rng(0).integers(0, 256, (30, 20, 3), np.uint8))
    sources = real[:17] + list(bad) + real[17:] + [str(small)]
    images = np.zeros((len(sources), 50, 50, 3), np.uint8)
    from multiprocessing import shared_memory
    memory = shared_memory.SharedMemory(create=True, size=images.nbytes)
    try:
        shared = np.ndarray(images.shape, np.uint8, buffer=memory.buf)
        shared[:] = 7
        done = []
        skipped, resized = decode_in_processes(shared, ("shm", memory.name), sources, 50, workers=2,
                                               on_chunk=done.append, chunk_size=3)
        images[:] = shared
        del shared
    finally:
        memory.close()
        memory.unlink()
    assert sum(done) == len(sources)
    reasons = {sources[i]: reason for i, reason in skipped}
    assert set(reasons) == set(bad)
    for source, start in bad.items():
        assert reasons[source].startswith(start), reasons[source]
        with pytest.raises(BadImage) as raised:  # the same reason as decoding here
            decode_file(source, 50)
        assert str(raised.value) == reasons[source]
    assert resized == 1 + sum(cv2.imread(s).shape[:2] != (50, 50) for s in real)
    for index, source in enumerate(sources):
        if source in bad:
            continue
        expected = cv2.cvtColor(cv2.imread(source, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        if expected.shape[:2] == (50, 50):
            np.testing.assert_array_equal(images[index], expected, err_msg=source)
        else:
            np.testing.assert_array_equal(images[index], decode_file(source, 50)[0], err_msg=source)


def test_workers_write_a_cache_file_in_chunks_and_leave_skipped_rows_black(tmp_path):
    """Into a cache file, workers write each chunk's rows with one write from a buffer they
    reuse: the row of a file skipped after good ones in the same chunk stays black, not the
    previous chunk's pixels."""
    real = _real_patches(12)
    bad = list(_bad_files(tmp_path / "bad"))
    sources = real[:4] + bad[:2] + real[4:8] + bad[2:] + real[8:]
    path = tmp_path / "cache.npy"
    images = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(len(sources), 50, 50, 3))
    del images
    # One worker, run here so that it takes every chunk in turn with the same buffer.
    import json
    import multiprocessing
    import queue
    from histoclass.data.parallel import _worker
    names = tmp_path / "names.json"
    names.write_text(json.dumps(sources))
    results = queue.Queue()
    _worker(("npy", str(path)), (len(sources), 50, 50, 3), str(names), 50, 3,
            multiprocessing.Value("q", 0), -(-len(sources) // 3), results)
    messages = [results.get_nowait() for _ in range(results.qsize())]
    assert messages[0] == ("ready",) and all(m[0] == "chunk" for m in messages[1:]), messages[:2]
    skipped = [item for m in messages[1:] for item in m[2]]
    written = np.load(path)
    assert {sources[i] for i, _ in skipped} == set(bad)
    for index, source in enumerate(sources):
        if source in bad:
            assert not written[index].any(), source
        else:
            np.testing.assert_array_equal(written[index], decode_file(source, 50)[0], err_msg=source)


@pytest.mark.parametrize("use_cache", [True, False])
def test_load_images_in_processes_equals_threads(tmp_path, monkeypatch, use_cache, start_method):
    real = _real_patches(30)
    bad = _bad_files(tmp_path / "bad")
    records = [ImageRecord(s, 0, "p") for s in real[:10] + list(bad) + real[10:]]
    threads = load_images(records, 40, use_cache=False, workers=1, progress=False)
    monkeypatch.setattr(cache_module, "MIN_IMAGES_FOR_PROCESSES", 1)
    started = []
    real_decode = cache_module.decode_in_processes
    monkeypatch.setattr(cache_module, "decode_in_processes",
                        lambda *args, **kwargs: started.append(1) or real_decode(*args, **kwargs))
    processes = load_images(records, 40, cache_dir=tmp_path / "cache", use_cache=use_cache, workers=2,
                            progress=False)
    assert started, "worker processes were not used"
    np.testing.assert_array_equal(processes.usable, threads.usable)
    np.testing.assert_array_equal(np.asarray(processes.images)[processes.usable],
                                  threads.images[threads.usable])
    assert processes.skipped == threads.skipped
    assert processes.num_resized == threads.num_resized == len(real)  # 50 px to 40 px
    if use_cache:
        assert processes.cache_file is not None and processes.cache_file.is_file()
    assert not [n for n in os.listdir(tmp_path) if n.startswith("histoclass-decode-")]


def test_a_script_without_a_main_guard_runs_once(tmp_path):
    """Spawned workers must not run the caller's script again: one that decodes (or trains) at
    its top level would otherwise do it once more in every worker."""
    import subprocess
    import sys
    real = _real_patches(12)
    script = tmp_path / "no_guard.py"
    script.write_text(
        "print('START', flush=True)\n"
        "import histoclass.data.cache as cache\n"
        "from histoclass.data.records import ImageRecord\n"
        "cache.MIN_IMAGES_FOR_PROCESSES = 1\n"
        "import histoclass.data.parallel as parallel\n"
        "parallel.start_method = lambda: 'spawn'  # as once JAX or TensorFlow is loaded\n"
        # Enough images that the workers start (and would run this script) before the end.
        f"records = [ImageRecord(s, 0, 'p') for s in {real!r} * 400]\n"
        "decoded = cache.load_images(records, 50, use_cache=False, workers=2, progress=False)\n"
        "print('RAN', int(decoded.usable.sum()), flush=True)\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("START") == 1, done.stdout + done.stderr[-2000:]
    assert "RAN 4800" in done.stdout, done.stdout + done.stderr[-2000:]
