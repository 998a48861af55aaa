"""histoclass: train, evaluate and explain CNNs that classify histopathology patches as
Benign (0) or Malignant (1).

The Python API (the `histoclass` command calls the same functions):

    import histoclass
    run = histoclass.train("data/idc", "runs/idc", recipe="strong", num_epochs=20)
    run = histoclass.load_run("runs/idc")       # later, from the run folder alone
    run = histoclass.cross_validate("data/bm.npz", "runs/cv", recipe="strong_no_aug", folds=5)
    run.predict(images)                         # uint8 images -> calibrated prob_malignant
    run.predict_files(["patches/"])             # one FilePrediction per file
    run.evaluate()                              # metrics on the run's test patients
    run.threshold, run.temperature, run.config

Importing histoclass is quick: Keras and the backend load on first use.
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

__version__ = "0.2.0"

# TensorFlow's C++ start-up and tf.data notices (I/W lines) are not the user's concern; its
# errors still show. A value the user set is kept.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

CLASS_NAMES = ("benign", "malignant")

if TYPE_CHECKING:
    from .inference.run import Run


def load_run(folder: str | os.PathLike, engine: str | None = None) -> "Run":
    """A run folder written by `train`, with its model loaded for inference; `engine` "keras"
    (default) or "onnx" (ONNX Runtime, same numbers)."""
    from .inference.run import load_run as _load_run
    return _load_run(folder, engine=engine)


def train(data: str | os.PathLike, out: str | os.PathLike, recipe: str = "original", *,
          split_file: str | os.PathLike | None = None, cache_dir: str | os.PathLike | None = None,
          progress: bool = False, **overrides: Any) -> "Run":
    """Trains a run into the new folder `out` on the labelled images at `data` and returns it.

    `recipe` is "original" (the CNN of model.py), "strong" or "strong_no_aug"; `overrides` are
    TrainConfig fields, e.g. num_epochs=20, test_fraction=0, model="histo_resnet_lite". On a
    GPU, a batch_size left out becomes 512 with the learning rate scaled to it.
    """
    from .config import config_for_recipe
    from .training.train import train as _train
    config = config_for_recipe(recipe, **overrides)
    folder = _train(data, out, config, split_file=split_file, cache_dir=cache_dir, progress=progress,
                    batch_size_given=overrides.get("batch_size") is not None,
                    learning_rate_given=overrides.get("learning_rate") is not None)
    return load_run(folder)


def cross_validate(data: str | os.PathLike, out: str | os.PathLike, recipe: str = "original", *,
                   folds: int = 5, cache_dir: str | os.PathLike | None = None, progress: bool = False,
                   **overrides: Any) -> "Run":
    """K-fold cross-validation by patient/group into `out` (see `histoclass cv`); returns the
    folds' ensemble as a Run. The same `out` again continues an interrupted one."""
    from .config import config_for_recipe
    from .crossval.cv import cross_validate as _cross_validate
    config = config_for_recipe(recipe, **overrides)
    return load_run(_cross_validate(data, out, config, num_folds=folds, cache_dir=cache_dir, progress=progress))


def __getattr__(name: str):
    # The API's types, imported when first asked for.
    if name == "Run":
        from .inference.run import Run
        return Run
    if name == "FilePrediction":
        from .inference.files import FilePrediction
        return FilePrediction
    if name == "TrainConfig":
        from .config import TrainConfig
        return TrainConfig
    if name == "HistoclassError":
        from .errors import HistoclassError
        return HistoclassError
    raise AttributeError(f"module 'histoclass' has no attribute {name!r}")


__all__ = ["CLASS_NAMES", "FilePrediction", "HistoclassError", "Run", "TrainConfig", "__version__",
           "cross_validate", "load_run", "train"]
