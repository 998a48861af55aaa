"""`histoclass export` and the ONNX engine: the same probabilities as Run.predict, from ONNX
Runtime and from a SavedModel loaded by TensorFlow alone, in processes without histoclass."""
import dataclasses
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from conftest import patch, write_png
from histoclass.cli import main
from histoclass.errors import HistoclassError
from histoclass.export import export_run
from histoclass.export.card import card_path
from histoclass.fileio import file_sha256
from histoclass.inference.run import load_run

pytest.importorskip("onnxruntime")
pytest.importorskip("tf2onnx")

TOLERANCE = 1e-5


def images(count=24, seed=5, size=50):
    rng = np.random.default_rng(seed)
    return np.stack([patch(i % 2, rng, size) for i in range(count)])


def ensemble_with_tta(run):
    """The run as a two-member ensemble with test-time augmentation: the second member is a
    freshly initialised original CNN with augmentation layers (seeded)."""
    from histoclass.models.fold import fold_batch_norm
    from histoclass.models.registry import create_model
    member = fold_batch_norm(create_model("original_cnn", run.image_size, augmentation="tissue", seed=3))
    run.models = [run.models[0], member]
    run.config = dataclasses.replace(run.config, test_time_augmentation=True)
    return run


def run_alone(code: str, forbidden=("histoclass",)) -> np.ndarray:
    """Runs `code` in a fresh Python that must not import `forbidden`; it prints `prob` as JSON."""
    guard = f"\nimport sys, json\nassert not {{m.split('.')[0] for m in sys.modules}} & {set(forbidden)!r}\n"
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code) + guard + "print(json.dumps(prob.tolist()))"],
                          capture_output=True, text=True, timeout=300, env={"TF_CPP_MIN_LOG_LEVEL": "3", "PATH": ""})
    assert done.returncode == 0, done.stderr[-3000:]
    return np.array(json.loads(done.stdout.strip().splitlines()[-1]))


def test_inference_graph_is_run_predict_for_an_ensemble_with_tta(trained_run):
    from histoclass.models.inference_graph import inference_graph, is_augmentation
    run = ensemble_with_tta(load_run(trained_run))
    batch = images()
    raw = inference_graph(run.models, run.image_size, True)
    np.testing.assert_allclose(raw.predict(batch, verbose=0)[:, 1], run.model_probabilities(batch), atol=1e-6)
    calibrated = inference_graph(run.models, run.image_size, True, (run.temperature, run.prior_shift))
    np.testing.assert_allclose(calibrated.predict(batch, verbose=0)[:, 1], run.predict(batch), atol=TOLERANCE)
    inner = [layer for model in calibrated.layers if hasattr(model, "layers") for layer in model.layers]
    assert inner and not any(is_augmentation(layer) for layer in inner)
    assert any(is_augmentation(layer) for layer in run.models[1].layers)  # the member itself keeps them


def test_onnx_export_runs_in_onnxruntime_alone(trained_run, tmp_path):
    out = tmp_path / "exported" / "model.onnx"
    assert main(["export", str(trained_run), "--format", "onnx", "--out", str(out), "-q"]) == 0
    batch = images(size=50)
    np.save(tmp_path / "batch.npy", batch)
    prob = run_alone(f"""
        import numpy as np, onnxruntime
        session = onnxruntime.InferenceSession({str(out)!r}, providers=["CPUExecutionProvider"])
        assert [i.name for i in session.get_inputs()] == ["image"], session.get_inputs()
        assert session.get_inputs()[0].type == "tensor(uint8)"
        assert [o.name for o in session.get_outputs()] == ["probabilities"]
        both = session.run(None, {{"image": np.load({str(tmp_path / 'batch.npy')!r})}})[0]
        assert np.allclose(both.sum(axis=1), 1, atol=1e-6)
        prob = both[:, 1]
        one = session.run(None, {{"image": np.load({str(tmp_path / 'batch.npy')!r})[:1]}})[0]  # dynamic batch
        assert abs(one[0, 1] - prob[0]) < 1e-6
    """, forbidden=("histoclass", "keras", "tensorflow"))
    run = load_run(trained_run)
    np.testing.assert_allclose(prob, run.predict(batch), atol=TOLERANCE)
    card = json.loads(card_path(out).read_text())
    assert card["sha256"] == file_sha256(out)
    assert card["class_names"] == ["benign", "malignant"]
    assert card["threshold"] == run.threshold and card["temperature"] == run.temperature
    assert card["input"]["shape"] == [None, 50, 50, 3] and card["input"]["dtype"] == "uint8"
    assert card["image_size"] == 50 and "microns_per_pixel" in card and card["histoclass_version"]
    assert card["parity"]["max_abs_difference"] <= TOLERANCE


