"""`histoclass train`: discover, decode (cached), split by patient, fit, calibrate, save."""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ..config import IDC_MICRONS_PER_PIXEL, IDC_PATCH_SIZE, TrainConfig
from ..data import discover
from ..data.cache import DecodedImages, RowView, fingerprint, load_images
from ..data.records import ImageRecord
from ..data.splits import apply_split_file, check_no_leakage, describe_parts, read_split_file, split_by_group
from ..errors import HistoclassError
from ..evaluation.metrics import has_both_classes, require_both_classes
from ..fileio import file_sha256, read_json, write_csv_atomic, write_json_atomic
from ..progress import on_terminal
from ..runs.environment import environment
from ..runs.ensemble import is_ensemble
from ..runs.folder import read_config, read_history, read_split, write_config, write_split

log = logging.getLogger(__name__)


@dataclass
class PreparedData:
    records: list[ImageRecord]
    parts: np.ndarray
    images: np.ndarray  # aligned with records
    labels: np.ndarray

    def indices(self, part: str) -> np.ndarray:
        return np.flatnonzero(self.parts == part)


def train(data: str | os.PathLike, out_dir: str | os.PathLike, config: TrainConfig,
          split_file: str | os.PathLike | None = None, cache_dir: str | os.PathLike | None = None,
          progress: bool = True, devices: int | str | None = None, scale_lr: bool = False,
          batch_size_given: bool = True, learning_rate_given: bool = True) -> Path:
    """Trains a new run into `out_dir` and returns its folder.

    `devices`: train data-parallel on this many devices ("all": every one; see devices.py);
    `config.batch_size` is then the global batch. `scale_lr` multiplies the learning rate by
    the number of devices (recorded in config.json). Without `batch_size_given`, a GPU trains
    at the batch that keeps it busy (accelerator.py; recorded in config.json)."""
    out_dir = Path(out_dir)
    _check_new_run_folder(out_dir)
    config.validate()
    if not batch_size_given:
        from .accelerator import accelerator_defaults
        config = accelerator_defaults(config, learning_rate_given)
    plan = _plan(devices)
    if scale_lr:
        count = plan.count if plan else 1
        config = replace(config, learning_rate=config.learning_rate * count)
        log.info("learning rate scaled by %d devices to %g", count, config.learning_rate)
    dataset = discover(data)
    require_both_classes(dataset.labels, f"training on the data at {dataset.root}")
    if config.mpp is None and dataset.layout == "idc":
        # The 50 px patches' own scale (config.py), after their resizing to the model's input.
        config = config.replace(mpp=IDC_MICRONS_PER_PIXEL * IDC_PATCH_SIZE / config.image_size)
    decoded = load_images(dataset.records, config.image_size, cache_dir, progress=progress)
    prepared = _prepare(dataset.records, decoded, config, split_file)
    out_dir.mkdir(parents=True, exist_ok=True)
    data_info = {
        "path": str(Path(data).expanduser().resolve()), "layout": dataset.layout,
        "fingerprint": fingerprint(dataset.records, config.image_size),
        "num_found": len(dataset.records), "num_used": len(prepared.records),
        "num_skipped": len(dataset.skipped) + len(decoded.skipped), "num_resized": decoded.num_resized,
        "split_file": str(split_file) if split_file else None,
        "parts": {p: _part_summary(prepared, p) for p in ("train", "val", "test")},
    }
    write_split(out_dir, prepared.records, prepared.parts)
    _write_skipped(out_dir, dataset.skipped + decoded.skipped)
    write_config(out_dir, config, data_info)  # last: a folder with config.json is a run
    return _fit(out_dir, config, prepared, history=[], state=None, cache_dir=cache_dir, progress=progress,
                plan=plan)


def resume(run_dir: str | os.PathLike, cache_dir: str | os.PathLike | None = None, progress: bool = True,
           devices: int | str | None = None) -> Path:
    """Continues an interrupted run from its last completed epoch, with the same split (on
    `devices` as `train` takes them; the learning rate stays as config.json has it)."""
    run_dir = Path(run_dir)
    config, _ = read_config(run_dir)
    if is_ensemble(run_dir):
        raise HistoclassError(f"{run_dir} is a cross-validation's ensemble, not one run; continue it "
                              f"with `histoclass cv DATA --folds K --out {run_dir}` and its settings")
    plan = _plan(devices)
    state_path = run_dir / "state.json"
    records, parts = read_split(run_dir)
    decoded = load_images(records, config.image_size, cache_dir, progress=progress)
    if not decoded.usable.all():
        raise HistoclassError(
            f"{int((~decoded.usable).sum())} images of the run's split can no longer be read "
            f"(first: {decoded.skipped[0][0]}); restore them or start a new run")
    prepared = PreparedData(records, parts, decoded.images, np.array([r.label for r in records]))
    from .callbacks import catch_up
    state = catch_up(run_dir, read_json(state_path)) if state_path.is_file() else None
    if state is not None and not (run_dir / "last.keras").is_file():
        state = None  # stopped before its first epoch ended: start again, with the same split
    history = read_history(run_dir)[: state["epochs_done"]] if state else []
    return _fit(run_dir, config, prepared, history=history, state=state, cache_dir=cache_dir, progress=progress,
                plan=plan)


