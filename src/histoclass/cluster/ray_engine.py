"""The Ray engine: a run's model on a pool of Ray actors, fed batches of uint8 images.

The one entry point for any producer of images (image folders: ray_predict; slide tiles: ray_slides):

    with ray_session("auto"):                       # or "10.0.0.5:6379" to join a cluster
        pool = plan_pool(ray.available_resources())   # actors sized so the job cannot wait on itself
        dataset = ray.data.from_items(...).map_batches(read_fn, num_cpus=pool.read_cpus)
        for batch in run_probabilities(dataset, run_folder, pool):
            ...  # batch: key, prob_malignant (NaN where error), label (-1 there), error, worker

`dataset` must have the columns `key` (anything that names the image: an index, a tile
coordinate), `image` (uint8 H x W x 3, all of one shape per batch; resized by the run as
`Run.predict` does) and `error` ("" for a usable image, else why it is not). Each actor loads
the run once (`histoclass.load_run`) and applies `Run.model_probabilities`, `Run.calibrated`
and `Run.labels`: the same numbers as the single-process path.

The run folder's few files travel to the actors through Ray's object store, so the nodes need
histoclass installed but not the driver's disk. A dead actor is restarted by Ray and its batches
retried (Ray Data's `max_restarts=-1`, `max_task_retries=-1` for actor pools).
"""
from __future__ import annotations

import logging
import math
import os
import socket
import tempfile
import time
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from ..errors import HistoclassError
from ..stain.transform import StainTransform

log = logging.getLogger(__name__)

RUN_FILES = ("config.json", "calibration.json", "model.keras")  # what load_run reads
MIN_ACTOR_CPUS = 0.25


@dataclass(frozen=True)
class PoolPlan:
    """How many model actors, and what each asks of Ray, leaving room for the read tasks."""

    num_actors: int
    actor_cpus: float
    actor_gpus: float
    read_cpus: float

    def describe(self) -> str:
        device = f"1 GPU + {self.actor_cpus:g} CPU" if self.actor_gpus else f"{self.actor_cpus:g} CPU"
        return (f"{self.num_actors} model actor(s) of {device} each, read tasks of "
                f"{self.read_cpus:g} CPU")


def plan_pool(resources: dict[str, float], num_workers: int | None = None) -> PoolPlan:
    """Sizes the actor pool from what Ray reports (`ray.available_resources()`).

    The actors and one read task together never ask for more CPUs than there are: a pool of two
    1-CPU actors plus a 1-CPU read task on a 2-CPU Ray waits forever. On GPUs there is one actor
    per GPU. `num_workers` asks for that many actors (fractional CPUs when they must share)."""
    cpus, gpus = float(resources.get("CPU", 0)), int(resources.get("GPU", 0))
    if cpus < 1:
        raise HistoclassError(f"the Ray cluster reports {cpus:g} free CPUs; at least 1 is needed "
                              "(is another job holding them?)")
    read_cpus = 0.5 if cpus <= 4 else 1.0
    if gpus:
        num_actors = min(num_workers or gpus, gpus)
        actor_cpus = min(1.0, (cpus - read_cpus) / num_actors)
        return PoolPlan(num_actors, actor_cpus, 1.0, read_cpus)
    spare = cpus - read_cpus
    num_actors = num_workers or max(1, math.floor(spare))
    actor_cpus = min(1.0, spare / num_actors)
    if actor_cpus < MIN_ACTOR_CPUS:
        most = math.floor(spare / MIN_ACTOR_CPUS)
        raise HistoclassError(f"--workers {num_actors} do not fit in the {cpus:g} CPUs Ray reports "
                              f"(at most {most} here); ask for fewer workers or a larger cluster")
    return PoolPlan(num_actors, round(actor_cpus, 3), 0.0, read_cpus)


