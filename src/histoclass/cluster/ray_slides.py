"""`histoclass slide --ray`: slides planned and their tiles read in Ray tasks, classified by the
actor pool of `ray_engine`, written per slide by the slides package's own writer.

    summaries, throughput = run_slides_on_ray("runs/idc", ["slides/"], "out", "auto")

The steps are the local path's (`slides.pipeline`): the same checks, `plan_slide_file` (one
Ray task per slide, opening the slide by its path), `tiling.read_tiles` (one Ray task per batch of
a slide's tiles, opening the slide itself, with their `qc.measure_tiles`),
`ray_engine.run_probabilities` (the run's own `model_probabilities`, `calibrated`, `labels` on
each actor; the QC measures pass through), then `finish_slide` (QC against the slide's own) and
`slide_folder` on this driver as soon as a slide's last tile is in: the same files and numbers.

The plans' thumbnails stay in Ray's object store until their slide is written; the driver holds
only the probabilities of slides still in flight. The slides must be readable at the same path
on every node (a shared file system).
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import HistoclassError
from ..progress import progress_bar
from ..runs.folder import Calibration, read_calibration, read_config
from ..slides.pipeline import (DEFAULT_BATCH_SIZE, STAIN_TILES, check_inputs, check_model, finish_job,
                               finish_slide, fit_slide_stain, plan_slide_file, slide_folder, stain_record,
                               unexpected)
from ..slides.qc import MEASURES as QC_MEASURES, measure_tiles
from ..slides.reader import SlideError, open_slide
from ..slides.tiling import read_tiles
from ..slides.truth import TruthOption, truth_option
from ..stain.context import StainNormalizer, read_reference
from .ray_engine import Throughput, plan_pool, ray_session, run_probabilities

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunFacts:
    """What the driver needs of a run without loading its model: the actors load that."""

    folder: Path
    config: Any
    data: dict
    calibration: Calibration

    @property
    def image_size(self) -> int:
        return self.config.image_size

    @property
    def threshold(self) -> float:
        return self.calibration.threshold


def read_run_facts(folder: str | os.PathLike) -> RunFacts:
    folder = Path(folder)
    config, data = read_config(folder)
    return RunFacts(folder, config, data, read_calibration(folder))


# ---- Ray tasks ----------------------------------------------------------------------------

def plan_task(path: str, run_folder: str, model_mpp: float, image_size: int, stride, slide_mpp, min_tissue=None):
    """Plans one slide: (outcome, plan for the readers, whole plan). outcome is
    {"facts", "num_tiles", "seconds"} or {"error"} ({"stop"} for the job's own problem)."""
    started = time.perf_counter()
    try:
        plan, facts = plan_slide_file(path, run_folder, model_mpp, image_size, stride, slide_mpp, min_tissue)
    except SlideError as err:
        return {"error": str(err)}, None, None
    except HistoclassError as err:
        return {"stop": str(err)}, None, None
    except Exception as err:  # one bad slide never stops the others
        return {"error": unexpected(err)}, None, None
    # The readers need the tiles' places, not the thumbnail and tissue mask (the writer's).
    readers = replace(plan, thumbnail=np.zeros((1, 1, 3), np.uint8), tissue=np.zeros((1, 1), bool))
    outcome = {"facts": facts, "num_tiles": plan.num_tiles, "seconds": time.perf_counter() - started,
               "stain": None}
    reference = read_reference(run_folder)
    if reference is not None:  # the slide's stain, fitted here as `slide` does; the readers apply it
        try:
            with open_slide(path, slide_mpp) as handle:
                normalizer = StainNormalizer(reference)
                stand_in = SimpleNamespace(stain=normalizer, fit_stain_group=normalizer.fit_group)
                stain = fit_slide_stain(stand_in, handle, plan)
        except Exception as err:  # noqa: BLE001 - one bad slide never stops the others
            return {"error": unexpected(err)}, None, None
        outcome["stain"] = stain
        facts["stain"] = (stain_record(stain, STAIN_TILES) if stain is not None else
                          {"method": reference.method, "per_tile": True,
                           "why": "too few tissue tiles to fit the slide's stain: each tile was normalized on its own"})
    outcome["seconds"] = time.perf_counter() - started
    return outcome, readers, plan


def read_task(batch: dict[str, np.ndarray], plans: list, first_keys: np.ndarray,
              stains: list | None = None) -> dict[str, np.ndarray]:
    """A Ray read task: rows (slide, start, stop) to the uint8 tiles of those slices of the
    slides' plans and their QC measures, one output row per tile (key: the tile's number over
    the whole job). `stains`: each slide's stain transform (None: none, or per tile by the
    model's actor); the tiles leave normalized, marked `stain_normalized`."""
    import ray
    keys, images, errors, measures, normalized = [], [], [], [], []
    for slide, start, stop in zip(batch["slide"], batch["start"], batch["stop"]):
        plan = ray.get(plans[int(slide)])
        indices = np.arange(int(start), int(stop))
        try:
            with open_slide(plan.slide_path, plan.slide_mpp) as handle:
                tiles, failed = read_tiles(handle, plan, indices)
        except Exception as err:  # the slide was planned but cannot be opened now: its tiles fail
            why = f"the slide could not be opened ({type(err).__name__}: {err})"
            tiles, failed = np.zeros((len(indices), plan.image_size, plan.image_size, 3), np.uint8), \
                {int(i): why for i in indices}
        keys.append(first_keys[int(slide)] + indices)
        measures.append(measure_tiles(tiles))  # QC on the tiles as scanned, as `slide` measures them
        stain = stains[int(slide)] if stains else None
        images.append(tiles if stain is None else stain.apply(tiles))
        normalized.extend([stain is not None] * len(indices))
        errors.extend(failed.get(int(i), "") for i in indices)
    return {"key": np.concatenate(keys), "image": np.concatenate(images), "error": np.array(errors, dtype=object),
            "qc": np.concatenate(measures), "stain_normalized": np.array(normalized, dtype=bool)}


# ---- the job ------------------------------------------------------------------------------

@dataclass
class _InFlight:
    """A planned slide whose tiles are being classified."""

    path: Path
    facts: dict
    whole_plan: Any  # ObjectRef of the plan with its thumbnail
    stain: Any  # the slide's stain transform, or None
    plan_seconds: float
    prob: np.ndarray
    measures: np.ndarray
    failed: dict
    remaining: int
    first_result: float | None = None


def run_slides_on_ray(run_folder: str | os.PathLike, inputs: Sequence[str | os.PathLike],
                      out_dir: str | os.PathLike, address: str, *, mpp: float | None = None,
                      slide_mpp: float | None = None, stride: int | None = None,
                      batch_size: int = DEFAULT_BATCH_SIZE, num_workers: int | None = None,
                      progress: bool = False, on_batch: Callable[[dict], None] | None = None,
                      min_tissue: float | None = None, truth: str | os.PathLike | None = None,
                      truth_class: str | None = None, neighbourhood: bool | None = None,
                      ) -> tuple[list[dict], Throughput]:
    """`slides.pipeline.run_slides` on Ray: the same folders, files and numbers. `address`:
    "auto" (a local Ray) or a cluster's address; `num_workers` model actors (default: as many
    as Ray's free CPUs or GPUs allow). `on_batch` sees each result batch. Returns one summary
    per slide (in the order of the inputs) and the throughput per worker."""
    out_dir = Path(out_dir)
    paths, mpps = check_inputs(inputs, out_dir, slide_mpp, batch_size, 1 if num_workers is None else num_workers,
                               min_tissue)
    annotations = truth_option(truth, truth_class, paths)
    run = read_run_facts(run_folder)  # a bad run folder fails here, before Ray starts
    model_mpp = check_model(run, mpp, stride)
    out_dir.mkdir(parents=True, exist_ok=True)
    summaries: list[dict | None] = [None] * len(paths)
    throughput = Throughput()
    with ray_session(address), \
            progress_bar(len(paths), "slides (Ray)", "slide", enabled=progress, position=0) as slide_bar:
        import ray
        import ray.data
        pool = plan_pool(ray.available_resources(), num_workers)
        log.info("Ray: %s", pool.describe())
        planner = ray.remote(num_cpus=pool.read_cpus, num_returns=3)(plan_task)
        planned = [planner.remote(str(path), str(run.folder), model_mpp, run.image_size, stride, mpps.get(path),
                                  min_tissue) for path in paths]
        outcomes = ray.get([refs[0] for refs in planned])
        flights: dict[int, _InFlight] = {}
        for i, (path, outcome) in enumerate(zip(paths, outcomes)):
            if "stop" in outcome:
                raise HistoclassError(outcome["stop"])
            if "error" in outcome:
                summaries[i] = slide_folder(out_dir, path, _raise(SlideError(outcome["error"])))
                slide_bar.update(1)
                continue
            n = outcome["num_tiles"]
            flights[i] = _InFlight(path, outcome["facts"], planned[i][2], outcome["stain"], outcome["seconds"],
                                   np.full(n, np.nan),
                                   np.zeros((n, len(QC_MEASURES)), np.float32), {}, n)
        if flights:
            slides = sorted(flights)
            first_keys = np.zeros(len(paths), np.int64)
            first_keys[slides] = np.cumsum([0] + [flights[i].remaining for i in slides[:-1]])
            total = int(sum(flights[i].remaining for i in slides))
            items = [{"slide": i, "start": start, "stop": min(start + batch_size, flights[i].remaining)}
                     for i in slides for start in range(0, flights[i].remaining, batch_size)]
            # One block per model batch: a read task reads it, an actor classifies it, and a batch
            # retried after a worker's death is that small.
            dataset = ray.data.from_items(items, override_num_blocks=len(items))
            dataset = dataset.map_batches(
                read_task, fn_kwargs={"plans": [planned[i][1] for i in range(len(paths))], "first_keys": first_keys,
                                      "stains": [flights[i].stain if i in flights else None
                                                 for i in range(len(paths))]},
                batch_size=1, batch_format="numpy", num_cpus=pool.read_cpus)
            key_slides = np.array(slides)
            key_starts = first_keys[slides]
            received = 0
            with progress_bar(total, "tiles (Ray)", "tile", enabled=progress, position=1) as tile_bar:
                for batch in run_probabilities(dataset, run.folder, pool, batch_size=batch_size):
                    keys = batch["key"].astype(np.int64)
                    owners = key_slides[np.searchsorted(key_starts, keys, side="right") - 1]
                    now = time.perf_counter()
                    for owner in np.unique(owners):
                        mine = owners == owner
                        flight = flights[int(owner)]
                        local = keys[mine] - first_keys[owner]
                        flight.prob[local] = batch["prob_malignant"][mine]
                        flight.measures[local] = batch["qc"][mine]
                        for index, error in zip(local.tolist(), batch["error"][mine]):
                            if error:
                                flight.failed[index] = str(error)
                        flight.remaining -= int(mine.sum())
                        flight.first_result = flight.first_result or now
                        if flight.remaining == 0:
                            summaries[int(owner)] = _write(out_dir, flights.pop(int(owner)), run.threshold,
                                                             annotations, neighbourhood)
                            slide_bar.update(1)
                    throughput.add(batch)
                    tile_bar.update(len(keys))
                    received += len(keys)
                    if on_batch is not None:
                        on_batch(batch)
            if flights:
                raise HistoclassError(f"Ray returned {received} of {total} tiles ({len(flights)} slide(s) "
                                      "incomplete); run the job again")
    finish_job(out_dir, summaries, run.folder)
    return summaries, throughput


def _write(out_dir: Path, flight: _InFlight, threshold: float, truth: TruthOption | None,
           neighbourhood: bool | None = None) -> dict:
    import ray
    plan = ray.get(flight.whole_plan)
    seconds = flight.plan_seconds + time.perf_counter() - (flight.first_result or time.perf_counter())
    facts = {**flight.facts, "seconds": round(seconds, 3)}
    return slide_folder(out_dir, flight.path,
                        lambda folder: finish_slide(folder, plan, flight.prob, flight.failed, threshold, facts,
                                                    flight.measures, truth, flight.stain, neighbourhood))


def _raise(err: Exception) -> Callable[[Path], dict]:
    def analyse(folder: Path) -> dict:
        raise err
    return analyse


__all__ = ["run_slides_on_ray", "read_run_facts"]
