"""Synthetic IDC-style slides and patches: the built-in demo data and an IDC-scale benchmark.

The real Kaggle "Breast Histopathology Images" (IDC) set cannot be shipped, so this module paints
H&E-like slides and cuts them exactly the way IDC was cut:
``OUT/<patient>/<0|1>/<patient>_idx5_x<X>_y<Y>_class<C>.png``, 50x50 RGB patches, tissue only.

Coordinates follow IDC: X and Y are the 1-based pixel position of the patch's top-left corner on
its slide, so with 50 px patches they are 1, 51, 101, ... (IDC names such as ``x1001_y1351``).
A patch is class 1 when at least half of its tissue lies inside an annotated tumour (IDC)
region, the way IDC's region annotations were turned into patch labels. As in IDC the
annotation is smoother than the carcinoma, so patches near a region's edge are mixed and their
labels genuinely ambiguous.

The slides themselves are painted in `tissue.py`; this module cuts and writes them.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import math
import multiprocessing
import os
import sys
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from histoclass.errors import HistoclassError
from histoclass.progress import progress_bar
from histoclass.synth.tissue import _tumour_fraction_for, render_slide

logger = logging.getLogger(__name__)


# Mean slide area in pixels, measured to give IDC's ~995 patches of 50x50 per patient: 279
# patients of seed 0 give 276,906 patches (IDC: 277,524).
MEAN_SLIDE_AREA = 4.55e6
# A worker holds ~0.4 GB for a typical slide and up to ~1.2 GB for the largest, so the default
# number of workers is capped.
MAX_DEFAULT_WORKERS = 8
MIN_TISSUE_FRACTION = 0.4  # of a patch's pixels; emptier patches count as glass and are skipped
MIN_TUMOUR_FRACTION = 0.5  # of a patch's tissue pixels, for the patch to be class 1

# Patient ids look like IDC's (8863 ... 16896): distinct integers drawn from this range.
FIRST_PATIENT_ID = 8500
PATIENT_ID_SPAN = 9000


@dataclass(frozen=True)
class SynthSummary:
    """What `generate_idc_dataset` wrote, so callers need not walk the tree again."""

    out_dir: Path
    patient_ids: tuple[str, ...]
    num_patches: int
    num_positive: int


@dataclass(frozen=True)
class _PatientJob:
    """Everything a worker process needs to paint and write one patient, picklable."""

    seed: int
    index: int
    patient_id: str
    out_dir: Path
    patch_size: int
    slide_scale: float
    slides_dir: Path | None = None
    flat_glass: bool = False

def patient_ids(seed: int, num_patients: int) -> tuple[str, ...]:
    """Distinct IDC-like ids (e.g. '10253'); the first k are the same for any num_patients."""
    span = max(PATIENT_ID_SPAN, 2 * num_patients)
    ids = np.random.default_rng(seed).permutation(span)[:num_patients] + FIRST_PATIENT_ID
    return tuple(str(int(i)) for i in ids)


def patient_tumour_fraction(seed: int, index: int) -> float:
    """Tumour share for patient `index`: a golden-ratio sequence, so any run of consecutive
    patients covers the range evenly and small sets keep IDC's overall positive share."""
    offset = np.random.default_rng([seed, 2**31]).random()
    return _tumour_fraction_for((offset + index * 0.6180339887498949) % 1.0)


def _patient_rng(seed: int, index: int) -> np.random.Generator:
    """Same stream as `np.random.SeedSequence(seed).spawn(n)[index]`, for any n."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(index,)))


def slide_size(rng: np.random.Generator, slide_scale: float = 1.0) -> tuple[int, int]:
    """(width, height) of a patient's slide: log-normal area around MEAN_SLIDE_AREA, so patients
    differ several-fold in patch count as in IDC."""
    sigma = 0.45
    area = MEAN_SLIDE_AREA * math.exp(rng.normal(-sigma**2 / 2, sigma))
    aspect = math.exp(rng.uniform(-0.35, 0.35))
    width = round(math.sqrt(area * aspect) * slide_scale)
    height = round(math.sqrt(area / aspect) * slide_scale)
    return max(width, 64), max(height, 64)


def render_patient_slide(seed: int, index: int, slide_scale: float = 1.0,
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The exact slide `generate_idc_dataset` cuts for patient `index`: (rgb, tumour, tissue)."""
    rng = _patient_rng(seed, index)
    width, height = slide_size(rng, slide_scale)
    return render_slide(rng, width, height,
                        tumour_fraction=patient_tumour_fraction(seed, index))


