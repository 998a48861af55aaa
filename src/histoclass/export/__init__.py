"""A run as a model file that runs without histoclass: ONNX or TensorFlow SavedModel, plus a
JSON card (`histoclass export RUN --format onnx|saved_model --out PATH`)."""
from .export import FORMATS, export_run

__all__ = ["FORMATS", "export_run"]
