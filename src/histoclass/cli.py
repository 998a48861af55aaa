"""The `histoclass` command line. Each command is a thin call into the package."""
from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import List, Optional

import typer

from .errors import HistoclassError
from .fileio import escape_log_args, printable

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Train, evaluate and explain CNNs that classify histopathology patches as "
                       "benign (0) or malignant (1).")
log = logging.getLogger("histoclass")

# Options that recur, defined once.
CacheOption = typer.Option(None, "--cache-dir", help="Where decoded images are cached "
                                                     "(default: $HISTOCLASS_CACHE_DIR or ~/.cache/histoclass).")
QuietOption = typer.Option(False, "--quiet", "-q", help="No progress bars (off a terminal: no progress lines).")
RunDirArgument = typer.Argument(..., help="A folder written by `histoclass train`.")
OtherDataOption = typer.Option(None, "--data", help="Other data (its test part if it has one).")
EngineOption = typer.Option(None, "--engine", help="What runs the model: keras or onnx (ONNX Runtime, "
                                                   "same numbers; needs histoclass[onnx]). Default: "
                                                   "$HISTOCLASS_ENGINE, else keras.")


# The settings of a training run, shared by `train` and `cv`.
RecipeOption = typer.Option("original", "--recipe", help="Settings bundle: original (the CNN of model.py, Adam, "
                                                         "batch 32), strong (residual net, tissue augmentation, "
                                                         "AdamW, TTA) or strong_no_aug (for images with an up "
                                                         "and a down, e.g. ultrasound).")
ModelOption = typer.Option(None, "--model", help="Model from the registry (default: the recipe's).")
EpochsOption = typer.Option(None, "--epochs", help="Most epochs (early stopping may end sooner).")
BatchSizeOption = typer.Option(None, "--batch-size")
ImageSizeOption = typer.Option(None, "--image-size", help="Model input side in pixels (default 50).")
LearningRateOption = typer.Option(None, "--learning-rate")
ValFractionOption = typer.Option(None, "--val-fraction", help="Share of patients/groups for validation, when "
                                                              "the data defines no val part (default 0.15).")
TestFractionOption = typer.Option(None, "--test-fraction",
                                  help="Share held out for testing, when the data defines no test part (default 0.15; "
                                       "0: all labelled data trains and validates, evaluate elsewhere).")
SeedOption = typer.Option(None, "--seed")
SplitBalanceOption = typer.Option(
    None, "--split-balance", help="What the split's fractions share out: 'patients' (each part's share of the "
                                  "patients/groups and of each class's images) or 'images' (of each class's "
                                  "images only).")
StainNormalizationOption = typer.Option(
    None, "--stain-normalization", help="Normalize the images' stain before the model, one transform per patient "
                                        "(per slide in `slide`) toward a reference: none, reinhard or macenko "
                                        "(default: the recipe's).")
StainReferenceOption = typer.Option(None, "--stain-reference", help="Image of tissue whose stain is the "
                                    "reference (default: a sample of the training patches; stored in the run's "
                                    "stain.json).")
ThresholdOption = typer.Option(
    None, "--threshold", help="How the operating threshold is chosen on validation: youden (the balance of "
                              "sensitivity and specificity; the default) or f1 (maximum F1: fewer false "
                              "malignant calls where malignant images are the minority).")
StainAugmentationOption = typer.Option(None, "--stain-augmentation", help="Strength of the HED stain jitter of "
                                       "the tissue augmentation (default: the recipe's).")