def _plan(devices: int | str | None):
    if devices is None:
        return None
    from .devices import parse_devices, plan_devices
    return plan_devices(parse_devices(str(devices)))


def _check_new_run_folder(out_dir: Path) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise HistoclassError(f"--out {out_dir} is a file; give a folder for the run")
    if out_dir.is_dir() and any(p.name != "train.log" for p in out_dir.iterdir()):
        hint = " or continue it with --resume" if (out_dir / "config.json").exists() else ""
        raise HistoclassError(f"--out {out_dir} is not empty; give a new folder{hint}")


def _prepare(records: list[ImageRecord], decoded: DecodedImages, config: TrainConfig,
             split_file) -> PreparedData:
    keep = np.flatnonzero(decoded.usable)
    if not len(keep):
        raise HistoclassError("none of the images could be decoded; see the log for the reason of each")
    used = [records[i] for i in keep]
    labels = np.array([r.label for r in used])
    groups = np.array([r.group for r in used], dtype=object)
    if split_file:
        parts = apply_split_file(groups, read_split_file(split_file))
    else:
        train_fraction = 1.0 - config.val_fraction - config.test_fraction
        given = [r.part for r in used]
        parts = split_by_group(labels, groups, (train_fraction, config.val_fraction, config.test_fraction),
                               seed=config.seed, given=given, balance=config.split_balance)
        _log_split_origin(given, parts, config)
    check_no_leakage(groups, parts)
    selected = np.flatnonzero(parts != "")
    for part in ("train", "val"):
        part_labels = labels[selected][parts[selected] == part]
        if not len(part_labels):
            raise HistoclassError(
                f"the {part} part is empty; the data has too few patients/groups for a split "
                "(add data, or give a split with --split-file)")
    require_both_classes(labels[parts == "train"], "training (its train part)")
    for line in describe_parts(labels, groups, parts):
        log.info("split by patient/group, %s", line)
    _warn_one_class(labels, parts, "the split file" if split_file else "the data")
    return PreparedData([used[i] for i in selected], parts[selected],
                        RowView(decoded.images, keep[selected]), labels[selected])


def _warn_one_class(labels: np.ndarray, parts: np.ndarray, source: str) -> None:
    """A val or test part of one class can only come from the user (carved parts hold both):
    train with it, but say loudly what it costs."""
    for part, cost in (("val", "early stopping watches val_loss instead of val_auc, and the temperature "
                               "and threshold cannot be fitted (temperature 1, threshold 0.5 fixed; "
                               "calibration.json says why)"),
                       ("test", "its sensitivity or specificity, ROC-AUC and balanced accuracy are "
                                "undefined")):
        part_labels = labels[parts == part]
        if len(part_labels) and not has_both_classes(part_labels):
            only = "malignant" if part_labels[0] else "benign"
            log.warning("THE %s PART HOLDS %s IMAGES ONLY (%d, as %s gives it): %s; give a %s part with both "
                        "classes for a calibrated run", part.upper(), only.upper(), len(part_labels), source,
                        cost, part)


def _log_split_origin(given: list[str | None], parts: np.ndarray, config: TrainConfig) -> None:
    """Says which parts the data defined (kept as they are) and which were carved, and from what."""
    defined = [p for p in ("train", "val", "test") if p in set(given)]
    fractions = {"val": config.val_fraction, "test": config.test_fraction}
    carved = [p for p in ("val", "test") if p not in defined and fractions[p] > 0]
    skipped = [p for p in ("val", "test") if p not in defined and fractions[p] == 0]
    counts = {p: int(np.sum(parts == p)) for p in ("train", "val", "test")}
    if defined:
        log.info("the data defines its %s part(s): kept as given (%s)", ", ".join(defined),
                 ", ".join(f"{p} {counts[p]} images" for p in defined))
    for part in carved:
        source = "the data's train part" if defined else "the data"
        log.info("carved the %s part out of %s by patient/group: %d images (fraction %.2f)",
                 part, source, counts[part], fractions[part])
    for part in skipped:
        log.info("no %s part (--%s-fraction 0): every other labelled image trains or validates",
                 part, part)


