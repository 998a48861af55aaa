"""Decode every image once, in parallel, into a uint8 array cached on disk.

The cache key is a hash of the file list (paths, sizes, modification times) and the image
size, so a second run over the same files memory-maps the array in a fraction of a second, and
any change to the files makes a new one. The cache lives outside the data folder, which is
never written to.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing import shared_memory
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import HistoclassError
from ..fileio import atomic_path, read_json, reserve_space, write_json_atomic
from ..progress import progress_bar
from .decode import BadImage, array_to_rgb, decode_file, fit_to_size, npz_source
from .parallel import MIN_IMAGES_FOR_PROCESSES, decode_in_processes, usable_cores
from .records import ImageRecord

log = logging.getLogger(__name__)

CACHE_FORMAT = 1
CHUNK = 256  # images per task: big enough to amortise the pool, small enough for the bar


class RowView:
    """Rows of a (memory-mapped) image array by position, read only when indexed: a subset of
    the cache without copying it."""

    def __init__(self, images: np.ndarray, rows: np.ndarray):
        self.images, self.rows = images, np.asarray(rows)
        self.shape = (len(self.rows), *images.shape[1:])
        self.dtype = images.dtype

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index):
        return self.images[self.rows[index]]


@dataclass
class DecodedImages:
    """Pixels for a list of records. `images[i]` is valid where `usable[i]` is True."""

    images: np.ndarray  # (N, size, size, 3) uint8, usually a read-only memory map
    usable: np.ndarray  # (N,) bool
    skipped: list[tuple[str, str]]  # (source, reason)
    num_resized: int
    cache_file: Path | None


def default_cache_dir() -> Path:
    configured = os.environ.get("HISTOCLASS_CACHE_DIR")
    if configured:
        return Path(configured).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "histoclass"


def fingerprint(records: Sequence[ImageRecord], size: int) -> str:
    """Hash of what the pixels depend on: the files' identity and the target size."""
    digest = hashlib.sha256(f"histoclass-cache-{CACHE_FORMAT}-{size}\n".encode())
    stats: dict[str, str] = {}
    for record in records:
        file_name = _file_of(record.source)
        if file_name not in stats:
            try:
                info = os.stat(file_name)
                stats[file_name] = f"{info.st_size}:{info.st_mtime_ns}"
            except OSError:
                stats[file_name] = "missing"
        digest.update(f"{record.source}\t{stats[file_name]}\n".encode("utf-8", "surrogateescape"))
    return digest.hexdigest()[:24]


def _file_of(source: str) -> str:
    match = npz_source(source)
    return match["file"] if match else source


def load_images(records: Sequence[ImageRecord], size: int, cache_dir: str | os.PathLike | None = None,
                workers: int | None = None, progress: bool = True, use_cache: bool = True) -> DecodedImages:
    """Pixels for `records`, from the cache when it holds them, else decoded and cached."""
    if use_cache:
        cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        key = fingerprint(records, size)
        cached = _read_cache(cache_dir, key, len(records), size)
        if cached is not None:
            log.info("loaded %d decoded images from the cache %s", len(records), cached.cache_file)
            _log_skipped(cached.skipped, len(records))
            return cached
        try:
            cache_dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise HistoclassError(
                f"cannot create the cache folder {cache_dir} ({err.strerror}); set "
                "HISTOCLASS_CACHE_DIR to a writable folder") from err
        array_path = cache_dir / f"{key}.npy"
        with atomic_path(array_path, suffix=".npy") as tmp:
            images = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(records), size, size, 3))
            reserve_space(tmp)  # a full disk: a clear error here, not a SIGBUS while decoding
            usable, skipped, num_resized = _decode_into(images, records, size, workers, progress,
                                                        target=("npy", str(tmp)))
            images.flush()
            del images
        write_json_atomic(cache_dir / f"{key}.json", {
            "format": CACHE_FORMAT, "count": len(records), "size": size, "num_resized": num_resized,
            "skipped": [[i, source, reason] for i, (source, reason) in skipped]})
        result = _read_cache(cache_dir, key, len(records), size)
        assert result is not None  # just written
        return result
    shape = (len(records), size, size, 3)
    if _use_processes(records, workers):
        # Workers write into shared memory; the caller gets an ordinary array.
        memory = shared_memory.SharedMemory(create=True, size=int(np.prod(shape)))
        try:
            shared = np.ndarray(shape, np.uint8, buffer=memory.buf)
            usable, skipped, num_resized = _decode_into(shared, records, size, workers, progress,
                                                        target=("shm", memory.name))
            images = shared.copy()
            del shared
        finally:
            memory.close()
            memory.unlink()
    else:
        images = np.zeros(shape, np.uint8)
        usable, skipped, num_resized = _decode_into(images, records, size, workers, progress)
    return DecodedImages(images, usable, [(s, r) for _, (s, r) in skipped], num_resized, None)


