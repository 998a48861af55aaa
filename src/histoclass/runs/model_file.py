"""Model files: written atomically, read back in Keras safe mode after a check that the file
names no code outside Keras and histoclass."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import HistoclassError
from ..fileio import atomic_path


def save_model(model, path: Path) -> None:
    """Keras insists on a `.keras` name, so the temporary file gets that suffix too."""
    with atomic_path(path, suffix=".keras") as tmp:
        model.save(tmp)


def load_model(path: Path, compile: bool = False):
    """Loads a model in Keras safe mode: a model file cannot run code on this machine.

    Before Keras sees it, the file's configuration is read as plain JSON and refused if it
    names code outside Keras and histoclass (a Lambda layer, another Python module)."""
    import keras
    from ..models import augment  # noqa: F401 - registers the custom layers
    path = Path(path)
    if not path.is_file():
        raise HistoclassError(f"{path} does not exist; train a model first (histoclass train)")
    saved_with = _check_model_file(path)
    try:
        return keras.saving.load_model(path, compile=compile, safe_mode=True)
    except Exception as err:  # noqa: BLE001 - Keras raises many types for a bad file
        message = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        if "safe_mode" in message or "code execution" in message:
            raise HistoclassError(_UNSAFE.format(path=path, what="code Keras safe mode refuses")) from err
        version_note = (f"; it was saved with Keras {saved_with}, this is Keras {keras.__version__}"
                        if saved_with != keras.__version__ else "")
        raise HistoclassError(f"{path} is not a loadable histoclass model ({message}){version_note}") from err


_UNSAFE = ("refused to load {path}: it holds {what}, and histoclass never runs code from a model "
           "file; use a model trained by histoclass (or retrain it with `histoclass train`)")
SAFE_MODULES = ("keras", "histoclass")
_OLD_STAIN_LAYER = ("{path} was trained with the stain normalization layer inside the model (one "
                    "estimate per tile and per test-time view), which histoclass no longer has: stain "
                    "is now normalized per patient or slide before the model. Retrain the run with "
                    "`histoclass train ... --stain-normalization macenko` (or reinhard, or none)")


def _check_model_file(path: Path) -> str:
    """Checks that `path` is a .keras archive naming only Keras and histoclass objects; returns
    the Keras version it was saved with."""
    import json
    import zipfile
    import keras
    not_a_model = f"{path} is not a Keras model file (.keras archive); the run folder is damaged"
    if not zipfile.is_zipfile(path):
        raise HistoclassError(not_a_model)
    try:
        with zipfile.ZipFile(path) as archive:
            config = json.loads(archive.read("config.json"))
            metadata = json.loads(archive.read("metadata.json")) if "metadata.json" in archive.namelist() else {}
    except (KeyError, ValueError, OSError, zipfile.BadZipFile) as err:
        raise HistoclassError(f"{not_a_model} ({err})") from err
    saved_with = str(metadata.get("keras_version", "?")) if isinstance(metadata, dict) else "?"
    if saved_with.split(".")[0] not in ("?", keras.__version__.split(".")[0]):
        raise HistoclassError(f"{path} was saved with Keras {saved_with}, which this Keras "
                              f"{keras.__version__} cannot read; use a matching Keras version")
    for key, value in _named_objects(config):
        if key == "module" and value.split(".")[0] not in SAFE_MODULES:
            raise HistoclassError(_UNSAFE.format(path=path, what=f"an object from the module {value[:80]!r}"))
        if key == "class_name" and value in ("Lambda", "TFSMLayer"):
            raise HistoclassError(_UNSAFE.format(path=path, what=f"a {value} layer (Python code)"))
        if key == "class_name" and value == "StainNormalization":
            raise HistoclassError(_OLD_STAIN_LAYER.format(path=path))
    return saved_with


def _named_objects(config: Any):
    """Every (key, text) pair of `module`/`class_name` in a nested Keras configuration."""
    stack = [config]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for key, value in item.items():
                if key in ("module", "class_name") and isinstance(value, str):
                    yield key, value
                else:
                    stack.append(value)
        elif isinstance(item, list):
            stack.extend(item)


def _check_model(model, config: TrainConfig, folder: Path) -> None:
    expected_input = (None, config.image_size, config.image_size, 3)
    if tuple(model.input_shape) != expected_input or tuple(model.output_shape) != (None, 2):
        raise HistoclassError(
            f"the model in {folder} takes {model.input_shape} and gives {model.output_shape}, not "
            f"{expected_input} -> (None, 2); it is not a histoclass model for this run")


