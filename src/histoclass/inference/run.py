"""A trained run, loaded: the one path from pixels to calibrated probability to label.

    run = histoclass.load_run("runs/idc")
    run.predict(images)            # uint8 arrays -> calibrated prob_malignant
    run.predict_files(paths)       # one FilePrediction per file, with why a file was skipped
    run.evaluate()                 # the numbers of metrics.json on the run's test split

Every command (evaluate, predict, report), the training's own calibration step and the
benchmarks call these methods, so the run's resizing, test-time augmentation, calibration and
threshold are applied the same way everywhere.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .. import CLASS_NAMES
from ..config import TrainConfig
from ..data.decode import fit_to_size
from ..errors import HistoclassError
from ..evaluation.calibration import calibrate
from ..runs.ensemble import MEMBERS_FILE, is_ensemble, read_members
from ..runs.folder import Calibration, read_calibration, read_config
from ..runs.model_file import load_model
from ..stain.context import NormalizedImages, StainNormalizer, read_reference
from .engines import KerasEngine, is_stale, make_engine
from .files import FilePrediction, predict_files
from .scoring import ScoredImages, evaluation_metrics, score


@dataclass
class Run:
    """A run folder with its model loaded for inference (batch norm folded into the convolutions).

    `models` holds one model for a run that `train` wrote; an ensemble has one per member, and
    its probability is the members' mean, calibrated once. `engine` runs the models (see
    `inference.engines`): None means Keras; `use_engine("onnx")` switches to ONNX Runtime.
    """

    folder: Path
    config: TrainConfig
    data: dict[str, Any]  # what it was trained on: path, layout, fingerprint, parts
    models: list  # keras.Model each, same input and output
    calibration: Calibration
    engine: Any = field(default=None, repr=False)
    # The run's stain reference (stain.json), None without normalization: images are normalized
    # per patient or slide (`groups`), or per tile where no group is given, before the model.
    stain: StainNormalizer | None = field(default=None, repr=False)
    # An ensemble of `histoclass cv` with stain normalization: each member's own normalizer (its
    # reference was fitted on its own training folds), in the order of `models`; `stain` is the
    # first member's (what `normalized` and Grad-CAM on `model` use). None for one run.
    member_stains: list[StainNormalizer] | None = field(default=None, repr=False)
    _member_runs: dict = field(default_factory=dict, repr=False, compare=False)

    def use_engine(self, name: str | None) -> "Run":
        """Runs the models with engine `name` ("keras" or "onnx") from now on; returns self."""
        self.engine = make_engine(self, name)
        return self

    @property
    def model(self):
        """The model (the first member of an ensemble): for Grad-CAM and inspection."""
        return self.models[0]

    @property
    def model_file(self) -> Path:
        """The file that stands for the run's weights in the stamps of stored predictions:
        model.keras, or for an ensemble members.json (which holds each member's SHA-256)."""
        ensemble = self.folder / MEMBERS_FILE
        return ensemble if ensemble.is_file() else self.folder / "model.keras"

    @property
    def threshold(self) -> float:
        """prob_malignant at or above which an image is called malignant; chosen at training."""
        return self.calibration.threshold

    @property
    def neighbourhood(self) -> dict | None:
        """calibration.json's `neighbourhood` (its `sigma` in patches or tiles and the
        `threshold` of the smoothed probabilities), or None where the run has none."""
        return self.calibration.neighbourhood

    @property
    def temperature(self) -> float:
        return self.calibration.temperature

    @property
    def prior_shift(self) -> float:
        return self.calibration.prior_shift

    @property
    def image_size(self) -> int:
        return self.config.image_size

    def __repr__(self) -> str:
        return (f"Run({str(self.folder)!r}, model={self.config.model!r}, recipe={self.config.recipe!r}, "
                f"threshold={self.threshold:.4f}, temperature={self.temperature:.4f})")

    # ---- pixels to probabilities ------------------------------------------------------------

    def predict(self, images, batch_size: int = 512, progress: bool = False,
                groups=None) -> float | np.ndarray:
        """Calibrated probability of malignancy for uint8 images.

        `images`: one image (H x W grey, H x W x 1, H x W x 3 RGB, H x W x 4 RGBA), a batch
        (N x H x W or N x H x W x C) or a list of images of any sizes. Images are resized as the
        run's training data was. `groups`: each image's patient or slide, for a run with stain
        normalization (one transform per group); None: each image is normalized on its own.
        Returns a float for one image, else an array of N floats.
        """
        batch, single = self.prepare_images(images)
        prob = self.calibrated(self.model_probabilities(batch, batch_size=batch_size, progress=progress,
                                                        groups=groups))
        return float(prob[0]) if single else prob

    def labels(self, prob_malignant) -> np.ndarray:
        """0 (benign) / 1 (malignant) at the run's threshold."""
        return (np.asarray(prob_malignant) >= self.threshold).astype(int)

    def model_probabilities(self, images: np.ndarray, indices: np.ndarray | None = None,
                            batch_size: int = 512, progress: bool = False, groups=None,
                            stain_transform=None) -> np.ndarray:
        """The model's own prob_malignant (with the run's test-time augmentation, before
        calibration) for `images[indices]`: uint8 (N, size, size, 3), possibly memory-mapped.

        With stain normalization, the images are normalized first, once (not per view): with
        `stain_transform` (a slide's, fitted by the caller) all of them, else one transform per
        group of `groups` (one per chosen image), else each image on its own. An ensemble whose
        members normalize runs each member on the images normalized to its own reference
        (`stain_transform` may then be a list, one per member, as `fit_stain_group` gives)."""
        if images.shape[1:] != (self.image_size, self.image_size, 3):
            raise HistoclassError(f"images of shape {images.shape[1:]} given where the model takes "
                                  f"{(self.image_size, self.image_size, 3)}; use Run.predict, which resizes")
        if self.member_stains is not None:
            if isinstance(images, NormalizedImages):
                raise HistoclassError("an ensemble normalizes its images for each member: pass the images "
                                      "as read (with their groups), not normalized ones")
            return np.mean([self.member(i).model_probabilities(
                images, indices, batch_size=batch_size, progress=progress, groups=groups,
                stain_transform=_of_member(stain_transform, i, len(self.models)))
                for i in range(len(self.models))], axis=0)
        images = self.normalized(images, indices, groups, stain_transform)
        tta = self.config.test_time_augmentation
        if self.engine is not None and is_stale(self.engine, self.models, tta):
            self.engine = make_engine(self, self.engine.name)  # models or settings changed since
        engine = self.engine or KerasEngine(self.models, tta)
        return engine.model_probabilities(images, indices, batch_size=batch_size, progress=progress)

    def member(self, index: int) -> "Run":
        """Member `index` of an ensemble as a run of its own: its model and its stain normalizer,
        the ensemble's calibration and engine kind."""
        stain = self.stain if self.member_stains is None else self.member_stains[index]
        name = None if self.engine is None else self.engine.name
        key = (index, id(self.models[index]), id(stain), name, self.config.test_time_augmentation)
        if key not in self._member_runs:
            member = Run(self.folder, self.config, self.data, [self.models[index]], self.calibration, stain=stain)
            self._member_runs[key] = member.use_engine(name) if name is not None else member
        return self._member_runs[key]

    def fit_stain_group(self, tiles: np.ndarray):
        """The stain transform of one patient or slide from (a sample of) its tiles, for
        `model_probabilities(..., stain_transform=)`: one transform, or for an ensemble whose
        members normalize a list (one per member); None for a run without normalization."""
        if self.member_stains is not None:
            return [normalizer.fit_group(tiles) for normalizer in self.member_stains]
        return None if self.stain is None else self.stain.fit_group(tiles)

    def normalized(self, images: np.ndarray, indices: np.ndarray | None = None, groups=None,
                   stain_transform=None):
        """`images` as the model sees them: read through the run's stain normalization (see
        `model_probabilities`), or as they are for a run without one."""
        if self.stain is None or isinstance(images, NormalizedImages):
            return images
        if stain_transform is not None:
            chosen = np.arange(len(images)) if indices is None else np.asarray(indices)
            which = np.full(len(images), -1, dtype=np.int64)
            which[chosen] = 0
            return NormalizedImages(images, [stain_transform], which)
        return self.stain.view(images, indices, groups)

    def calibrated(self, model_prob: np.ndarray) -> np.ndarray:
        """The model's probabilities with the run's prior shift and temperature applied."""
        return calibrate(model_prob, self.temperature, self.prior_shift)

    def prepare_images(self, images) -> tuple[np.ndarray, bool]:
        """(uint8 batch at the model's size, whether a single image was given)."""
        if isinstance(images, (list, tuple)):
            if not images:
                raise HistoclassError("got an empty list of images; pass at least one")
            return np.stack([self._one_image(np.asarray(image), f"image {i}")
                             for i, image in enumerate(images)]), False
        array = np.asarray(images)
        if array.ndim == 2 or (array.ndim == 3 and array.shape[-1] in (1, 3, 4)):
            return self._one_image(array, "the image")[None], True
        if array.ndim == 3:
            array = array[..., None]  # a batch of grey images
        if array.ndim != 4 or array.shape[-1] not in (1, 3, 4):
            raise HistoclassError(
                f"images of shape {array.shape} are not images: pass H x W (grey), H x W x C, a batch "
                "N x H x W (x C) with C in 1, 3, 4, or a list of images")
        if not len(array):
            raise HistoclassError("got an empty batch of images; pass at least one")
        self._check_dtype(array)
        if array.shape[1:3] == (self.image_size, self.image_size) and array.shape[-1] == 3:
            return np.ascontiguousarray(array), False
        return np.stack([self._one_image(image, f"image {i}") for i, image in enumerate(array)]), False

    def _one_image(self, image: np.ndarray, what: str) -> np.ndarray:
        self._check_dtype(image)
        if image.ndim == 3 and image.shape[-1] == 1:
            image = image[..., 0]
        if image.ndim == 2:
            image = np.repeat(image[..., None], 3, axis=2)
        if image.ndim != 3 or image.shape[-1] not in (3, 4) or min(image.shape[:2]) < 1:
            raise HistoclassError(f"{what} has shape {image.shape}; expected H x W, H x W x 1, 3 or 4")
        return fit_to_size(np.ascontiguousarray(image[..., :3]), self.image_size)[0]

    @staticmethod
    def _check_dtype(array: np.ndarray) -> None:
        if array.dtype != np.uint8:
            raise HistoclassError(
                f"images must be uint8 (0-255) as read from an image file, got {array.dtype}; "
                "convert with (image * 255).round().astype('uint8') if they are floats in [0, 1]")

    # ---- files and data sets ----------------------------------------------------------------

    def predict_files(self, paths: Sequence[str | os.PathLike], progress: bool = False) -> list[FilePrediction]:
        """One `FilePrediction` per image file; folders are searched recursively. A file that
        cannot be used gets status "skipped: <why>" and no probability."""
        return predict_files(self, paths, progress=progress)

    def score(self, data: str | os.PathLike | None = None, part: str = "test", cache_dir=None,
              progress: bool = False) -> ScoredImages:
        """A `ScoredImages` for labelled images: the run's own `part` of its split when `data`
        is None (or the data it was trained on), else the data's test part, else all of it."""
        return score(self, data, part, cache_dir=cache_dir, progress=progress)

    def evaluate(self, data: str | os.PathLike | None = None, cache_dir=None, progress: bool = False) -> dict:
        """The numbers of metrics.json: metrics at the run's threshold and at 0.5, on the run's
        test split (or `data`)."""
        return evaluation_metrics(self, self.score(data, cache_dir=cache_dir, progress=progress))


def load_run(folder: str | os.PathLike, engine: str | None = None) -> Run:
    """Reads a run folder written by `histoclass train` (or `histoclass.train`), or the folder
    of `histoclass cv`, whose members' models make one ensemble. `engine`: "keras" or "onnx"
    (see `inference.engines`); default $HISTOCLASS_ENGINE, else keras."""
    folder = Path(folder)
    config, data = read_config(folder)
    if is_ensemble(folder):
        models = [_load_model(member, config) for member in read_members(folder)]
    else:
        models = [_load_model(folder, config)]
    reference = read_reference(folder)
    member_stains = None
    if reference is None and is_ensemble(folder):
        # Each member's reference was fitted on its own training folds: each normalizes with its own.
        references = [read_reference(member) for member in read_members(folder)]
        if any(r is not None for r in references):
            if any(r is None for r in references):
                raise HistoclassError(f"some members of the ensemble in {folder} have a stain reference "
                                      "(stain.json) and some not; rerun `histoclass cv` with the same --out")
            member_stains = [StainNormalizer(r) for r in references]
            reference = references[0]
    run = Run(folder, config, data, models, read_calibration(folder),
              stain=StainNormalizer(reference) if reference is not None else None, member_stains=member_stains)
    if engine is not None or os.environ.get("HISTOCLASS_ENGINE"):
        run.use_engine(engine)
    return run


def _of_member(stain_transform, index: int, count: int):
    """The stain transform given for member `index`: a list holds one per member; the identity
    (`StainTransform()`, for images already normalized) serves all; one fitted transform cannot
    (each member has its own reference: fit with `Run.fit_stain_group`)."""
    from ..stain.transform import StainTransform
    if isinstance(stain_transform, (list, tuple)):
        if len(stain_transform) != count:
            raise ValueError(f"{len(stain_transform)} stain transforms given for {count} ensemble members")
        return stain_transform[index]
    if stain_transform is not None and type(stain_transform) is not StainTransform:
        raise ValueError("one fitted stain transform given for an ensemble whose members each normalize to "
                         "their own reference; give one per member (Run.fit_stain_group)")
    return stain_transform


def _load_model(folder: Path, config: TrainConfig):
    from ..models.fold import fold_batch_norm
    model = fold_batch_norm(load_model(folder / "model.keras"))  # same predictions, fewer passes
    expected_input = (None, config.image_size, config.image_size, 3)
    if tuple(model.input_shape) != expected_input or tuple(model.output_shape) != (None, 2):
        raise HistoclassError(
            f"the model in {folder} takes {model.input_shape} and gives {model.output_shape}, not "
            f"{expected_input} -> (None, 2); it is not a histoclass model for this run")
    return model


__all__ = ["Run", "load_run", "CLASS_NAMES"]