def _read_cache(cache_dir: Path, key: str, count: int, size: int) -> DecodedImages | None:
    meta_path, array_path = cache_dir / f"{key}.json", cache_dir / f"{key}.npy"
    if not (meta_path.is_file() and array_path.is_file()):
        return None
    try:
        meta = read_json(meta_path)
        images = np.load(array_path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as err:
        log.warning("ignoring an unreadable cache entry %s (%s)", array_path, err)
        return None
    if meta.get("format") != CACHE_FORMAT or images.shape != (count, size, size, 3):
        return None
    usable = np.ones(count, dtype=bool)
    skipped = []
    for index, source, reason in meta["skipped"]:
        usable[index] = False
        skipped.append((source, reason))
    return DecodedImages(images, usable, skipped, int(meta["num_resized"]), array_path)


def _use_processes(records: Sequence[ImageRecord], workers: int | None) -> bool:
    """Worker processes pay off for many image files on several cores (array files' images are
    only copied, which threads do well)."""
    return ((workers or usable_cores()) > 1 and len(records) >= MIN_IMAGES_FOR_PROCESSES
            and not any(npz_source(r.source) for r in records))


def _decode_into(images: np.ndarray, records: Sequence[ImageRecord], size: int,
                 workers: int | None, progress: bool, target: tuple | None = None):
    """Fills `images` in place; returns (usable mask, [(index, (source, reason))], num_resized).
    `target` names where `images` lives (a .npy file or shared memory) for worker processes."""
    if target is not None and _use_processes(records, workers):
        sources = [r.source for r in records]
        with progress_bar(len(records), "decoding", "img", enabled=progress, leave=False) as bar, \
                _syncing_as_it_fills(target) as sync:
            def on_chunk(count: int) -> None:
                bar.update(count)
                sync(count)
            skipped_rows, num_resized = decode_in_processes(images, target, sources, size,
                                                            workers or usable_cores(), on_chunk)
        usable = np.ones(len(records), dtype=bool)
        usable[[index for index, _ in skipped_rows]] = False
        skipped = [(index, (sources[index], reason)) for index, reason in skipped_rows]
        _log_skipped([item for _, item in skipped], len(records))
        if num_resized:
            log.info("resized %d images to %dx%d", num_resized, size, size)
        return usable, skipped, num_resized
    usable = np.zeros(len(records), dtype=bool)
    skipped: list[tuple[int, tuple[str, str]]] = []
    num_resized = 0
    npz_arrays = _NpzArrays()

    def decode_chunk(start: int) -> tuple[int, list[tuple[int, tuple[str, str]]], int]:
        chunk_skipped, chunk_resized, done = [], 0, 0
        for index in range(start, min(start + chunk_size, len(records))):
            source = records[index].source
            try:
                match = npz_source(source)
                if match:
                    raw = npz_arrays.get(match["file"], match["part"])[int(match["index"])]
                    pixels, resized = fit_to_size(array_to_rgb(raw), size)
                else:
                    pixels, resized = decode_file(source, size)
            except BadImage as err:
                chunk_skipped.append((index, (source, str(err))))
                continue
            images[index] = pixels
            usable[index] = True
            chunk_resized += resized
            done += 1
        return min(chunk_size, len(records) - start), chunk_skipped, chunk_resized

    workers = workers or usable_cores()
    # Chunks small enough that every thread gets some of a few hundred files (cv2 decodes with
    # the GIL released), large enough to amortise the pool on many.
    chunk_size = max(16, min(CHUNK, -(-len(records) // (4 * workers))))
    starts = range(0, len(records), chunk_size)
    with ThreadPoolExecutor(max_workers=workers) as pool, progress_bar(
            len(records), "decoding", "img", enabled=progress, leave=False) as bar:
        for count, chunk_skipped, chunk_resized in pool.map(decode_chunk, starts):
            skipped.extend(chunk_skipped)
            num_resized += chunk_resized
            bar.update(count)
    _log_skipped([item for _, item in skipped], len(records))
    if num_resized:
        log.info("resized %d images to %dx%d", num_resized, size, size)
    return usable, skipped, num_resized


SYNC_EVERY = 8192  # images: about 60 MB of 50 px rows


@contextlib.contextmanager
def _syncing_as_it_fills(target: tuple):
    """For a cache file: a callable, given each finished chunk's size, that writes what the
    workers have written so far to the disk every SYNC_EVERY images. The caller only waits
    while workers decode, so the disk writes overlap the decoding instead of following it
    (the cache is synced before it is named, and syncing 160 MB at the end took as long as a
    tenth of the decoding)."""
    if target is None or target[0] != "npy" or not hasattr(os, "fdatasync"):
        yield lambda count: None
        return
    fd = os.open(target[1], os.O_RDONLY)
    pending = 0

    def sync(count: int) -> None:
        nonlocal pending
        pending += count
        if pending >= SYNC_EVERY:
            pending = 0
            with contextlib.suppress(OSError):  # a file system without it: synced at the end
                os.fdatasync(fd)
    try:
        yield sync
    finally:
        os.close(fd)


def _log_skipped(skipped: list[tuple[str, str]], total: int) -> None:
    """The count for the console, each file and its reason for the run's log (and --verbose)."""
    if skipped:
        log.warning("skipped %d of %d images that could not be used (each is listed in the log)",
                    len(skipped), total)
        for source, reason in skipped:
            log.debug("skipped %s: %s", source, reason)


class _NpzArrays:
    """Opens each npz part once and keeps it, since records index into it one by one."""

    def __init__(self) -> None:
        self._arrays: dict[tuple[str, str], np.ndarray] = {}

    def get(self, file_name: str, part: str) -> np.ndarray:
        key = (file_name, part)
        if key not in self._arrays:
            with np.load(file_name, allow_pickle=False) as arrays:
                self._arrays[key] = arrays[f"{part}_images"]
        return self._arrays[key]