@app.command()
def train(
    data: Optional[Path] = typer.Option(None, "--data", help="Folder, manifest CSV or .npz of labelled images."),
    out: Path = typer.Option(Path("runs/latest"), "--out", help="New folder for the run."),
    recipe: str = RecipeOption,
    model: Optional[str] = ModelOption,
    epochs: Optional[int] = EpochsOption,
    batch_size: Optional[int] = BatchSizeOption,
    image_size: Optional[int] = ImageSizeOption,
    learning_rate: Optional[float] = LearningRateOption,
    val_fraction: Optional[float] = ValFractionOption,
    test_fraction: Optional[float] = TestFractionOption,
    split_file: Optional[Path] = typer.Option(None, "--split-file",
                                              help="Published patient lists: folder with cases_{train,val,test}.txt, or a CSV group,split."),
    split_balance: Optional[str] = SplitBalanceOption,
    seed: Optional[int] = SeedOption,
    stain_normalization: Optional[str] = StainNormalizationOption,
    stain_reference: Optional[Path] = StainReferenceOption,
    stain_augmentation: Optional[float] = StainAugmentationOption,
    threshold: Optional[str] = ThresholdOption,
    mpp: Optional[float] = typer.Option(None, "--mpp", help="µm per pixel of the model's input after resizing, "
                                                           "for `histoclass slide` (default for the Kaggle IDC "
                                                           "layout: its own, 4.0 at 50 px)."),
    resume: Optional[Path] = typer.Option(None, "--resume", help="Continue this interrupted run instead."),
    devices: Optional[str] = typer.Option(None, "--devices", help="Train data-parallel on N devices or "
                                          "'all' (GPUs, else CPUs); --batch-size is then the global batch."),
    scale_lr: bool = typer.Option(False, "--scale-lr", help="With --devices: multiply the learning rate "
                                                            "by the number of devices."),
    cache_dir: Optional[Path] = CacheOption,
    quiet: bool = QuietOption,
) -> None:
    """Train a model; the run folder holds model.keras, config.json, split.csv, history.csv."""
    from .config import config_for_recipe
    from .training import train as training
    if resume is not None:
        training.read_config(resume)  # refuses what is not a run before writing a log into it
        _log_to_file(resume / "train.log")
        if scale_lr:
            raise HistoclassError("--scale-lr applies to a new run; a resumed run keeps its learning rate")
        folder = training.resume(resume, cache_dir=cache_dir, progress=not quiet, devices=devices)
    else:
        if data is None:
            raise HistoclassError("give --data PATH (or --resume RUN_DIR to continue a run)")
        config = config_for_recipe(recipe, model=model, num_epochs=epochs, batch_size=batch_size,
                                   image_size=image_size, learning_rate=learning_rate, seed=seed,
                                   val_fraction=val_fraction, test_fraction=test_fraction,
                                   split_balance=split_balance, mpp=mpp,
                                   stain_normalization=stain_normalization, stain_augmentation=stain_augmentation,
                                   stain_reference=_stain_reference(stain_reference), threshold_method=threshold)
        if out.exists():
            training._check_new_run_folder(out)
        _log_to_file(out / "train.log")
        folder = training.train(data, out, config, split_file=split_file, cache_dir=cache_dir,
                                progress=not quiet, devices=devices, scale_lr=scale_lr,
                                batch_size_given=batch_size is not None,
                                learning_rate_given=learning_rate is not None)
    typer.echo(f"Saved the run in {folder}; evaluate it with: histoclass evaluate {folder}")


def _stain_reference(path: Optional[Path]) -> Optional[str]:
    """The reference image's absolute path (the run records it), refused early if absent."""
    if path is None:
        return None
    if not path.is_file():
        raise HistoclassError(f"--stain-reference {path} is not an image file; give a PNG, JPEG or TIFF of tissue")
    return str(path.resolve())