def _part_summary(prepared: PreparedData, part: str) -> dict:
    mask = prepared.parts == part
    return {"images": int(mask.sum()), "malignant": int(prepared.labels[mask].sum()),
            "groups": len({r.group for r, m in zip(prepared.records, mask) if m})}


def _write_skipped(out_dir: Path, skipped: list[tuple[str, str]]) -> None:
    write_csv_atomic(out_dir / "skipped.csv", ("path", "reason"), skipped, defuse_formulas=True)


def _fit(out_dir: Path, config: TrainConfig, data: PreparedData, history: list[dict],
         state: dict | None, cache_dir, progress: bool, plan=None) -> Path:
    import keras
    from ..models import create_model
    from ..runs.model_file import load_model
    from .batches import TrainingBatches, class_weights, patient_balanced_weights
    from .callbacks import AveragedWeights, EpochProgress, RunKeeper, ValidationMetrics
    from .devices import distributed

    keras.utils.set_random_seed(config.seed)
    _make_deterministic()
    train_idx, val_idx = data.indices("train"), data.indices("val")
    images = data.images
    if state is None:
        reference = _stain_reference(out_dir, config, data, train_idx)
    else:
        from ..stain.context import read_reference
        reference = read_reference(out_dir)
    if reference is not None:
        images = _stain_normalized(reference, data, np.concatenate([train_idx, val_idx]))
    weights = class_weights(data.labels[train_idx]) if config.class_weighting else None
    per_image = None
    if config.patient_balance > 0:
        per_image = patient_balanced_weights(data.labels[train_idx], [data.records[i].group for i in train_idx],
                                             config.patient_balance, config.class_weighting)
    batches = TrainingBatches(images, train_idx, data.labels[train_idx], config.batch_size,
                              seed=config.seed, label_smoothing=config.label_smoothing, weights=weights,
                              sample_weights=per_image, mixup=config.mixup,
                              epoch=state["epochs_done"] if state else 0,
                              multiple_of=plan.count if plan else 1, pad_last=_compiles_per_shape())
    steps_per_epoch = len(batches)
    scope = distributed(plan)  # the model is built (or loaded), compiled and fitted on its devices
    with scope():
        if state is None:
            model = create_model(config.model, config.image_size, config.augmentation, config.seed,
                                 stain_augmentation=config.stain_augmentation)
            model.compile(optimizer=_optimizer(config, steps_per_epoch), loss="categorical_crossentropy")
            initial_epoch = 0
        else:
            # last.keras holds the optimizer's state too (moments, step count, schedule).
            model = load_model(out_dir / "last.keras", compile=True)
            initial_epoch = int(state["epochs_done"])
            log.info("resuming %s after epoch %d of %d", out_dir, initial_epoch, config.num_epochs)
    val_images = np.asarray(images[val_idx])
    monitor = config.monitor if has_both_classes(data.labels[val_idx]) else "val_loss"
    if monitor != config.monitor:
        log.warning("the validation part holds one class: early stopping and the best model watch %s "
                    "instead of %s", monitor, config.monitor)
    keeper = RunKeeper(out_dir, monitor, config.patience, history,
                       best_value=state.get("best_value") if state else None,
                       best_epoch=state.get("best_epoch") if state else None,
                       wait=state.get("wait", 0) if state else 0)
    log.info("training %s on %d images (%d validation) for up to %d epochs", config.model,
             len(train_idx), len(val_idx), config.num_epochs)
    _, data_info = read_config(out_dir)
    metadata = {"status": "training", "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "resumed_after_epoch": initial_epoch or None, "seed": config.seed,
                "data_fingerprint": data_info.get("fingerprint"),
                "split_sha256": file_sha256(out_dir / "split.csv"),
                "distribution": plan.metadata() if plan else {"count": 1, "strategy": None},
                **environment()}
    write_json_atomic(out_dir / "metadata.json", metadata)
    interrupted = False
    started = time.perf_counter()
    if initial_epoch < config.num_epochs and keeper.wait < config.patience:
        try:
            with scope():
                model.fit(batches, epochs=config.num_epochs, initial_epoch=initial_epoch, verbose=0,
                          callbacks=[*([AveragedWeights(swapped=initial_epoch > 0)] if config.ema_momentum else []),
                                     ValidationMetrics(val_images, data.labels[val_idx]), keeper,
                                     *([EpochProgress(config.num_epochs)] if progress and on_terminal() else [])])
        except KeyboardInterrupt:
            interrupted = True
            log.warning("interrupted: the best model so far is kept; continue with "
                        "`histoclass train --resume %s`", out_dir)
    if not (out_dir / "model.keras").is_file():
        raise HistoclassError(f"training stopped before its first epoch ended; nothing was saved in {out_dir}")
    from .finalize import finalize_run
    finalize_run(out_dir, data.labels[train_idx], cache_dir=cache_dir,
                 train_images=RowView(data.images, train_idx))
    metadata.update(status="interrupted" if interrupted else "complete",
                    training_seconds=round(time.perf_counter() - started, 1),
                    epochs_done=keeper.history[-1]["epoch"] if keeper.history else 0,
                    best_epoch=keeper.best_epoch, monitor=monitor, best_value=keeper.best_value)
    write_json_atomic(out_dir / "metadata.json", metadata)
    if interrupted:
        raise KeyboardInterrupt
    return out_dir


