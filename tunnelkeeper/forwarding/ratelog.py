"""Log lines at a bounded rate, for events a peer can repeat at will (a dns forward's refused
queries, connections closed for drawing too many)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

SUMMARY_PERIOD = 60.0  # seconds between two lines of one RateLog


class RateLog:
    """Log lines about one forward at a bounded rate: the first event in words, then at most one
    line per SUMMARY_PERIOD summing up the events since (put in words only when logged)."""

    def __init__(self, log: logging.Logger) -> None:
        self._log = log
        self._logged_at: float | None = None  # loop time of the last line
        self._unlogged = 0  # events since then
        self._summary: Callable[[int], str] = str
        self._timer: asyncio.TimerHandle | None = None

    def note(self, first: Callable[[], str], summary: Callable[[int], str]) -> None:
        """An event: `first()` is its line when it may be logged now; else it is counted, and
        `summary(count)` makes the line that sums up the last ones."""
        self._summary = summary
        loop = asyncio.get_running_loop()
        now = loop.time()
        if self._logged_at is None or now - self._logged_at >= SUMMARY_PERIOD:
            self.flush()
            self._log.warning("%s", first())
            self._logged_at = now
            return
        self._unlogged += 1
        if self._timer is None:
            self._timer = loop.call_later(self._logged_at + SUMMARY_PERIOD - now, self.flush)

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._unlogged:
            self._log.warning("%s", self._summary(self._unlogged))
            self._logged_at = asyncio.get_running_loop().time()
            self._unlogged = 0
