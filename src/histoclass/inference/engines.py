"""What runs the model for a Run: Keras (`predict`) or ONNX Runtime, with the same numbers.

An engine is any object with

    name: str
    model_probabilities(images, indices=None, batch_size=512, progress=False) -> np.ndarray

that returns the run's raw prob_malignant (test-time augmentation and ensemble mean included,
calibration not) for uint8 `images[indices]` at the model's size, as float64. `Run` holds one and
calls it from `Run.model_probabilities`; calibration and threshold stay in `Run`. Choose one with
`load_run(folder, engine="onnx")` or `run.use_engine("onnx")`; a new engine (another runtime, a
remote service) only has to offer that method.

The ONNX engine converts the run's folded models once, in memory, when it is made (about 1 s for
the original CNN, 4 s for histo_resnet here), to one graph that takes uint8 and does the views and
the members' mean itself; `benchmarks/serve.py` measures it against Keras.
"""
from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

import numpy as np

from ..errors import HistoclassError
from .probabilities import predict_probabilities, read_in_chunks

if TYPE_CHECKING:
    from .run import Run

log = logging.getLogger(__name__)

ENGINES = ("keras", "onnx")
# Measured by benchmarks/serve.py on this project's 2-core CPU, on a quiet machine, once Keras
# predicted batch by batch (`predict_on_batch`): ONNX Runtime ran 1.33x (original CNN) and 1.20x
# (histo_resnet) Keras's images/s on large batches, but costs 1-6 s of conversion, and the
# service answered 245 requests/s with Keras against 208 with ONNX Runtime. So Keras is the
# default everywhere; `--engine onnx` is there for those who measure a gain on their machine.
DEFAULT_ENGINE = "keras"


class KerasEngine:
    """Keras `predict` on each member (and each of the 8 views with test-time augmentation)."""

    name = "keras"

    def __init__(self, models: list, test_time_augmentation: bool):
        self.models = list(models)
        self.test_time_augmentation = test_time_augmentation

    def model_probabilities(self, images: np.ndarray, indices: np.ndarray | None = None,
                            batch_size: int = 512, progress: bool = False) -> np.ndarray:
        return np.mean([predict_probabilities(model, images, indices, batch_size=batch_size,
                                              test_time_augmentation=self.test_time_augmentation,
                                              progress=progress) for model in self.models], axis=0)


class OnnxEngine:
    """ONNX Runtime on one graph of the run's members, views and mean (uint8 in).

    By default (`split`) each batch is cut into runs of at most `PIECE` images, and `threads`
    runs go at once, each on one thread of ONNX Runtime (a session may be run from several
    threads): no thread waits for another between ops. With `split=False` each batch is one run
    on `threads` intra-op threads, ONNX Runtime's usual way. Measured by
    `benchmarks/onnx_speed.py` on this project's 2-core machine shared with other jobs, strong
    recipe with test-time augmentation (see docs/speed.md). Each image's numbers do not depend on
    the batch it is run in (batch norm is folded), so both give the same probabilities.
    """

    name = "onnx"
    PIECE = 128

    def __init__(self, models: list, image_size: int, test_time_augmentation: bool,
                 threads: int | None = None, spinning: bool = False, split: bool = True):
        from ..models.export_formats import ONNX_EXTRA, onnx_bytes
        from ..models.inference_graph import inference_graph
        try:
            import onnxruntime
        except ImportError:
            raise HistoclassError(f"the onnx engine needs onnxruntime; {ONNX_EXTRA}, or use "
                                  "--engine keras") from None
        self.models = list(models)  # what it was built from: `Run` rebuilds it when they change
        self.test_time_augmentation = test_time_augmentation
        self.threads = threads or available_cores()
        self.split = split and self.threads > 1
        graph = inference_graph(models, image_size, test_time_augmentation, calibration=None,
                                name="histoclass_raw")
        options = session_options(1 if self.split else threads, spinning)
        self.session = onnxruntime.InferenceSession(onnx_bytes(graph), options,
                                                    providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self._pool = None

    def _run(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: np.ascontiguousarray(batch)})[0][:, 1]

    def _pieces(self, batch: np.ndarray) -> np.ndarray:
        """prob_malignant of `batch`: runs of at most PIECE images on the threads at once."""
        if not self.split or len(batch) <= self.PIECE:
            return self._run(batch)
        if self._pool is None:
            from concurrent.futures import ThreadPoolExecutor
            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="histoclass-onnx")
        pieces = [batch[i:i + self.PIECE] for i in range(0, len(batch), self.PIECE)]
        return np.concatenate(list(self._pool.map(self._run, pieces)))

    def model_probabilities(self, images: np.ndarray, indices: np.ndarray | None = None,
                            batch_size: int = 512, progress: bool = False) -> np.ndarray:
        out = np.empty(len(images) if indices is None else len(indices), dtype=np.float64)
        for start, chunk in read_in_chunks(images, indices, np.uint8, progress):
            for offset in range(0, len(chunk), batch_size):
                batch = chunk[offset:offset + batch_size]
                out[start + offset:start + offset + len(batch)] = self._pieces(batch)
        return out

    def __del__(self):
        if getattr(self, "_pool", None) is not None:
            self._pool.shutdown(wait=False)


def available_cores() -> int:
    """The cores this process may run on (its affinity where the system says, else all)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def session_options(threads: int | None = None, spinning: bool = False):
    """ONNX Runtime's options for the engine: all graph optimisations (constant folding, Conv with
    its activation and Add fused, the NCHWc layout), one op at a time (the graph is a chain per
    view, and running the views' branches in parallel was slower here), `threads` intra-op
    threads (default: ONNX Runtime's, the physical cores).

    Without `spinning`, threads waiting for work sleep instead of spinning: on this project's
    2-core machine shared with other jobs, spinning threads took the cores the others needed
    (`benchmarks/onnx_speed.py`, variants onnx-one-run and onnx-one-run-no-spin)."""
    import onnxruntime
    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    options.inter_op_num_threads = 1
    if threads:
        options.intra_op_num_threads = threads
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3  # its warnings about unused initialisers are not the user's
    return options


def is_stale(engine, models: list, test_time_augmentation: bool) -> bool:
    """Whether `engine` was built for other models or another test-time augmentation setting
    (an engine that does not say what it was built from is taken as it is)."""
    built_for = getattr(engine, "models", None)
    if built_for is None:
        return False
    return ([id(model) for model in built_for] != [id(model) for model in models]
            or getattr(engine, "test_time_augmentation", test_time_augmentation) != test_time_augmentation)


def make_engine(run: "Run", name: str | None = None):
    """The engine called `name` ("keras" or "onnx"; default $HISTOCLASS_ENGINE, else keras) for
    the run's models."""
    name = name or os.environ.get("HISTOCLASS_ENGINE") or DEFAULT_ENGINE
    if name == "keras":
        return KerasEngine(run.models, run.config.test_time_augmentation)
    if name == "onnx":
        return OnnxEngine(run.models, run.image_size, run.config.test_time_augmentation)
    raise HistoclassError(f"unknown engine {name!r}; choose one of: {', '.join(ENGINES)}")
