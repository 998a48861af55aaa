"""A Keras model written for runtimes without Keras: ONNX (for ONNX Runtime) and a TensorFlow
SavedModel (for TensorFlow Serving or `tf.saved_model.load`).

Both go through Keras' own `model.export`; with the TensorFlow backend the ONNX path uses
tf2onnx. The graph's single input is named "image" and its output, in ONNX, "probabilities";
the batch dimension is dynamic in both.
"""
from __future__ import annotations

import contextlib
import io
import logging
import tempfile
import warnings
from pathlib import Path

import keras

from ..errors import HistoclassError

log = logging.getLogger(__name__)

ONNX_OUTPUT_NAME = "probabilities"
ONNX_EXTRA = "pip install 'histoclass[onnx]' (onnxruntime, onnx and tf2onnx)"


def onnx_bytes(model: keras.Model) -> bytes:
    """The model as a serialised ONNX graph (input "image", output "probabilities", batch "N")."""
    if keras.backend.backend() != "tensorflow":
        raise HistoclassError(f"ONNX export runs on the tensorflow Keras backend here, not "
                              f"{keras.backend.backend()!r}; unset KERAS_BACKEND or set it to tensorflow")
    try:
        import onnx
        import tf2onnx  # noqa: F401  (what Keras' exporter needs on this backend)
    except ImportError as err:
        raise HistoclassError(f"ONNX needs packages that are not installed ({err.name}); {ONNX_EXTRA}") from None
    _call_once(model)
    # tf2onnx logs its progress at INFO; the caller reports what matters.
    logging.getLogger("tf2onnx").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="histoclass-onnx-") as tmp:
        path = Path(tmp) / "model.onnx"
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # Keras' numpy-2 patch of tf2onnx
            model.export(str(path), format="onnx", verbose=False)
        proto = onnx.load(str(path))
    _name_graph(proto)
    return proto.SerializeToString()


def _call_once(model: keras.Model) -> None:
    """Keras exports only a model that has been called on data."""
    model(keras.ops.zeros((1, *model.input_shape[1:]), dtype=model.inputs[0].dtype))


def _name_graph(proto) -> None:
    """Readable names in place of tf2onnx's "Identity:0" and "unk__12" dimensions."""
    graph = proto.graph
    old_output = graph.output[0].name
    for node in graph.node:
        node.output[:] = [ONNX_OUTPUT_NAME if name == old_output else name for name in node.output]
    graph.output[0].name = ONNX_OUTPUT_NAME
    for value in (*graph.input, *graph.output):
        dim = value.type.tensor_type.shape.dim[0]
        dim.dim_param = "N"


def write_saved_model(model: keras.Model, folder: Path) -> None:
    """A TensorFlow SavedModel in `folder` (which must not exist yet), with a `serve` function
    and the `serving_default` signature."""
    if keras.backend.backend() not in ("tensorflow", "jax"):
        raise HistoclassError(f"SavedModel export needs the tensorflow (or jax) Keras backend, not "
                              f"{keras.backend.backend()!r}")
    _call_once(model)
    with contextlib.redirect_stdout(io.StringIO()):
        model.export(str(folder), format="tf_saved_model", verbose=False)
