"""The original project's files at the repository root: model.py builds its CNN (from the
package's definition), app.py and testingModel.py call the package."""
from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _load_model_py():
    spec = importlib.util.spec_from_file_location("model", ROOT / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _layer_list(model) -> list[tuple]:
    described = []
    for layer in model.layers[1:]:  # after the input
        kind = type(layer).__name__
        if kind == "Conv2D":
            described.append((kind, layer.filters, tuple(layer.kernel_size), layer.activation.__name__))
        elif kind == "MaxPooling2D":
            described.append((kind, tuple(layer.pool_size)))
        elif kind == "Dense":
            described.append((kind, layer.units, layer.activation.__name__))
        elif kind == "Dropout":
            described.append((kind, layer.rate))
        else:
            described.append((kind,))
    return described


def test_model_py_builds_the_original_cnn():
    model = _load_model_py().build_model()
    assert _layer_list(model) == [
        ("Conv2D", 32, (3, 3), "relu"), ("MaxPooling2D", (2, 2)),
        ("Conv2D", 64, (3, 3), "relu"), ("MaxPooling2D", (2, 2)),
        ("Conv2D", 128, (3, 3), "relu"), ("MaxPooling2D", (2, 2)),
        ("Flatten",), ("Dense", 256, "relu"), ("Dropout", 0.5), ("Dense", 2, "softmax")]
    assert model.input_shape == (None, 50, 50, 3) and model.output_shape == (None, 2)
    # 50 -> conv 48 -> pool 24 -> 22 -> 11 -> 9 -> 4: 4 * 4 * 128 = 2048 features into dense 256
    assert model.get_layer("dense").kernel.shape == (2048, 256)
    assert type(model.optimizer).__name__ == "Adam" and model.loss == "categorical_crossentropy"
    probabilities = model.predict(np.random.default_rng(0).random((2, 50, 50, 3)), verbose=0)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


def test_model_py_is_the_packages_cnn():
    from histoclass.models import create_model
    ours = create_model("original_cnn")
    theirs = _load_model_py().build_model(compile=False)
    assert ours.count_params() == theirs.count_params()
    assert _layer_list(theirs) == [entry for entry in _layer_list(ours) if entry[0] != "Rescaling"]


FIRST_WORDS = {"app.py": "Train the original CNN of model.py on your images",
               "testingModel.py": "Test the model that app.py trained",
               "model.py": "The original project's CNN"}


def test_the_original_scripts_speak_in_users_words():
    for name, opening in FIRST_WORDS.items():
        docstring = ast.get_docstring(ast.parse((ROOT / name).read_text(encoding="utf-8")))
        assert docstring.startswith(opening), name
        for jargon in ("seed", "entry point", "thin call", "recipe"):
            assert jargon not in docstring.lower(), (name, jargon)
    assert "the original CNN of model.py" in ast.get_docstring(ast.parse((ROOT / "app.py").read_text()))