@app.command()
def cv(
    data: Path = typer.Argument(..., help="Folder, manifest CSV or .npz of labelled images."),
    folds: int = typer.Option(5, "--folds", help="How many folds (by patient/group, stratified by label)."),
    out: Path = typer.Option(..., "--out", help="Folder for the folds' runs and the ensemble (the same "
                                                "folder again continues an interrupted cross-validation)."),
    recipe: str = RecipeOption,
    model: Optional[str] = ModelOption,
    epochs: Optional[int] = EpochsOption,
    batch_size: Optional[int] = BatchSizeOption,
    image_size: Optional[int] = ImageSizeOption,
    learning_rate: Optional[float] = LearningRateOption,
    test_fraction: Optional[float] = TestFractionOption,
    split_balance: Optional[str] = SplitBalanceOption,
    seed: Optional[int] = SeedOption,
    stain_normalization: Optional[str] = StainNormalizationOption,
    stain_reference: Optional[Path] = StainReferenceOption,
    stain_augmentation: Optional[float] = StainAugmentationOption,
    threshold: Optional[str] = ThresholdOption,
    cache_dir: Optional[Path] = CacheOption,
    quiet: bool = QuietOption,
) -> None:
    """K-fold cross-validation: a run per fold in OUT/fold-<k>, out-of-fold predictions and
    metrics (cv_metrics.json), and OUT itself a run: the folds' ensemble, calibrated out of fold."""
    from .config import config_for_recipe
    from .crossval.cv import cross_validate
    config = config_for_recipe(recipe, model=model, num_epochs=epochs, batch_size=batch_size,
                               image_size=image_size, learning_rate=learning_rate, seed=seed,
                               test_fraction=test_fraction, split_balance=split_balance,
                               stain_normalization=stain_normalization, stain_augmentation=stain_augmentation,
                               stain_reference=_stain_reference(stain_reference), threshold_method=threshold)
    _log_to_file(out / "cv.log")
    folder = cross_validate(data, out, config, num_folds=folds, cache_dir=cache_dir, progress=not quiet)
    from .fileio import read_json
    pooled = read_json(folder / "cv_metrics.json")
    spread = pooled["mean_and_std"]["roc_auc"]
    oof = pooled["out_of_fold"]
    typer.echo(f"ROC-AUC per fold {spread['mean']:.4f} +- {spread['std'] or 0:.4f}; out of fold "
               f"{oof['roc_auc']['point']:.4f} [{oof['roc_auc']['low']:.4f}, {oof['roc_auc']['high']:.4f}], "
               f"accuracy {oof['accuracy']['point']:.4f}, ECE {oof['ece']:.4f}\n"
               f"Saved the ensemble of {folds} folds in {folder}; evaluate it with: histoclass evaluate {folder}")


@app.command()
def evaluate(
    run_dir: Path = RunDirArgument,
    data: Optional[Path] = OtherDataOption,
    out: Optional[Path] = typer.Option(None, "--out", help="Folder for metrics.json and figures "
                                                           "(default RUN_DIR/evaluation)."),
    cache_dir: Optional[Path] = CacheOption,
    quiet: bool = QuietOption,
) -> None:
    """Metrics on the run's test split (or --data): metrics.json, predictions.csv and the
    per-image figures (predicted label and confidence; per-class probability bars)."""
    from .evaluation.metrics import format_table
    from .inference.run import load_run
    from .report.evaluation import write_evaluation
    run = load_run(run_dir)
    metrics, folder = write_evaluation(run, data, out, cache_dir=cache_dir, progress=not quiet)
    typer.echo(f"Evaluated {run.folder} on {metrics['evaluated_on']}:\n{format_table(metrics)}")
    if "neighbourhood" in metrics:
        smoothed = metrics["neighbourhood"]
        typer.echo(f"With the neighbourhood (each patch's probability smoothed with its patient's neighbouring "
                   f"patches, sigma {smoothed['sigma']:g}; {smoothed['num_groups_with_places']} patients' patches "
                   f"have places on their slide):\n{format_table(smoothed)}")
    typer.echo(f"Wrote {folder / 'metrics.json'}, predictions.csv and the figures in {folder}")


