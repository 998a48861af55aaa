"""Decoding image files on every core: worker processes that write rows straight into the
decoded array (the cache's file, one write a chunk, or shared memory).

Threads could not do it: each file costs some Python work (opening, size and format checks,
the PNG checksum walk) that holds the GIL, so on 16 cores a thread pool decoded fewer images
a second than one thread. Processes run that work side by side. Nothing but chunk numbers and
short skip lists crosses between processes, and pixels go to their rows of the cache file (a
chunk at a time, from a buffer each worker reuses: writing through a memory map of the fresh
file cost a page fault every 4 KiB, a quarter of the decoding) or of shared memory, so memory
stays flat at any data size.

Workers are forked where no framework with threads of its own (TensorFlow, JAX, torch, Ray) is
loaded yet, as when `train` decodes before it builds the model; else they are spawned (a fresh
interpreter that imports only this module's few dependencies), since forking a process that
runs such threads can deadlock. Spawning costs a few tenths of a second, so the calling process
decodes chunks itself until the workers report ready, and a worker that dies leaves its chunks
to the caller.
"""
from __future__ import annotations

import contextlib
import json
import logging
import multiprocessing
import os
import queue
import sys
import tempfile
from multiprocessing import shared_memory
from typing import Callable, Sequence

import numpy as np

from .decode import BadImage, decode_file

log = logging.getLogger(__name__)

CHUNK = 256  # images a worker claims at once: small enough to share the end of the work evenly
MIN_IMAGES_FOR_PROCESSES = 2048  # fewer images decode faster than worker processes start


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def decode_range(images: np.ndarray, sources: Sequence[str], start: int, stop: int,
                 size: int, first_row: int = 0) -> tuple[list[tuple[int, str]], int]:
    """Decodes sources[start:stop] into images[start - first_row:stop - first_row]; returns
    ([(index, reason)], resized)."""
    skipped, resized = [], 0
    for index in range(start, stop):
        try:
            images[index - first_row], was_resized = decode_file(sources[index], size)
        except BadImage as err:
            skipped.append((index, str(err)))
            continue
        resized += was_resized
    return skipped, resized


