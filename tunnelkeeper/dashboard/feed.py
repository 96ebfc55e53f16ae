"""What the dashboard's pictures are drawn from: the snapshots it sees and, when there is one,
the history database (read off the event loop), published as one frozen `Pictures`."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ..history import report as history_report
from ..history.service import Recorder
from ..history.store import Event, HistoryError, connect
from ..state import SupervisorStatus
from .events import KINDS, SHOWN, EventLine, describe
from .trend import MINUTES, ForwardTrend, Key, TrendBook

log = logging.getLogger(__name__)

REREAD = 5.0  # seconds between reads of the history database
SLOWER = 20.0  # and at least this many times as long as the last read took
# Read back further than shown: `describe` drops some and needs what came before.
EVENTS_READ = 200


@dataclass(frozen=True)
class Pictures:
    """Frozen: built on the event loop, read by rich's refresh thread."""

    trends: Mapping[Key, ForwardTrend] = field(default_factory=dict)
    events: tuple[EventLine, ...] = ()  # oldest first
    events_known: bool = False  # False: no source of events (show no panel)


class Feed:
    """Keeps the last hour from each snapshot given to `observe`, and merges what `history`
    (a database path, or None) recorded: the past hour at start, then every REREAD seconds,
    so a restarted supervisor or `status --watch` shows the hour before it started. Without
    a database, events come from diffing the snapshots themselves."""

    def __init__(self, history: Path | None = None) -> None:
        self.history = history
        self.pictures = Pictures()
        self._book = TrendBook()
        self._recorder = Recorder()
        self._seen: deque[Event] = deque(maxlen=EVENTS_READ)
        self._stored: list[Event] | None = None  # from the database, oldest first
        self._read_at = 0.0
        self._warned = False

    def observe(self, status: SupervisorStatus | None, now: float | None = None) -> None:
        """Count a snapshot in (the one the view shows now) and publish new pictures."""
        now = time.time() if now is None else now
        if status is not None:
            self._book.observe(status, now)
            self._book.forget((t.name, f.name) for t in status.tunnels for f in t.forwards)
            for event in self._recorder.observe(status, now, lambda _name: True):
                self._seen.append(event)
        events = self._stored if self._stored is not None else list(self._seen)
        self.pictures = Pictures(self._book.trends(), tuple(describe(events))[-SHOWN:], True)

    async def reread(self, now: float | None = None, *, force: bool = False) -> None:
        """Merge the database's last hour and newest events, at most every REREAD seconds."""
        now = time.time() if now is None else now
        if self.history is None or (not force and now - self._read_at < REREAD):
            return
        self._read_at = now
        began = time.monotonic()
        try:
            timeline, events = await asyncio.to_thread(_read, self.history, now)
        except HistoryError as exc:
            if not self._warned:  # said once: an absent database is normal before a first run
                self._warned = True
                log.info("dashboard: no history shown: %s", exc)
            return
        # A database full of flapping takes long to read: read it less often, then.
        self._read_at = now + SLOWER * (time.monotonic() - began)
        self._book.fill(timeline, now)
        self._stored = events
        self.observe(None, now)


def _read(path: Path, now: float) -> tuple[history_report.Timeline, list[Event]]:
    conn = connect(path, readonly=True)
    try:
        timeline = history_report.load(conn, now - MINUTES * 60.0, now)
        events = history_report.recent_events(conn, EVENTS_READ, KINDS)
    except sqlite3.Error as exc:  # a damaged or foreign file
        raise HistoryError(f"{path}: {exc}") from exc
    finally:
        conn.close()
    return timeline, events[::-1]
