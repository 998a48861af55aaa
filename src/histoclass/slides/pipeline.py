"""`histoclass slide`: a run's model over whole slides, streamed, with bounded memory.

    summaries = run_slides("runs/idc", ["slides/"], "slide-results")

For each slide: open it (`reader`), plan its tiles on tissue at the model's µm/px (`tiling`),
read them in chunks on `workers` threads while the model classifies the previous chunk
(`Run.model_probabilities`, then `Run.calibrated` once, labels at `Run.threshold`), measure
each chunk's quality (`qc.measure_tiles`: ink, sharpness), and write its folder (`outputs`),
where the tiles that fail QC (`qc.tile_qc`, against the slide's own sharpness and the run's
training patches' in focus.json) are left unclassified with their reason. At most two chunks of
tiles are in memory, so memory does not grow with the slide.

A slide that cannot be used (not a slide, damaged, no resolution, no tissue, ...) gets a row
saying why and the others go on. Each slide's folder is written under a temporary name and
renamed when complete, so a folder that exists is whole.

The job's steps are shared with other engines (`cluster.ray_slides` reads the tiles in Ray tasks
and classifies them on an actor pool); only "the probabilities of a plan's tiles" differs:

    paths, mpps = check_inputs(inputs, out_dir, slide_mpp, batch_size, workers, min_tissue)
    model_mpp = check_model(run, mpp, stride)        # run: anything with folder, config, data, image_size
    plan, facts = plan_slide_file(path, run.folder, model_mpp, run.image_size, stride, mpps.get(path),
                                  min_tissue)
    ... prob, failed, measures = <the engine's probabilities and qc.measure_tiles of plan's tiles> ...
    summary = slide_folder(out_dir, path, lambda folder: finish_slide(folder, plan, prob, failed,
                                                                      run.threshold, facts, measures))
    finish_job(out_dir, summaries, run.folder)
"""
from __future__ import annotations

import csv
import logging
import os
import shutil
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..config import IDC_MICRONS_PER_PIXEL, IDC_PATCH_SIZE
from ..errors import HistoclassError
from ..fileio import printable
from ..progress import progress_bar
from .outputs import write_failed_slide, write_index, write_slide_outputs
from ..runs.folder import read_focus, read_neighbourhood
from .qc import MEASURES as QC_MEASURES, focus_threshold, measure_tiles, tile_qc
from .reader import MPP_RANGE, Slide, SlideError, find_slides, open_slide, plausible_mpp
from .tiling import TilePlan, describe_resolution, plan_tiles, read_tiles
from .truth import TruthError, TruthOption, truth_option

log = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 256
DEFAULT_WORKERS = 2
TILES_PER_CALL = 1024  # tiles per model call: 7.7 MB of uint8 at 50 px
USE_NEIGHBOURHOOD = True  # calls from the smoothed probabilities where the run has a neighbourhood


def resolve_model_mpp(run, mpp: float | None = None) -> float:
    """µm/px of the model's input: `mpp` if given, else the run's own (`train --mpp`), else the
    Kaggle IDC patches' for a run trained on that layout."""
    if mpp is not None:
        return _positive_number(mpp, "--mpp")
    if getattr(run.config, "mpp", None):
        return float(run.config.mpp)
    if run.data.get("layout") == "idc":  # a run from before `train --mpp`: the patches' own scale
        return IDC_MICRONS_PER_PIXEL * IDC_PATCH_SIZE / run.image_size
    raise HistoclassError(
        f"the run {printable(run.folder)} does not record the µm/px its model was trained at; give it "
        f"with --mpp (the µm/px of the training images after resizing to {run.image_size} px), or "
        "retrain with `histoclass train --mpp M`")


def predict_plan(run, slide: Slide, plan: TilePlan, batch_size: int = DEFAULT_BATCH_SIZE,
                 workers: int = DEFAULT_WORKERS, progress: bool = True, desc: str = "slide",
                 ) -> tuple[np.ndarray, dict[int, str]]:
    """Calibrated prob_malignant of every tile of `plan` (NaN where a tile failed) and
    {tile index: why} for the failed ones: `classify_plan` without the QC measures."""
    prob, failed, _ = classify_plan(run, slide, plan, batch_size, workers, progress, desc)
    return prob, failed


STAIN_TILES = 64  # tissue tiles of a slide whose pooled pixels its stain transform is fitted on