@contextmanager
def ray_session(address: str, num_cpus: int | None = None) -> Iterator[None]:
    """Ray for the length of a job. "auto" starts a local Ray on this machine (`num_cpus` of
    it, default all); anything else is the address of a running cluster to join
    (`ray start --head` prints it, e.g. 10.0.0.5:6379, or ray://host:10001). A Ray already
    initialised in this process (a notebook, a test) is used as it is and left running."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise HistoclassError("--ray needs Ray with Ray Data; install it with "
                              "pip install 'histoclass[ray]'") from None
    # Ray Data logs its progress at INFO every few seconds; the job shows its own bar instead.
    logging.getLogger("ray").setLevel(logging.WARNING)
    if ray.is_initialized():
        yield
        return
    options = dict(include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    try:
        if address == "auto":
            ray.init(address="local", num_cpus=num_cpus, **options)
        else:
            options.pop("include_dashboard")  # the cluster's own head decides
            _check_reachable(address)
            ray.init(address=address, **options)
    except (ConnectionError, ValueError, RuntimeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise HistoclassError(f"could not join the Ray cluster at {address!r} ({first}); start one "
                              "with `ray start --head` and give its address, or use --ray auto; a cluster "
                              "with token authentication also needs RAY_AUTH_MODE=token and RAY_AUTH_TOKEN "
                              "(`ray get-auth-token` on its head)") from None
    try:
        yield
    finally:
        ray.shutdown()


def _check_reachable(address: str) -> None:
    """A host:port nobody listens on fails here in seconds; Ray itself retries for minutes."""
    if "://" in address:
        return  # ray:// (Ray Client) and the like: Ray checks these itself
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise HistoclassError(f"--ray {address!r} is not an address; give host:port (as `ray start "
                              "--head` prints it, e.g. 10.0.0.5:6379) or auto")
    try:
        socket.create_connection((host, int(port)), timeout=10).close()
    except OSError as err:
        raise ConnectionError(f"nothing answers at {address}: {err.strerror or err}") from None


def run_files(folder: str | os.PathLike) -> dict[str, bytes]:
    """The bytes of the run-folder files an actor needs to load the run (for the folder of
    `histoclass cv`: members.json and each member's model.keras, at their relative paths)."""
    from ..runs.ensemble import MEMBERS_FILE, is_ensemble, read_members
    folder = Path(folder)
    names = list(RUN_FILES)
    if is_ensemble(folder):
        names = ["config.json", "calibration.json", MEMBERS_FILE] + [
            (member.relative_to(folder) / "model.keras").as_posix() for member in read_members(folder)]
    missing = [name for name in names if not (folder / name).is_file()]
    if missing:
        raise HistoclassError(f"{folder} is not a complete run folder (no {', '.join(missing)}); "
                              "give a folder written by `histoclass train`")
    return {name: (folder / name).read_bytes() for name in names}


class ProbabilityWorker:
    """A Ray actor holding one loaded run; called on batches (dicts of numpy columns)."""

    def __init__(self, files: list, batch_size: int = 512):
        import ray
        from ..inference.run import load_run
        files = ray.get(files[0])  # wrapped in a list: Ray passes the reference, not the bytes
        self._folder = tempfile.TemporaryDirectory(prefix="histoclass-run-")
        for name, data in files.items():
            path = Path(self._folder.name, name)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        self.run = load_run(self._folder.name)
        self.batch_size = batch_size
        self.worker = f"{socket.gethostname()}:{os.getpid()}"

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        started = time.perf_counter()
        errors = np.asarray(batch["error"], dtype=object)
        usable = np.flatnonzero(errors == "")
        prob = np.full(len(errors), np.nan)
        label = np.full(len(errors), -1)
        if len(usable):
            images, _ = self.run.prepare_images(np.asarray(batch["image"])[usable])
            # Tiles a read task normalized with their slide's stain transform are not again.
            done = "stain_normalized" in batch and bool(np.asarray(batch["stain_normalized"])[usable].all())
            prob[usable] = self.run.calibrated(self.run.model_probabilities(
                images, batch_size=self.batch_size, stain_transform=StainTransform() if done else None))
            label[usable] = self.run.labels(prob[usable])
        seconds = (time.perf_counter() - started) / max(1, len(errors))
        passed = {"qc": batch["qc"]} if "qc" in batch else {}  # the tiles' QC measures, for the driver
        return {"key": batch["key"], "prob_malignant": prob, "label": label, "error": errors,
                "worker": np.full(len(errors), self.worker, dtype=object),
                "seconds": np.full(len(errors), seconds), **passed}


def run_probabilities(dataset, run_folder: str | os.PathLike, pool: PoolPlan, batch_size: int = 256,
                      ) -> Iterator[dict[str, np.ndarray]]:
    """Streams result batches (key, prob_malignant, label, error, worker, seconds) of `dataset`
    as the actor pool produces them, in no particular order."""
    import ray
    import ray.data
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # the caller shows one bar in the user's units
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # else it logs the progress instead
    # The run's files go to the object store once; the actors get a reference that this driver
    # holds for the whole job, so an actor restarted after a crash can still read them.
    files = ray.put(run_files(run_folder))
    # A dead actor is restarted and its batches retried: Ray Data's own defaults for an actor
    # pool (max_restarts=-1, max_task_retries=-1).
    results = dataset.map_batches(
        ProbabilityWorker, batch_size=batch_size, batch_format="numpy",
        fn_constructor_kwargs={"files": [files]},
        compute=ray.data.ActorPoolStrategy(size=pool.num_actors),
        num_cpus=pool.actor_cpus, num_gpus=pool.actor_gpus or None)
    yield from results.iter_batches(batch_size=None, batch_format="numpy")


class Throughput:
    """Images and model seconds per worker, for the summary at the end of a job."""

    def __init__(self) -> None:
        self.images: dict[str, int] = defaultdict(int)
        self.seconds: dict[str, float] = defaultdict(float)
        self.started = time.perf_counter()

    def add(self, batch: dict[str, np.ndarray]) -> None:
        for worker, seconds in zip(batch["worker"], batch["seconds"]):
            self.images[str(worker)] += 1
            self.seconds[str(worker)] += float(seconds)

    def summary(self, unit: str = "images") -> str:
        wall = time.perf_counter() - self.started
        total = sum(self.images.values())
        lines = [f"{total} {unit} in {wall:.1f} s on Ray ({total / max(wall, 1e-9):.1f} {unit}/s), "
                 f"{len(self.images)} worker(s):"]
        for worker in sorted(self.images):
            count, seconds = self.images[worker], self.seconds[worker]
            lines.append(f"  {worker}: {count} {unit}, {count / max(seconds, 1e-9):.1f} {unit}/s while busy")
        return "\n".join(lines)