STAIN_SAMPLE = 512  # training patches the stain reference is fitted on


def _stain_reference(out_dir: Path, config: TrainConfig, data: PreparedData, train_idx: np.ndarray):
    """The run's stain reference (`stain.context.StainReference`), fitted on `--stain-reference`
    or on a seeded sample of training patches, and written to stain.json; None without
    normalization."""
    if config.stain_normalization == "none":
        return None
    from ..stain.context import STAIN_FILE, fit_reference
    if config.stain_reference:
        from ..data.decode import BadImage, decode_bytes, read_image_bytes
        try:
            images = decode_bytes(read_image_bytes(config.stain_reference))
        except BadImage as err:
            raise HistoclassError(f"--stain-reference {config.stain_reference}: {err}; give a PNG, JPEG "
                                  "or TIFF image of stained tissue") from None
        source = config.stain_reference
    else:
        chosen = np.sort(np.random.default_rng(config.seed).choice(
            train_idx, min(STAIN_SAMPLE, len(train_idx)), replace=False))
        images = np.asarray(data.images[chosen])
        source = f"{len(chosen)} training patches"
    reference = fit_reference(config.stain_normalization, images, fitted_on=source)
    write_json_atomic(out_dir / STAIN_FILE, reference.to_dict())
    log.info("stain normalization %s: reference fitted on %s", config.stain_normalization, source)
    return reference


def _stain_normalized(reference, data: PreparedData, rows: np.ndarray) -> np.ndarray:
    """The images the model trains and validates on: `data.images` with `rows` normalized per
    patient (one transform per patient, as `Run.model_probabilities` does at inference), in
    memory; the other rows are left as they are (never read)."""
    from ..stain.context import StainNormalizer
    images = np.array(data.images)
    groups = [data.records[i].group for i in rows]
    view = StainNormalizer(reference).view(data.images, rows, groups)
    for start in range(0, len(rows), 4096):
        chunk = np.sort(rows[start:start + 4096])
        images[chunk] = view[chunk]
    log.info("stain normalization %s: %d images normalized, one transform per patient (%d patients)",
             reference.method, len(rows), len(set(groups)))
    return images


def _optimizer(config: TrainConfig, steps_per_epoch: int):
    import keras
    learning_rate = config.learning_rate
    if config.lr_schedule == "cosine":
        total = steps_per_epoch * config.num_epochs
        warmup = steps_per_epoch * config.warmup_epochs
        learning_rate = keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=config.learning_rate * (0.1 if warmup else 1.0),
            decay_steps=max(1, total - warmup), alpha=0.01,
            warmup_target=config.learning_rate if warmup else None, warmup_steps=warmup)
    averaging = dict(use_ema=True, ema_momentum=config.ema_momentum) if config.ema_momentum else {}
    if config.optimizer == "adamw":
        return keras.optimizers.AdamW(learning_rate=learning_rate, weight_decay=config.weight_decay, **averaging)
    return keras.optimizers.Adam(learning_rate=learning_rate, **averaging)


def _compiles_per_shape() -> bool:
    """JAX on a GPU compiles the training step for each batch shape (seconds each)."""
    import keras
    if keras.backend.backend() != "jax":
        return False
    from .accelerator import accelerator_platform
    return accelerator_platform() is not None


def _make_deterministic() -> None:
    import keras
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf
        tf.config.experimental.enable_op_determinism()

