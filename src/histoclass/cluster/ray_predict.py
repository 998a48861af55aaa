"""`histoclass predict --ray`: image files read in parallel Ray tasks, scored by the actor pool.

The rows are the ones the single-process path writes (same order, same numbers, same reasons
for skipped files), so `write_predictions_csv` writes the same CSV.
"""
from __future__ import annotations

import logging
import os
from typing import Callable, Sequence

import numpy as np

from ..data.decode import BadImage, decode_file
from ..errors import HistoclassError
from ..progress import progress_bar
from ..inference.files import FilePrediction, gather_inputs
from ..runs.folder import read_config
from .ray_engine import Throughput, plan_pool, ray_session, run_probabilities

log = logging.getLogger(__name__)


def decode_paths(batch: dict[str, np.ndarray], size: int) -> dict[str, np.ndarray]:
    """A Ray read task: file paths (bytes, so any file name survives) to RGB uint8 at `size`."""
    images = np.zeros((len(batch["path"]), size, size, 3), np.uint8)
    errors = []
    for i, path in enumerate(batch["path"]):
        try:
            images[i] = decode_file(os.fsdecode(bytes(path)), size)[0]
            errors.append("")
        except BadImage as err:
            errors.append(str(err))
    return {"key": batch["key"], "image": images, "error": np.array(errors, dtype=object)}


def predict_files_on_ray(run_folder: str | os.PathLike, inputs: Sequence[str | os.PathLike], address: str,
                         num_workers: int | None = None, batch_size: int = 256, progress: bool = False,
                         on_batch: Callable[[dict], None] | None = None) -> tuple[list[FilePrediction], Throughput]:
    """`Run.predict_files` on Ray: one FilePrediction per file, in the local path's order.

    `address`: "auto" (a local Ray) or a cluster's address; the files must be readable at the
    same paths on every node (a shared file system). `on_batch` sees each result batch."""
    config, _ = read_config(run_folder)  # a bad folder fails here, before Ray starts
    files, skipped = gather_inputs(inputs)
    results = [FilePrediction(str(path), None, None, f"skipped: {reason}") for path, reason in skipped]
    if not files:
        return results, Throughput()
    throughput = Throughput()
    prob = np.full(len(files), np.nan)
    label = np.full(len(files), -1)
    errors = [""] * len(files)
    received = 0
    with ray_session(address):
        import ray
        pool = plan_pool(ray.available_resources(), num_workers)
        log.info("Ray: %s", pool.describe())
        # One block per model batch: a read task decodes it, an actor scores it, and a retried
        # batch after a worker's death is that small.
        items = [{"key": i, "path": os.fsencode(path)} for i, path in enumerate(files)]
        dataset = ray.data.from_items(items, override_num_blocks=-(-len(items) // batch_size))
        dataset = dataset.map_batches(decode_paths, fn_kwargs={"size": config.image_size},
                                      batch_size=batch_size, batch_format="numpy", num_cpus=pool.read_cpus)
        with progress_bar(len(files), "predict (Ray)", "image", enabled=progress) as bar:
            for batch in run_probabilities(dataset, run_folder, pool, batch_size=batch_size):
                keys = batch["key"].astype(int)
                prob[keys], label[keys] = batch["prob_malignant"], batch["label"]
                for key, error in zip(keys, batch["error"]):
                    errors[key] = str(error)
                throughput.add(batch)
                bar.update(len(keys))
                received += len(keys)
                if on_batch is not None:
                    on_batch(batch)
    if received != len(files):
        raise HistoclassError(f"Ray returned {received} of {len(files)} predictions; run the job again")
    for path, p, lab, error in zip(files, prob, label, errors):
        if np.isnan(p):
            results.append(FilePrediction(str(path), None, None, f"skipped: {error or 'unreadable'}"))
        else:
            results.append(FilePrediction(str(path), float(p), int(lab), "ok"))
    return results, throughput
