"""Concurrent requests batched together for the model, with a bounded wait.

Each request hands its images (uint8, at the model's size) to `Batcher.submit` and awaits the
answer. One worker thread takes the first waiting request, gathers whatever else arrives within
`max_wait_s` (up to `max_batch` images; a request of half that or more waits for none), calls
`run.model_probabilities` once on the combined batch and `run.calibrated` on the result, and
gives each request its slice. So 32 clients sending one image each cost a few model calls, not
32; the numbers are those of `Run.predict`, since
each image's probability does not depend on its neighbours in a batch.

A thread rather than an asyncio task keeps the event loop free while the model runs, and works
whichever event loop (uvicorn's, a test client's) submits.
"""
from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)


@dataclass
class _Request:
    images: np.ndarray
    future: Future


class Batcher:
    def __init__(self, run, max_batch: int = 512, max_wait_s: float = 0.005):
        self.run = run
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.model_calls = 0  # for the benchmark and the tests: how many batches ran
        self._queue: queue.Queue[_Request | None] = queue.Queue()
        self._thread = threading.Thread(target=self._work, name="histoclass-batcher", daemon=True)
        self._thread.start()

    async def submit(self, images: np.ndarray) -> np.ndarray:
        """Calibrated prob_malignant for a uint8 batch at the model's size."""
        return await asyncio.wrap_future(self.submit_nowait(images))

    def submit_nowait(self, images: np.ndarray) -> Future:
        if not self._thread.is_alive():
            raise RuntimeError("the batcher is closed")
        future: Future = Future()
        self._queue.put(_Request(images, future))
        return future

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=30)

    def _gather(self, first: _Request) -> tuple[list[_Request], bool]:
        requests, count = [first], len(first.images)
        # A request of half a batch or more is a batch already: waiting for company would only
        # delay it (the wait is for the many small requests of concurrent clients).
        deadline = time.monotonic() + (self.max_wait_s if count < self.max_batch // 2 else 0.0)
        while count < self.max_batch:
            remaining = deadline - time.monotonic()
            try:
                item = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if item is None:
                return requests, True
            requests.append(item)
            count += len(item.images)
        return requests, False

    def _work(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            requests, closing = self._gather(first)
            try:
                batch = np.concatenate([request.images for request in requests])
                prob = self.run.calibrated(self.run.model_probabilities(batch))
                self.model_calls += 1
            except Exception as err:  # each waiting request gets the error, the worker goes on
                log.exception("model call failed")
                for request in requests:
                    request.future.set_exception(err)
            else:
                start = 0
                for request in requests:
                    request.future.set_result(prob[start:start + len(request.images)])
                    start += len(request.images)
            if closing:
                return