def test_saved_model_export_runs_in_tensorflow_alone(trained_run, tmp_path):
    run = ensemble_with_tta(load_run(trained_run))
    out = export_run(run, "saved_model", tmp_path / "saved")
    batch = images()
    np.save(tmp_path / "batch.npy", batch)
    prob = run_alone(f"""
        import numpy as np, tensorflow as tf
        loaded = tf.saved_model.load({str(out)!r})
        prob = loaded.serve(tf.constant(np.load({str(tmp_path / 'batch.npy')!r}))).numpy()[:, 1]
        signature = loaded.signatures["serving_default"]
        via_signature = list(signature(image=tf.constant(np.load({str(tmp_path / 'batch.npy')!r})[:3])).values())[0]
        assert np.allclose(via_signature.numpy()[:, 1], prob[:3], atol=1e-6)
    """)
    np.testing.assert_allclose(prob, run.predict(batch), atol=TOLERANCE)
    card = json.loads(card_path(out).read_text())
    assert card["members"] == 2 and card["test_time_augmentation"] is True
    assert "mean of the 8 dihedral views" in card["in_graph"]
    assert card["files_sha256"]["saved_model.pb"] == file_sha256(out / "saved_model.pb")


def test_export_refuses_what_it_cannot_do(trained_run, tmp_path, capsys):
    taken = tmp_path / "taken.onnx"
    taken.write_bytes(b"mine")
    with pytest.raises(HistoclassError, match="already exists"):
        export_run(trained_run, "onnx", taken)
    assert taken.read_bytes() == b"mine"
    assert main(["export", str(trained_run), "--format", "tflite", "--out", str(tmp_path / "x")]) == 2
    assert "unknown export format 'tflite'; choose one of: onnx, saved_model" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == [taken]


def test_onnx_engine_gives_the_keras_numbers(trained_run, tmp_path, capsys):
    keras_run = load_run(trained_run)
    onnx_run = load_run(trained_run, engine="onnx")
    assert onnx_run.engine.name == "onnx"
    batch = images(40)
    np.testing.assert_allclose(onnx_run.predict(batch), keras_run.predict(batch), atol=TOLERANCE)
    ensemble_with_tta(keras_run)
    onnx_run.models, onnx_run.config = list(keras_run.models), keras_run.config
    stale = onnx_run.engine
    np.testing.assert_allclose(onnx_run.predict(batch), keras_run.predict(batch), atol=TOLERANCE)
    assert onnx_run.engine is not stale and onnx_run.engine.name == "onnx"  # rebuilt for the new models
    # The command line: the same CSV numbers with either engine.
    folder = tmp_path / "patches"
    for i, image in enumerate(batch[:6]):
        write_png(folder / f"{i}.png", image)
    outputs = {}
    for engine in ("keras", "onnx"):
        assert main(["predict", str(trained_run), str(folder), "--engine", engine, "-q",
                     "-o", str(tmp_path / f"{engine}.csv")]) == 0
        rows = (tmp_path / f"{engine}.csv").read_text().splitlines()[1:]
        outputs[engine] = np.array([float(row.split(",")[2]) for row in rows])
    assert len(outputs["keras"]) == 6
    # The engines agree within TOLERANCE (as above), the CSV rounds to 6 decimals.
    np.testing.assert_allclose(outputs["onnx"], outputs["keras"], atol=TOLERANCE + 1e-6)
    assert main(["predict", str(trained_run), str(folder), "--engine", "tpu"]) == 2
    assert "unknown engine 'tpu'; choose one of: keras, onnx" in capsys.readouterr().err


def test_onnx_engine_split_over_threads_gives_the_same_numbers(trained_run):
    """A batch cut into pieces run on several threads at once: each image's probability is the
    one of a single run over the whole batch, and Keras's, in the order asked for."""
    from histoclass.inference.engines import KerasEngine, OnnxEngine
    run = ensemble_with_tta(load_run(trained_run))
    batch = images(OnnxEngine.PIECE * 2 + 37, seed=9)
    indices = np.random.default_rng(2).permutation(len(batch))[:len(batch) - 5]
    split = OnnxEngine(run.models, run.image_size, True, threads=3)
    whole = OnnxEngine(run.models, run.image_size, True, threads=1)
    assert split.split and not whole.split
    got = split.model_probabilities(batch, indices, batch_size=len(batch))
    np.testing.assert_allclose(got, whole.model_probabilities(batch, indices, batch_size=len(batch)), atol=1e-6)
    expected = KerasEngine(run.models, True).model_probabilities(batch, indices)
    np.testing.assert_allclose(got, expected, atol=TOLERANCE)
    assert len(got) == len(indices)
