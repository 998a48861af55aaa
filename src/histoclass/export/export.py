"""`export_run`: a run's inference graph (uint8 in, calibrated probabilities out) as a file.

The graph is `models.inference_graph` with the run's calibration baked in: no augmentation,
batch norm folded, test-time augmentation and the ensemble mean inside. Before the file is moved
into place it is run by the runtime it is meant for (ONNX Runtime, or TensorFlow's loader) on
seeded images and compared with the run's own probabilities; a difference above 1e-5 stops the
export and leaves nothing behind. Stain normalization is not in the graph (it is fitted per
patient or slide): the model card says so and carries the run's reference.
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import HistoclassError
from ..fileio import atomic_path, write_json_atomic
from .card import card_path, model_card

if TYPE_CHECKING:
    from ..inference.run import Run

log = logging.getLogger(__name__)

FORMATS = ("onnx", "saved_model")
TOLERANCE = 1e-5
NUM_CHECK_IMAGES = 64


def export_run(run: "Run | str | os.PathLike", fmt: str, out: str | os.PathLike, progress: bool = False) -> Path:
    """Writes `out` (an .onnx file, or a SavedModel folder) and `out`.card.json; returns `out`.
    `progress`: a progress bar over the check images' predictions."""
    from ..inference.run import Run, load_run
    from ..models.inference_graph import inference_graph
    if fmt not in FORMATS:
        raise HistoclassError(f"unknown export format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    out = Path(out)
    if out.exists() or out.is_symlink():
        raise HistoclassError(f"{out} already exists; choose a new --out path (nothing is overwritten)")
    if not isinstance(run, Run):
        run = load_run(run)
    graph = inference_graph(run.models, run.image_size, run.config.test_time_augmentation,
                            calibration=(run.temperature, run.prior_shift))
    images = check_images(run.image_size)
    # The graph holds no stain normalization (it is fitted per patient or slide, outside the
    # model): it is compared with the run on the same images, not normalized (the identity).
    from ..stain.transform import StainTransform
    expected = np.asarray(run.calibrated(run.model_probabilities(images, progress=progress,
                                                                 stain_transform=StainTransform())),
                          dtype=np.float64)
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "onnx":
        from ..models.export_formats import onnx_bytes
        data = onnx_bytes(graph)
        got = onnx_probabilities(data, images)
        parity = _parity(got, expected, "ONNX Runtime")
        with atomic_path(out) as tmp:
            tmp.write_bytes(data)
    else:
        from ..models.export_formats import write_saved_model
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
        try:
            write_saved_model(graph, staging / "model")
            got = saved_model_probabilities(staging / "model", images)
            parity = _parity(got, expected, "TensorFlow's SavedModel loader")
            os.replace(staging / "model", out)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    write_json_atomic(card_path(out), model_card(run, fmt, out, parity))
    log.info("exported %s as %s to %s (largest difference from Run.predict on %d images: %.2g)",
             run.folder, fmt, out, len(images), parity["max_abs_difference"])
    return out


def check_images(size: int, count: int = NUM_CHECK_IMAGES, seed: int = 0) -> np.ndarray:
    """Seeded uint8 images for the parity check: smooth tissue-like colour fields with noise,
    which give probabilities across the range rather than all at one end."""
    rng = np.random.default_rng(seed)
    colours = rng.integers(60, 240, (count, 1, 1, 3))
    noise = rng.normal(0, 25, (count, size, size, 3))
    return np.clip(colours + noise, 0, 255).astype(np.uint8)


def onnx_probabilities(model: bytes | str | os.PathLike, images: np.ndarray) -> np.ndarray:
    """prob_malignant from an exported ONNX model, by ONNX Runtime."""
    try:
        import onnxruntime
    except ImportError:
        from ..models.export_formats import ONNX_EXTRA
        raise HistoclassError(f"checking the ONNX file needs onnxruntime; {ONNX_EXTRA}") from None
    source = model if isinstance(model, bytes) else str(model)
    session = onnxruntime.InferenceSession(source, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: images})[0][:, 1].astype(np.float64)


def saved_model_probabilities(folder: str | os.PathLike, images: np.ndarray) -> np.ndarray:
    """prob_malignant from an exported SavedModel, loaded by TensorFlow (no Keras objects)."""
    import tensorflow as tf
    loaded = tf.saved_model.load(str(folder))
    return np.asarray(loaded.serve(tf.constant(images)))[:, 1].astype(np.float64)


def _parity(got: np.ndarray, expected: np.ndarray, runtime: str) -> dict:
    difference = float(np.max(np.abs(got - expected)))
    if not difference <= TOLERANCE:
        raise HistoclassError(
            f"{runtime} gives probabilities up to {difference:.3g} away from Run.predict (allowed "
            f"{TOLERANCE}); the export was not written. Report this with the run's model name")
    return {"checked_with": runtime, "images": len(got), "max_abs_difference": difference,
            "tolerance": TOLERANCE}