def fit_slide_stain(run, slide: Slide, plan: TilePlan, seed: int = 0):
    """The slide's stain transform (`stain.context`), fitted on STAIN_TILES of its tiles (the
    most tissue-filled half, seeded), or None for a run without stain normalization or a slide
    with too few tiles (then each tile is normalized on its own). For an ensemble whose members
    normalize each to their own reference, a list: one transform per member."""
    from ..stain.context import MIN_CONTEXT_TILES
    normalizer = getattr(run, "stain", None)
    if normalizer is None or plan.num_tiles < MIN_CONTEXT_TILES:
        return None
    fullest = np.argsort(-np.asarray(plan.tissue_fraction), kind="stable")[:max(STAIN_TILES, plan.num_tiles // 2)]
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(fullest, min(STAIN_TILES, len(fullest)), replace=False))
    tiles, failed = read_tiles(slide, plan, chosen)
    read = np.array([i not in failed for i in chosen.tolist()], dtype=bool)
    if read.sum() < MIN_CONTEXT_TILES:
        return None
    return run.fit_stain_group(tiles[read])


def classify_plan(run, slide: Slide, plan: TilePlan, batch_size: int = DEFAULT_BATCH_SIZE,
                  workers: int = DEFAULT_WORKERS, progress: bool = True, desc: str = "slide",
                  stain_transform=None) -> tuple[np.ndarray, dict[int, str], np.ndarray]:
    """Calibrated prob_malignant of every tile of `plan` (NaN where a tile failed),
    {tile index: why} for the failed ones, and each tile's QC measures (`qc.measure_tiles`).

    Tiles go to the model in chunks of TILES_PER_CALL (a Keras call has a fixed cost worth
    spreading); each chunk is read by `workers` threads while the model classifies the one
    before, so at most two chunks are in memory. `stain_transform`: the slide's (see
    `fit_slide_stain`), applied to every tile before the model; None: per tile."""
    raw = np.full(plan.num_tiles, np.nan)
    measures = np.zeros((plan.num_tiles, len(QC_MEASURES)), np.float32)
    failed: dict[int, str] = {}
    # Whole model batches per call: every call but the last has the same shapes, so the
    # backend traces its step once.
    per_call = max(1, TILES_PER_CALL // batch_size) * batch_size
    chunks = (np.arange(start, min(start + per_call, plan.num_tiles)) for start in range(0, plan.num_tiles, per_call))
    with ThreadPoolExecutor(workers, thread_name_prefix="slide-reader") as pool, \
            progress_bar(plan.num_tiles, desc, "tile", enabled=progress) as bar:
        pending = deque()

        def submit_next() -> None:
            chunk = next(chunks, None)
            if chunk is not None:
                parts = [part for part in np.array_split(chunk, workers) if len(part)]
                pending.append((chunk, [pool.submit(read_tiles, slide, plan, part) for part in parts]))

        submit_next()
        while pending:
            chunk, futures = pending.popleft()
            results = [future.result() for future in futures]
            submit_next()  # read the next chunk while this one is classified
            batch = np.concatenate([tiles for tiles, _ in results])
            chunk_failed = {i: why for _, part_failed in results for i, why in part_failed.items()}
            failed.update(chunk_failed)
            ok = np.array([i not in chunk_failed for i in chunk.tolist()], dtype=bool)
            if ok.any():
                raw[chunk[ok]] = run.model_probabilities(batch[ok] if not ok.all() else batch, batch_size=batch_size,
                                                         stain_transform=stain_transform)
                measures[chunk] = measure_tiles(batch)
            bar.update(len(chunk))
    check_some_tiles_read(plan, raw, failed)
    prob = np.full(plan.num_tiles, np.nan)
    ok = np.isfinite(raw)
    prob[ok] = run.calibrated(raw[ok])
    return prob, failed, measures


def check_some_tiles_read(plan: TilePlan, prob: np.ndarray, failed: dict[int, str]) -> None:
    """Raises SlideError when not one tile of the plan got a probability."""
    if not np.isfinite(prob).any():
        first = next(iter(failed.values()), "unknown")
        raise SlideError(f"none of its {plan.num_tiles} tiles on tissue could be read ({first})")


def slide_facts(path: Path, run_folder, slide: Slide | None = None, plan: TilePlan | None = None) -> dict:
    """The first keys of a slide's summary: its name, path and run, then (once planned) what
    it is and how it was tiled."""
    facts = {"slide": path.name, "folder": path.name, "path": str(path), "run": str(run_folder)}
    if slide is not None and plan is not None:
        facts.update({
            "vendor": slide.vendor, "width": slide.dimensions[0], "height": slide.dimensions[1],
            "levels": slide.level_count, "slide_mpp": plan.slide_mpp, "slide_mpp_source": slide.mpp_source,
            "model_mpp": plan.model_mpp, "level_read": plan.level, "level_downsample": plan.level_downsample,
            "tile_side": plan.tile_side, "read_side": plan.read_side, "stride": plan.stride})
    return facts


def plan_slide_file(path: str | os.PathLike, run_folder, model_mpp: float, image_size: int,
                    stride: int | None = None, slide_mpp: float | None = None,
                    min_tissue: float | None = None) -> tuple[TilePlan, dict]:
    """Opens a slide, plans its tiles and closes it: the plan and the slide's facts (for an
    engine that reads the tiles elsewhere). Raises SlideError when the slide cannot be used."""
    path = Path(path)
    with open_slide(path, slide_mpp) as slide:
        plan = plan_tiles(slide, model_mpp, image_size, stride, min_tissue)
        log.info("%s: %s; %d tiles on tissue", path.name, describe_resolution(plan), plan.num_tiles)
        return plan, slide_facts(path, run_folder, slide, plan)


def finish_slide(folder: Path, plan: TilePlan, prob: np.ndarray, failed: dict[int, str], threshold: float,
                 facts: dict, measures: np.ndarray | None = None, truth: TruthOption | None = None,
                 stain_transform=None, neighbourhood: bool | None = None) -> dict:
    """Writes a slide's outputs from the calibrated probabilities of its plan's tiles (NaN
    where a tile failed; `failed` says why) and their QC measures (tiles that fail QC are left
    unclassified with their reason; None: no QC), scored against its annotation when `truth` is
    given; raises SlideError when no tile could be read. The run (`facts["run"]`) gives the
    focus reference (focus.json) and the neighbourhood (calibration.json), used for the calls
    when `neighbourhood` (default USE_NEIGHBOURHOOD) and the run has one."""
    check_some_tiles_read(plan, prob, failed)
    use = USE_NEIGHBOURHOOD if neighbourhood is None else neighbourhood
    smoothing = read_neighbourhood(facts["run"]) if use and "run" in facts else None
    focus = read_focus(facts["run"]) if "run" in facts else None
    facts = {**facts, "focus_reference": focus_words(focus)}
    qc = None if measures is None else tile_qc(measures, np.isfinite(prob), focus)
    annotation = None
    if truth is not None:
        try:
            annotation = truth.for_slide(facts["path"])
        except TruthError as err:
            log.warning("%s: %s", facts["slide"], err)
            annotation = err
    return write_slide_outputs(folder, plan, prob, failed, threshold, facts, qc, annotation, stain_transform,
                               smoothing)


def focus_words(focus: dict | None) -> str:
    """summary.json's `focus_reference`: what a tile's blur was judged against."""
    threshold = focus_threshold(focus)
    if threshold is None:
        return ("the slide alone: the run has no focus.json (trained before it was stored), so a slide wholly "
                "out of focus is not caught; retrain to store it")
    return (f"the slide, and the run's training patches (focus.json): sharpness below {threshold:.4g} is blurred "
            "on any slide")


def analyse_slide(run, path: Path, folder: Path, model_mpp: float, slide_mpp: float | None = None,
                  stride: int | None = None, batch_size: int = DEFAULT_BATCH_SIZE,
                  workers: int = DEFAULT_WORKERS, progress: bool = True, min_tissue: float | None = None,
                  truth: TruthOption | None = None, neighbourhood: bool | None = None) -> dict:
    """Runs the model over one slide and writes its outputs into `folder`; returns its summary.
    Raises SlideError when the slide cannot be used."""
    started = time.perf_counter()
    with open_slide(path, slide_mpp) as slide:
        plan = plan_tiles(slide, model_mpp, run.image_size, stride, min_tissue)
        log.info("%s: %s; %d tiles on tissue", path.name, describe_resolution(plan), plan.num_tiles)
        stain = fit_slide_stain(run, slide, plan)
        prob, failed, measures = classify_plan(run, slide, plan, batch_size, workers, progress,
                                               desc=_short(path.name), stain_transform=stain)
        facts = slide_facts(path, run.folder, slide, plan)
    if getattr(run, "stain", None) is not None:
        facts["stain"] = (stain_record(stain, STAIN_TILES) if stain is not None else
                          {"method": run.stain.method, "per_tile": True,
                           "why": "too few tissue tiles to fit the slide's stain: each tile was normalized on its own"})
    facts["seconds"] = round(time.perf_counter() - started, 3)
    return finish_slide(folder, plan, prob, failed, run.threshold, facts, measures, truth, stain, neighbourhood)


def stain_record(transform, tiles: int) -> dict:
    """summary.json's `stain`: the slide's fitted transform and what it was fitted on."""
    if isinstance(transform, (list, tuple)):  # an ensemble's members, each to its own reference
        return {**transform[0].record(), "members": [t.record() for t in transform], "fitted_on_tiles": tiles,
                "per_tile": False}
    return {**transform.record(), "fitted_on_tiles": tiles, "per_tile": False}


def check_inputs(inputs: Sequence[str | os.PathLike], out_dir: Path, slide_mpp=None,
                 batch_size: int = DEFAULT_BATCH_SIZE, workers: int = DEFAULT_WORKERS,
                 min_tissue: float | None = None) -> tuple[list[Path], dict[Path, float]]:
    """The slides of a job and the --slide-mpp of each that has one (see `slide_mpps`),
    after checking its options; nothing is written."""
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise HistoclassError(f"the output folder {printable(out_dir)} already exists; choose a new --out "
                              "folder (results are never overwritten)")
    if min_tissue is not None and not 0 < float(min_tissue) <= 1:
        raise HistoclassError(f"--min-tissue must be a share of a tile in (0, 1], got {min_tissue}")
    if batch_size < 1 or workers < 1:
        raise HistoclassError(f"--batch-size and --workers must be at least 1 (got {batch_size} and {workers})")
    paths = find_slides(inputs)
    if not paths:
        raise HistoclassError(f"no slides found in {', '.join(printable(p) for p in inputs)}; give slide files "
                              "(.svs, .ndpi, .mrxs, .scn, .tiff, .dcm, ...) or images, or folders holding them")
    _check_unique_names(paths)
    return paths, slide_mpps(paths, slide_mpp)


def slide_mpps(paths: Sequence[Path], slide_mpp) -> dict[Path, float]:
    """{slide: µm/px} from --slide-mpp: one number for every slide, or a CSV file with columns
    `slide,mpp` (a slide by its file name, its name without extension, or its path as given),
    for an archive of mixed scanners. Used where a file records no resolution or an
    implausible one."""
    if slide_mpp is None:
        return {}
    if isinstance(slide_mpp, (int, float)):
        return dict.fromkeys(paths, _plausible(slide_mpp, "--slide-mpp"))
    text = str(slide_mpp)
    try:
        return dict.fromkeys(paths, _plausible(float(text), "--slide-mpp"))
    except ValueError:
        pass
    table = read_mpp_table(Path(text))
    found = {}
    for path in paths:
        for key in (str(path), path.name, path.stem):
            if key in table:
                found[path] = table[key]
                break
    unused = set(table) - {k for p in found for k in (str(p), p.name, p.stem)}
    if unused:
        log.warning("--slide-mpp %s: %d row(s) name no slide of this job (e.g. %s)", printable(text), len(unused),
                    printable(sorted(unused)[0]))
    return found


def read_mpp_table(path: Path) -> dict[str, float]:
    """The rows of a `slide,mpp` CSV; HistoclassError naming the bad row otherwise."""
    if not path.is_file():
        raise HistoclassError(f"--slide-mpp {printable(path)} is neither a number of µm per pixel nor a CSV "
                              "file (columns slide,mpp)")
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.DictReader(handle))
            columns = set(rows[0]) if rows else set()
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise HistoclassError(f"--slide-mpp {printable(path)} cannot be read as a CSV ({printable(err)})") from err
    if not {"slide", "mpp"} <= columns:
        raise HistoclassError(f"--slide-mpp {printable(path)} needs a header with the columns slide,mpp "
                              f"(one row per slide), found {sorted(c for c in columns if c) or 'no rows'}")
    table = {}
    for number, row in enumerate(rows, start=2):
        try:
            table[(row["slide"] or "").strip()] = _plausible(float(row["mpp"]), "--slide-mpp")
        except (TypeError, ValueError, HistoclassError):
            raise HistoclassError(f"--slide-mpp {printable(path)} line {number}: mpp {printable(row['mpp'])} "
                                  f"is not a µm/px between {MPP_RANGE[0]:g} and {MPP_RANGE[1]:g}") from None
    return table


def check_model(run, mpp: float | None = None, stride: int | None = None) -> float:
    """The model's µm/px (see resolve_model_mpp), after checking --stride against its input."""
    model_mpp = resolve_model_mpp(run, mpp)
    if stride is not None and not 1 <= stride <= run.image_size:
        raise HistoclassError(f"--stride must be between 1 and the model's input side {run.image_size} "
                              f"(model pixels), got {stride}")
    return model_mpp


def run_slides(run, inputs: Sequence[str | os.PathLike], out_dir: str | os.PathLike, *,
               mpp: float | None = None, slide_mpp: float | str | os.PathLike | None = None,
               stride: int | None = None, batch_size: int = DEFAULT_BATCH_SIZE, workers: int = DEFAULT_WORKERS,
               progress: bool = True, min_tissue: float | None = None, truth: str | os.PathLike | None = None,
               truth_class: str | None = None, neighbourhood: bool | None = None) -> list[dict]:
    """Analyses every slide in `inputs` (files, or folders searched at their top level) into
    `out_dir` (new or empty): a folder per slide and index.html. `run` is a Run or a run folder.
    `slide_mpp`: a number, or a `slide,mpp` CSV (see `slide_mpps`); `min_tissue`: the share of
    a tile that must be tissue (default `tiling.MIN_TISSUE_FRACTION`); `truth`: a GeoJSON
    annotation (one slide) or a folder of `<slide file stem>.geojson` to score against (see
    `truth`); `neighbourhood`: call tiles from their probabilities smoothed with their
    neighbours' where the run has a neighbourhood threshold (default USE_NEIGHBOURHOOD). Returns one summary per slide, "status" "ok" or "failed" (with "error")."""
    out_dir = Path(out_dir)
    paths, mpps = check_inputs(inputs, out_dir, slide_mpp, batch_size, workers, min_tissue)
    annotations = truth_option(truth, truth_class, paths)
    if not hasattr(run, "model_probabilities"):
        from ..inference.run import load_run
        run = load_run(run)
    model_mpp = check_model(run, mpp, stride)
    out_dir.mkdir(parents=True, exist_ok=True)
    summaries = []
    for path in paths:
        summaries.append(slide_folder(out_dir, path, lambda folder: analyse_slide(
            run, path, folder, model_mpp, mpps.get(path), stride, batch_size, workers, progress, min_tissue,
            annotations, neighbourhood)))
    finish_job(out_dir, summaries, run.folder)
    return summaries


def finish_job(out_dir: Path, summaries: list[dict], run_folder) -> Path:
    """index.html and slides.json over the job's slides (in the order given)."""
    index = write_index(out_dir, summaries, str(run_folder))
    failed = [s for s in summaries if s["status"] != "ok"]
    log.info("wrote %s: %d slide(s) analysed, %d failed", index, len(summaries) - len(failed), len(failed))
    return index


def slide_folder(out_dir: Path, path: Path, analyse: Callable[[Path], dict]) -> dict:
    """Writes one slide's folder in `out_dir`: `analyse(folder)` writes its outputs and returns
    the summary; when it raises (SlideError, or anything unexpected: one bad slide never stops
    the others) the folder holds a summary saying why. A HistoclassError (the job's own
    problem) stops the job. The folder appears, whole, under the slide's name."""
    final = out_dir / path.name
    partial = out_dir / f".{path.name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    try:
        try:
            summary = analyse(partial)
        except SlideError as err:
            summary = failed_slide(partial, path, str(err))
        except HistoclassError:
            raise
        except Exception as err:  # one bad slide never stops the others
            log.debug("slide %s failed", path, exc_info=True)
            summary = failed_slide(partial, path, unexpected(err))
        os.replace(partial, final)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return summary


def unexpected(err: BaseException) -> str:
    return f"unexpected error: {type(err).__name__}: {printable(err)}"


def failed_slide(folder: Path, path: Path, reason: str) -> dict:
    log.warning("%s: %s", path.name, reason)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return write_failed_slide(folder, {"slide": path.name, "folder": path.name, "path": str(path)}, reason)


def _check_unique_names(paths: list[Path]) -> None:
    seen: dict[str, Path] = {}
    for path in paths:
        if path.name in seen:
            raise HistoclassError(f"two slides are named {printable(path.name)} ({printable(seen[path.name])} and "
                                  f"{printable(path)}); each gets a folder named after it, so rename one or "
                                  "run them separately")
        seen[path.name] = path


def _positive_number(value, option: str) -> float:
    value = float(value)
    if not np.isfinite(value) or value <= 0:
        raise HistoclassError(f"{option} must be a positive number of µm per pixel, got {value}")
    return value


def _plausible(value: float, option: str) -> float:
    value = _positive_number(value, option)
    if not plausible_mpp(value):
        raise HistoclassError(f"{option} {value:g} µm/px is implausible for a scan; give a value between "
                              f"{MPP_RANGE[0]:g} and {MPP_RANGE[1]:g} (0.25 for 40x, 0.5 for 20x)")
    return value


def _short(name: str, width: int = 28) -> str:
    name = printable(name)
    return name if len(name) <= width else name[:width - 1] + "…"