def patch_grid(tissue: np.ndarray, tumour: np.ndarray, patch_size: int,
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cut a slide into a grid, keep the tissue patches and label them.

    Returns (top, left, label) arrays: 0-based pixel corners, row by row. A patch is kept when
    at least MIN_TISSUE_FRACTION of its pixels are tissue, and is class 1 when at least
    MIN_TUMOUR_FRACTION of its tissue is tumour (so a tumour patch at the tissue's edge stays
    positive, as an annotation drawn along that edge would make it).
    """
    rows, cols = tissue.shape[0] // patch_size, tissue.shape[1] // patch_size

    def pixel_counts(mask: np.ndarray) -> np.ndarray:
        cut = mask[:rows * patch_size, :cols * patch_size].view(np.uint8)
        return cut.reshape(rows, patch_size, cols, patch_size).sum(axis=(1, 3), dtype=np.int64)

    tissue_pixels = pixel_counts(tissue)
    keep = tissue_pixels >= MIN_TISSUE_FRACTION * patch_size * patch_size
    positive = pixel_counts(tumour & tissue) >= MIN_TUMOUR_FRACTION * tissue_pixels
    r, c = np.nonzero(keep)
    return r * patch_size, c * patch_size, positive[r, c].astype(np.int64)


def patch_file_name(patient_id: str, top: int, left: int, label: int) -> str:
    """IDC's naming, with 1-based top-left corner coordinates."""
    return f"{patient_id}_idx5_x{left + 1}_y{top + 1}_class{label}.png"


def _write_patient(job: _PatientJob) -> tuple[int, int, int]:
    """Paint one patient's slide and write its tissue patches.

    Returns (index, patches, positive)."""
    rgb, tumour, tissue = render_patient_slide(job.seed, job.index, job.slide_scale)
    tops, lefts, labels = patch_grid(tissue, tumour, job.patch_size)
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    folder = job.out_dir / job.patient_id
    for label in (0, 1):
        (folder / str(label)).mkdir(parents=True, exist_ok=True)
    size = job.patch_size
    for top, left, label in zip(tops.tolist(), lefts.tolist(), labels.tolist()):
        ok, encoded = cv2.imencode(".png", bgr[top:top + size, left:left + size])
        if not ok:
            raise RuntimeError(f"OpenCV could not encode a PNG patch of patient {job.patient_id}")
        path = folder / str(label) / patch_file_name(job.patient_id, top, left, label)
        with open(path, "wb") as handle:
            handle.write(encoded)
    if job.slides_dir is not None:
        _write_patient_slide(job, rgb, tumour)
    return job.index, len(labels), int(labels.sum())


def _write_patient_slide(job: _PatientJob, rgb: np.ndarray, tumour: np.ndarray) -> None:
    """The whole slide as a pyramidal TIFF at the patches' µm/px, and its true tumour (IDC)
    region as a PNG mask (255 = tumour) in truth/, for `histoclass slide` to be scored on."""
    from histoclass.config import IDC_MICRONS_PER_PIXEL, IDC_PATCH_SIZE
    from histoclass.fileio import write_bytes_atomic
    from histoclass.synth.slide_file import write_pyramid_tiff
    from histoclass.synth.glass import add_scanner_glass
    mpp = IDC_MICRONS_PER_PIXEL * IDC_PATCH_SIZE / job.patch_size
    if not job.flat_glass:
        rgb = add_scanner_glass(rgb, seed=job.seed * 100_003 + job.index)
    write_pyramid_tiff(job.slides_dir / f"{job.patient_id}.tiff", rgb, mpp)
    ok, encoded = cv2.imencode(".png", tumour.astype(np.uint8) * 255)
    if not ok:
        raise RuntimeError(f"OpenCV could not encode the tumour mask of patient {job.patient_id}")
    write_bytes_atomic(job.slides_dir / "truth" / f"{job.patient_id}.png", encoded.tobytes())


def _pool_context() -> multiprocessing.context.BaseContext:
    """Fork on Linux: workers start at once and a caller's script needs no `__main__` guard.

    Workers only use numpy and OpenCV (whose threads are stopped while forking), never the
    caller's TensorFlow, so forking a process that has imported it is safe. Elsewhere fork is
    unsafe (macOS) or missing (Windows), so spawn, whose scripts need the usual guard anyway.
    """
    if sys.platform.startswith("linux"):
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("spawn")


@contextlib.contextmanager
def _opencv_threads_stopped() -> Iterator[None]:
    """Stop OpenCV's thread pool while forking: an idle pool thread can hold a lock at the
    instant of fork, and the child then hangs at its first OpenCV call (seen in tests)."""
    previous = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        yield
    finally:
        cv2.setNumThreads(previous)


def _init_worker() -> None:
    """Tune a worker process: one OpenCV thread (the pool already keeps every core busy), and
    memory kept rather than handed back. A slide makes ~100 short-lived arrays of tens of MB;
    returned to the kernel each time (and zeroed again as huge pages), they cost more in page
    faults than the painting itself: together these halve a worker's CPU time."""
    cv2.setNumThreads(1)
    try:  # a private switch, hence the guard
        np._core.multiarray._set_madvise_hugepage(False)
    except AttributeError:
        pass
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL("libc.so.6")
            libc.mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD
            libc.mallopt(-3, 1 << 30)  # M_MMAP_THRESHOLD
        except (OSError, AttributeError):  # not glibc (e.g. musl): only slower
            pass


def _check_arguments(out_dir: Path, num_patients: int, seed: int, patch_size: int,
                     slide_scale: float, workers: int | None) -> None:
    """Refuse bad input before anything is written."""
    if out_dir.exists() and not out_dir.is_dir():
        raise HistoclassError(f"output folder {out_dir} is an existing file; choose a new folder")
    if out_dir.exists() and any(out_dir.iterdir()):
        raise HistoclassError(
            f"output folder {out_dir} already exists and is not empty; "
            "choose a new folder or empty this one")
    if num_patients < 1:
        raise HistoclassError(f"num_patients must be at least 1, got {num_patients}")
    if seed < 0:
        raise HistoclassError(f"seed must be a non-negative integer, got {seed}")
    if patch_size < 8:
        raise HistoclassError(f"patch_size must be at least 8 px, got {patch_size}")
    if not slide_scale > 0:
        raise HistoclassError(f"slide_scale must be positive, got {slide_scale}")
    if workers is not None and workers < 1:
        raise HistoclassError(f"workers must be at least 1 (or None for all cores), got {workers}")


def _default_workers() -> int:
    """The cores this process may use (a container's share, not the host's), capped."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, MAX_DEFAULT_WORKERS))


def _run_jobs(jobs: list[_PatientJob], workers: int) -> Iterator[tuple[int, int, int]]:
    """Yield each patient's (index, patches, positive) as it finishes, on `workers` processes."""
    if workers == 1:
        yield from map(_write_patient, jobs)
        return
    with _opencv_threads_stopped():  # with fork, every worker starts at the first submit
        pool = ProcessPoolExecutor(workers, mp_context=_pool_context(), initializer=_init_worker)
        futures = [pool.submit(_write_patient, job) for job in jobs]
    try:
        for future in as_completed(futures):
            yield future.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def generate_idc_dataset(out_dir: str | os.PathLike, num_patients: int = 12, seed: int = 0,
                         patch_size: int = 50, slide_scale: float = 1.0,
                         workers: int | None = None, progress: bool = True,
                         slides_dir: str | os.PathLike | None = None, flat_glass: bool = False) -> SynthSummary:
    """Write a synthetic IDC tree to `out_dir` (which must be new or empty).

    Each patient is painted from its own seed (seed, index), so the bytes written do not depend
    on `workers` (default: the usable cores, at most MAX_DEFAULT_WORKERS). Only patient
    folders are written, as in the real set; the summary is returned. At slide_scale 1.0 a
    patient has ~1,000 patches on average (279 patients ~ IDC's 277,524); patch counts scale
    with slide_scale squared.

    `slides_dir` (new or empty; not inside `out_dir`, whose every image would count as a patch)
    also receives each patient's whole slide, `<patient>.tiff` (pyramidal, with its µm/px), and
    its true tumour region, `truth/<patient>.png`; the slide's glass is as scanners show it
    (`glass.add_scanner_glass`) unless `flat_glass` (the patches are cut from the painting,
    never from the scanner's glass).
    """
    out_dir = Path(out_dir)
    _check_arguments(out_dir, num_patients, seed, patch_size, slide_scale, workers)
    if slides_dir is not None:
        slides_dir = Path(slides_dir)
        if slides_dir.exists() and (not slides_dir.is_dir() or any(slides_dir.iterdir())):
            raise HistoclassError(f"slides folder {slides_dir} already exists and is not empty; choose a new folder")
        if slides_dir.resolve().is_relative_to(out_dir.resolve()):
            raise HistoclassError(f"slides folder {slides_dir} lies inside {out_dir}, where its images would be "
                                  "taken for patches; put it beside it")
        (slides_dir / "truth").mkdir(parents=True, exist_ok=True)
    ids = patient_ids(seed, num_patients)
    jobs = [_PatientJob(seed, index, ids[index], out_dir, patch_size, slide_scale, slides_dir, flat_glass)
            for index in range(num_patients)]
    workers = min(workers or _default_workers(), num_patients)
    out_dir.mkdir(parents=True, exist_ok=True)
    num_patches = num_positive = 0
    with progress_bar(num_patients, "synthetic IDC", "patient", enabled=progress) as bar:
        for _, patches, positive in _run_jobs(jobs, workers):
            num_patches += patches
            num_positive += positive
            bar.update()
    logger.info("wrote %d patches (%d positive) for %d patients to %s",
                num_patches, num_positive, num_patients, out_dir)
    return SynthSummary(out_dir, ids, num_patches, num_positive)