@app.command()
def predict(
    run_dir: Path = RunDirArgument,
    inputs: List[Path] = typer.Argument(..., help="Image files or folders (searched recursively)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="CSV file (default: standard output)."),
    engine: Optional[str] = EngineOption,
    ray: Optional[str] = typer.Option(None, "--ray", help="Run on Ray: 'auto' starts a local Ray, an "
                                                          "address (host:6379) joins a cluster."),
    workers: Optional[int] = typer.Option(None, "--workers", min=1, help="Model actors on Ray "
                                          "(default: as many as its free CPUs or GPUs allow)."),
    quiet: bool = QuietOption,
) -> None:
    """A CSV row per image: path, prob_benign, prob_malignant, predicted label."""
    from .inference.files import write_predictions_csv
    if ray is not None:
        from .cluster.ray_predict import predict_files_on_ray
        predictions, throughput = predict_files_on_ray(run_dir, inputs, ray, num_workers=workers,
                                                       progress=not quiet)
        write_predictions_csv(predictions, output)
        for line in throughput.summary().splitlines():
            log.info("%s", line)
        return
    if workers is not None:
        raise HistoclassError("--workers is for Ray; add --ray auto (or a cluster address)")
    from .inference.run import load_run
    run = load_run(run_dir, engine=engine)
    write_predictions_csv(run.predict_files(inputs, progress=not quiet), output)


@app.command()
def report(
    run_dir: Path = RunDirArgument,
    data: Optional[Path] = OtherDataOption,
    out: Optional[Path] = typer.Option(None, "--out", help="Folder for report.html and its figures "
                                                           "(default RUN_DIR/report)."),
    target_sensitivity: Optional[float] = typer.Option(
        None, "--target-sensitivity", min=0.0, max=1.0,
        help="Show the report at the threshold that reaches this sensitivity on validation "
             "(default: the run's own threshold, chosen at training)."),
    all_slides: bool = typer.Option(False, "--all-slides", help="A heatmap for every test patient."),
    cache_dir: Optional[Path] = CacheOption,
    quiet: bool = QuietOption,
) -> None:
    """A self-contained report.html: metrics with intervals, threshold, calibration, curves,
    errors, Grad-CAM, per-patient table and whole-slide heatmaps."""
    from .report.report import write_report
    path = write_report(run_dir, data, out, target_sensitivity=target_sensitivity, all_slides=all_slides,
                        cache_dir=cache_dir, progress=not quiet)
    typer.echo(f"Wrote {path}; open it in a browser")


@app.command()
def serve(
    run_dir: Path = RunDirArgument,
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (default: this machine only)."),
    port: int = typer.Option(8000, "--port", min=1, max=65535),
    token: Optional[str] = typer.Option(None, "--token", envvar="HISTOCLASS_TOKEN",
                                        help="Every call but /health then needs 'Authorization: Bearer "
                                             "TOKEN' (or the page opened as /?token=TOKEN). Also read "
                                             "from $HISTOCLASS_TOKEN."),
    engine: Optional[str] = typer.Option(None, "--engine", help="What runs the model: keras or onnx "
                                         "(default: $HISTOCLASS_ENGINE, else keras)."),
) -> None:
    """A web page and HTTP API for the run: POST /predict, GET /model, /health, /docs."""
    try:
        from .serve.app import serve as run_server
    except ImportError as err:
        raise HistoclassError(f"serving needs packages that are not installed ({err.name}); "
                              "pip install 'histoclass[serve]'") from None
    from .inference.engines import DEFAULT_ENGINE
    from .inference.run import load_run
    engine = engine or os.environ.get("HISTOCLASS_ENGINE") or DEFAULT_ENGINE
    run_server(load_run(run_dir, engine=engine), host=host, port=port, token=token or None)


@app.command("export")
def export_command(
    run_dir: Path = RunDirArgument,
    fmt: str = typer.Option(..., "--format", help="onnx (one .onnx file) or saved_model (a TensorFlow SavedModel folder)."),
    out: Path = typer.Option(..., "--out", help="New file or folder; a JSON card is written beside it as OUT.card.json."),
    quiet: bool = QuietOption,
) -> None:
    """An inference-only model file: uint8 images in, calibrated probabilities out, checked
    against Run.predict, with a JSON card (class names, threshold, temperature, input size, SHA-256)."""
    from .export import export_run
    from .export.card import card_path
    path = export_run(run_dir, fmt, out, progress=not quiet)
    typer.echo(f"Wrote {path} and {card_path(path)}")


@app.command()
def synth(
    out: Path = typer.Argument(..., help="New folder for the synthetic IDC-style data."),
    patients: int = typer.Option(12, "--patients", help="How many patients (slides)."),
    seed: int = typer.Option(0, "--seed"),
    slide_scale: float = typer.Option(1.0, "--slide-scale", help="Slide side length factor (1.0: about 1,000 patches a patient)."),
    slides: bool = typer.Option(False, "--slides", help="Also write each patient's whole slide (pyramidal TIFF) "
                                                        "and its true tumour mask to OUT-slides/."),
    flat_glass: bool = typer.Option(False, "--flat-glass", help="With --slides: plain glass instead of glass as "
                                                                "scanners show it (uneven light, dust, a coverslip "
                                                                "edge)."),
    quiet: bool = QuietOption,
) -> None:
    """Synthetic IDC-style slides cut into 50x50 patches, in the Kaggle layout and names."""
    from .synth import generate_idc_dataset
    slides_dir = out.parent / f"{out.name}-slides" if slides else None
    summary = generate_idc_dataset(out, num_patients=patients, seed=seed, slide_scale=slide_scale,
                                   progress=not quiet, slides_dir=slides_dir,
                                   flat_glass=flat_glass)
    typer.echo(f"Wrote {summary.num_patches} patches ({summary.num_positive} malignant) of "
               f"{len(summary.patient_ids)} patients to {summary.out_dir}"
               + (f"; their whole slides and tumour masks to {slides_dir}" if slides else ""))


@app.command()
def slide(
    run_dir: Path = RunDirArgument,
    inputs: List[Path] = typer.Argument(..., help="Slide files (.svs, .ndpi, .mrxs, .scn, .tiff, .dcm, PNG, "
                                                  "JPEG...) or folders holding them."),
    out: Path = typer.Option(..., "--out", help="New folder: one folder per slide and index.html."),
    stride: Optional[int] = typer.Option(None, "--stride", help="Step between tiles in the model's pixels "
                                                                "(default: its input side; smaller overlaps)."),
    mpp: Optional[float] = typer.Option(None, "--mpp", help="µm/px of the model's input (default: the run's)."),
    slide_mpp: Optional[str] = typer.Option(None, "--slide-mpp", help="µm/px of slides that record none (or an "
                                            "implausible one): a number, or a CSV with columns slide,mpp."),
    min_tissue: Optional[float] = typer.Option(None, "--min-tissue", help="Share of a tile that must be tissue "
                                               "for it to be classified (default 0.2, measured on IDC)."),
    batch_size: int = typer.Option(256, "--batch-size", help="The model's batch, in tiles."),
    workers: Optional[int] = typer.Option(None, "--workers", help="Threads reading tiles (default 2); with "
                                          "--ray, model actors (default: as many as Ray's free CPUs or GPUs allow)."),
    ray: Optional[str] = typer.Option(None, "--ray", help="Run on Ray: 'auto' starts a local Ray, an "
                                                          "address (host:6379) joins a cluster."),
    truth: Optional[Path] = typer.Option(None, "--truth", help="Score against annotations: a GeoJSON file (one "
                                         "slide) or a folder of <slide file stem>.geojson, as QuPath exports them."),
    truth_class: Optional[str] = typer.Option(None, "--truth-class", help="The annotations' tumour class (default: "
                                              "Tumor, Malignant, ...; every feature when none is classified)."),
    neighbourhood: Optional[bool] = typer.Option(None, "--neighbourhood/--tiles-alone", help="Call each tile "
                                                 "from its probability smoothed with its neighbours' (at the run's "
                                                 "own threshold for it), or from its own alone (default: see "
                                                 "docs/slides.md)."),
    quiet: bool = QuietOption,
) -> None:
    """Runs the model over whole slides: tiles.csv, summary.json, heatmap.png, regions.geojson
    (for QuPath) per slide, and index.html. Exit code 1 when any slide failed (its row says why)."""
    if ray is not None:
        from .cluster.ray_slides import run_slides_on_ray
        summaries, throughput = run_slides_on_ray(run_dir, inputs, out, ray, mpp=mpp, slide_mpp=slide_mpp,
                                                  stride=stride, batch_size=batch_size, num_workers=workers,
                                                  progress=not quiet, min_tissue=min_tissue, truth=truth,
                                                  truth_class=truth_class, neighbourhood=neighbourhood)
        for line in throughput.summary("tiles").splitlines():
            log.info("%s", line)
    else:
        from .slides.pipeline import DEFAULT_WORKERS, run_slides
        summaries = run_slides(run_dir, inputs, out, mpp=mpp, slide_mpp=slide_mpp, stride=stride,
                               batch_size=batch_size, workers=DEFAULT_WORKERS if workers is None else workers,
                               progress=not quiet, min_tissue=min_tissue, truth=truth, truth_class=truth_class,
                               neighbourhood=neighbourhood)
    failed = [s for s in summaries if s["status"] != "ok"]
    for s in summaries:
        typer.echo(f"{printable(s['slide'])}: " + (
            f"{s['tiles_malignant']} of {s['tiles_classified']} classified tiles malignant, "
            f"{s['malignant_area_mm2']:.3f} mm²" + _qc_words(s) + _truth_words(s.get("truth")) if s["status"] == "ok"
            else f"failed: {printable(s['error'])}"))
    typer.echo(f"Wrote {out / 'index.html'}; open it in a browser")
    if failed:
        raise typer.Exit(1)


def _truth_words(truth: dict | None) -> str:
    if truth is None:
        return ""
    if "error" in truth:
        return f"; not scored: {printable(truth['error'])}"
    dice = "n/a" if truth["dice"] is None else f"{truth['dice']:.3f}"
    missed = ""
    if truth.get("dice_all") is not None and truth.get("coverage") is not None:
        missed = f"; counting missed tumour {truth['dice_all']:.3f}, coverage {100 * truth['coverage']:.0f} %"
    return f"; against the annotation Dice {dice} (tp {truth['tp']}, fp {truth['fp']}, fn {truth['fn']}{missed})"


def _qc_words(summary: dict) -> str:
    counts = summary.get("tiles_qc") or {}
    words = f"; not classified (QC): {', '.join(f'{r} {c}' for r, c in counts.items())}" if counts else ""
    if summary.get("out_of_focus"):
        return words + "; OUT OF FOCUS: rescan it in focus"
    return words + ("; QC WARNING" if summary.get("qc_warning") else "")


@app.command()
def rebuild(
    idc_root: Path = typer.Argument(..., help="A folder in the Kaggle IDC layout "
                                              "(<patient>/<0|1>/<patient>_idx5_x<X>_y<Y>_class<C>.png)."),
    out: Path = typer.Option(..., "--out", help="New folder for <patient>.tiff and <patient>.geojson."),
    all_patients: bool = typer.Option(False, "--all", help="Every patient, not only those whose patches "
                                                           "tile their tissue with both classes (complete slides)."),
    flat_glass: bool = typer.Option(False, "--flat-glass", help="Plain white glass around the tissue instead of "
                                                                "glass as scanners show it (uneven light, dust, "
                                                                "a coverslip edge)."),
    quiet: bool = QuietOption,
) -> None:
    """Whole slides from IDC patches laid at their coordinates (pyramidal TIFF at 4 µm/px, glass
    elsewhere) and the IDC annotation as GeoJSON ("Tumor"), for `histoclass slide --truth`."""
    from .slides.completeness import RULE
    from .slides.rebuild import rebuild_slides
    rebuilt = rebuild_slides(idc_root, out, all_patients=all_patients, progress=not quiet,
                             flat_glass=flat_glass)
    for r in rebuilt.slides:
        typer.echo(f"{r.patient_id}: {r.num_patches} patches ({r.num_malignant} malignant), "
                   f"{r.dimensions[0]} x {r.dimensions[1]} px -> {r.slide.name}, {r.annotation.name}"
                   + (f"; {len(r.skipped)} unreadable patch(es) left out" if r.skipped else ""))
    for s in rebuilt.skipped_patients:
        typer.echo(f"skipped {s.patient_id} ({s.num_patches} patches): {s.reason}")
    skipped = (f", skipped {len(rebuilt.skipped_patients)} patient(s) whose patches are not a whole slide "
               f"({RULE}; --all rebuilds them)") if rebuilt.skipped_patients else ""
    typer.echo(f"Wrote {len(rebuilt.slides)} slide(s) to {out}{skipped}; score a run on them with "
               f"`histoclass slide RUN {out} --out DIR --truth {out}`")



@app.command()
def demo(
    out: Path = typer.Option(Path("histoclass-demo"), "--out", help="Folder for the demo's data and run."),
    epochs: int = typer.Option(8, "--epochs"),
    quiet: bool = QuietOption,
) -> None:
    """Synthesise data, train the original CNN, evaluate it and write the report: a few minutes."""
    from .demo import run_demo
    run_demo(out, num_epochs=epochs, progress=not quiet)


# Handlers this command added to the root logger: removed when it returns, so that calling
# `main` again in one process (a notebook, the tests) neither doubles every line nor writes to a
# stream or file of an earlier call.
_HANDLERS: list[logging.Handler] = []


def _add_handler(handler: logging.Handler) -> None:
    handler.addFilter(escape_log_args)
    logging.getLogger().addHandler(handler)
    _HANDLERS.append(handler)


def _remove_handlers() -> None:
    while _HANDLERS:
        handler = _HANDLERS.pop()
        logging.getLogger().removeHandler(handler)
        handler.close()


def _log_to_file(path: Path) -> None:
    """The run's own log keeps every line, the skipped files' list included."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8", errors="backslashreplace")
    handler.setLevel(logging.DEBUG)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    _add_handler(handler)


def _configure_logging(verbose: bool) -> None:
    root = logging.getLogger()
    root.setLevel(logging.DEBUG)
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(logging.DEBUG if verbose else logging.INFO)
    console.setFormatter(logging.Formatter("%(message)s"))
    _add_handler(console)
    for noisy in ("matplotlib", "PIL", "h5py"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # Retracing notices, and JAX's "Unable to initialize backend 'tpu'" on a GPU machine (its
    # xla_bridge logs each platform it tries): not the user's concern.
    for noisy in ("tensorflow", "absl", "jax._src.xla_bridge"):
        logging.getLogger(noisy).setLevel(logging.ERROR)


def _import_backend_quietly() -> None:
    """TensorFlow prints C++ start-up chatter (oneDNN, absl) on import that no setting
    silences; it goes to /dev/null here. Python errors still surface as exceptions."""
    if os.environ.get("KERAS_BACKEND", "tensorflow") != "tensorflow" or "tensorflow" in sys.modules:
        return
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        import tensorflow  # noqa: F401
    except ImportError:
        pass  # keras reports a missing backend itself, with the stream restored
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    finally:
        _remove_handlers()


def _main(argv: list[str] | None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    argv = list(sys.argv[1:] if argv is None else argv)
    verbose = "--verbose" in argv
    if verbose:
        argv.remove("--verbose")
    _configure_logging(verbose)
    if argv and argv[0] in ("train", "cv", "evaluate", "predict", "demo", "report", "slide", "serve", "export"):
        _import_backend_quietly()
    try:
        # Typer turns Ctrl-C into exit code 130, returned rather than raised here.
        code = app(args=argv, prog_name="histoclass", standalone_mode=False)
    except HistoclassError as err:
        print(f"error: {printable(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except typer.Abort:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        # Usage errors (unknown option, missing argument) of the click inside Typer, which may be
        # Typer's own copy: known by their interface rather than a class from a package that
        # need not be installed. They print the usage and exit 2.
        show, exit_code = getattr(err, "show", None), getattr(err, "exit_code", None)
        if callable(show) and isinstance(exit_code, int):
            show()
            return exit_code
        raise
    if code == 130:
        print("interrupted", file=sys.stderr)
    return code if isinstance(code, int) else 0


if __name__ == "__main__":
    sys.exit(main())