def decode_in_processes(images: np.ndarray, target: tuple, sources: Sequence[str], size: int,
                        workers: int, on_chunk: Callable[[int], None],
                        chunk_size: int = CHUNK) -> tuple[list[tuple[int, str]], int]:
    """Decodes every source into `images` (the caller's view of `target`: ("npy", path) of a
    .npy file, or ("shm", name) of shared memory of the same shape). `on_chunk(count)` is called
    as chunks finish. Returns ([(index, reason)] of the files skipped, number resized)."""
    num_chunks = -(-len(sources) // chunk_size)
    context = multiprocessing.get_context(start_method())
    next_chunk = context.Value("q", 0)
    results = context.Queue()
    # The file names travel in a file: in the start-up arguments they would be written through
    # a pipe each worker only reads once its interpreter is up, one worker after the other.
    # JSON keeps names that are not valid UTF-8 (surrogate escapes) as they are.
    names_file = tempfile.NamedTemporaryFile(prefix="histoclass-decode-", suffix=".json", delete=False)
    with names_file:
        names_file.write(json.dumps(list(sources)).encode("ascii"))
    processes = [context.Process(target=_worker, daemon=True, name=f"histoclass-decode-{n}",
                                 args=(target, images.shape, names_file.name, size, chunk_size, next_chunk,
                                       num_chunks, results))
                 for n in range(workers)]
    skipped: list[tuple[int, str]] = []
    resized = 0
    done = np.zeros(num_chunks, dtype=bool)

    def record(chunk: int, chunk_skipped, chunk_resized) -> None:
        nonlocal resized
        done[chunk] = True
        skipped.extend(chunk_skipped)
        resized += chunk_resized
        on_chunk(min(chunk_size, len(sources) - chunk * chunk_size))

    def decode_here(chunk: int) -> None:
        start = chunk * chunk_size
        record(chunk, *decode_range(images, sources, start, min(start + chunk_size, len(sources)), size))

    try:
        with _main_module_hidden():
            for process in processes:
                process.start()
        ready, left_to_claim = 0, True
        while not done.all():
            # While the workers start, this process decodes too; then it only gathers.
            helping = ready < workers and left_to_claim
            try:
                message = results.get_nowait() if helping else results.get(timeout=0.5)
            except queue.Empty:
                if helping:
                    chunk = _claim(next_chunk, num_chunks)
                    if chunk is None:
                        left_to_claim = False
                    else:
                        decode_here(chunk)
                elif all(not p.is_alive() for p in processes) and results.empty():
                    break  # every worker has ended; what they left is finished below
                continue
            if message[0] == "ready":
                ready += 1
            elif message[0] == "failed":
                log.warning("a decoding worker failed (%s); this process finishes its share", message[1])
            else:
                record(*message[1:])
        for chunk in np.flatnonzero(~done):  # a worker died mid-chunk (killed, out of memory)
            log.warning("a decoding worker ended early; decoding its images here")
            decode_here(int(chunk))
    finally:
        # Every chunk's pixels are in place: workers still shutting down need not be waited for.
        for process in processes:
            if process.is_alive():
                process.terminate()
            process.join()
        results.close()
        os.unlink(names_file.name)
    skipped.sort()
    return skipped, resized


# Frameworks whose threads a forked child could find holding a lock (deadlock).
THREADED_FRAMEWORKS = ("tensorflow", "jax", "torch", "ray")


def start_method() -> str:
    """"fork" where it is safe and Linux offers it (a worker starts in milliseconds, with
    nothing to import), "spawn" once a framework that runs its own threads is loaded (a fresh
    interpreter, a few tenths of a second of start-up)."""
    if sys.platform == "linux" and not any(name in sys.modules for name in THREADED_FRAMEWORKS):
        return "fork"
    return "spawn"


@contextlib.contextmanager
def _main_module_hidden():
    """Spawned workers would run the caller's main script again (as `__mp_main__`), and a
    script that calls `histoclass.train` at its top level, without `if __name__ ==
    "__main__":`, would then train in every worker. The workers need nothing from it: while
    they start, the main module names no file or module for them to run."""
    main = sys.modules.get("__main__")
    saved = {name: main.__dict__[name] for name in ("__file__", "__spec__") if main and name in main.__dict__}
    try:
        for name in saved:
            setattr(main, name, None) if name == "__spec__" else delattr(main, name)
        yield
    finally:
        for name, value in saved.items():
            setattr(main, name, value)


def _claim(next_chunk, num_chunks: int) -> int | None:
    with next_chunk.get_lock():
        chunk = next_chunk.value
        if chunk >= num_chunks:
            return None
        next_chunk.value = chunk + 1
    return chunk


def _write_all(fd: int, data: memoryview, offset: int) -> None:
    while data:
        written = os.pwrite(fd, data, offset)
        data, offset = data[written:], offset + written


def _worker(target: tuple, shape: tuple, names_file: str, size: int, chunk_size: int, next_chunk,
            num_chunks: int, results) -> None:
    try:
        with open(names_file, "rb") as handle:
            sources = json.loads(handle.read())
        memory = fd = None
        if target[0] == "npy":
            # Rows are decoded into a buffer and written with one pwrite a chunk: writing them
            # through a memory map of the fresh file costs a page fault every 4 KiB.
            offset = np.load(target[1], mmap_mode="r", allow_pickle=False).offset
            fd = os.open(target[1], os.O_WRONLY)
            images = np.zeros((chunk_size, *shape[1:]), np.uint8)
        else:
            memory = shared_memory.SharedMemory(name=target[1])
            images = np.ndarray(shape, np.uint8, buffer=memory.buf)
        results.put(("ready",))
        row_bytes = int(np.prod(shape[1:]))
        while (chunk := _claim(next_chunk, num_chunks)) is not None:
            start = chunk * chunk_size
            stop = min(start + chunk_size, len(sources))
            if fd is None:
                chunk_skipped, chunk_resized = decode_range(images, sources, start, stop, size)
            else:
                chunk_skipped, chunk_resized = decode_range(images, sources, start, stop, size, first_row=start)
                for index, _ in chunk_skipped:  # the row a skipped file leaves stays black
                    images[index - start] = 0
                _write_all(fd, memoryview(images[:stop - start]).cast("B"), offset + start * row_bytes)
            results.put(("chunk", chunk, chunk_skipped, chunk_resized))
        del images
        if memory is not None:
            memory.close()
        if fd is not None:
            os.close(fd)
    except Exception as err:  # noqa: BLE001 - reported to the caller, which finishes the work
        results.put(("failed", f"{type(err).__name__}: {err}"))
