"""Progress of long loops: a tqdm bar where someone watches a terminal (or a notebook), plain log
lines everywhere else, so that `histoclass train ... > train.log 2>&1` holds no `\\r` refreshes.

Every loop that shows progress asks `progress_bar` for its bar; nothing else imports tqdm.
"""
from __future__ import annotations

import logging
import sys
import time

log = logging.getLogger(__name__)

# Off a terminal, a long loop logs one line this often (and a last one when it logged any).
PLAIN_EVERY_S = 10.0


def on_terminal() -> bool:
    """Whether progress bars can be drawn: stderr is a terminal, or this is a notebook."""
    isatty = getattr(sys.stderr, "isatty", None)
    return bool(callable(isatty) and isatty()) or "ipykernel" in sys.modules


def progress_bar(total: int | None, desc: str, unit: str = "it", enabled: bool = True, leave: bool = True,
                 position: int | None = None):
    """A bar with tqdm's `update`, `set_postfix` and `close` (and a context manager): tqdm's own
    on a terminal, `PlainProgress` elsewhere, one that does nothing when not `enabled`."""
    if not enabled:
        return PlainProgress(total, desc, unit, every=None)
    if on_terminal():
        from tqdm.auto import tqdm
        return tqdm(total=total, desc=desc, unit=unit, leave=leave, position=position)
    return PlainProgress(total, desc, unit)


class PlainProgress:
    """tqdm's interface for a log file: `desc: done/total unit (share), seconds` every `every`
    seconds, and a last line at the end when the loop was long enough to log one. `every=None`:
    silent."""

    def __init__(self, total: int | None, desc: str, unit: str = "it", every: float | None = PLAIN_EVERY_S):
        self.total, self.desc, self.unit, self.every = total, desc, unit, every
        self.n = 0
        self.postfix = ""
        self._started = self._last = time.monotonic()
        self._logged = False
        self._closed = False

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if self.every is not None and now - self._last >= self.every:
            self._last = now
            self._log(now)

    def set_postfix(self, **values) -> None:
        self.postfix = ", ".join(f"{k} {v}" for k, v in values.items())

    def close(self) -> None:
        if not self._closed and self._logged:
            self._log(time.monotonic())
        self._closed = True

    def _log(self, now: float) -> None:
        share = f" ({self.n / self.total:.0%})" if self.total else ""
        of = f"/{self.total}" if self.total is not None else ""
        extra = f", {self.postfix}" if self.postfix else ""
        log.info("%s: %d%s %s%s, %.0f s%s", self.desc, self.n, of, self.unit, share, now - self._started, extra)
        self._logged = True

    def __enter__(self) -> "PlainProgress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
