"""The history database: SQLite in WAL mode, its versioned schema, and the writer thread."""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import TunnelkeeperError

log = logging.getLogger(__name__)

# PRAGMA user_version holds the version; MIGRATIONS[n] brings a version n-1 database to n.
SCHEMA_VERSION = 2
READABLE_FROM = 1  # the oldest version this code reads as it is (version 2 only added an index)
MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (
        """CREATE TABLE sessions (
            id INTEGER PRIMARY KEY,
            pid INTEGER NOT NULL,
            config TEXT NOT NULL,
            started REAL NOT NULL,
            last_seen REAL NOT NULL,
            stopped REAL
        )""",
        # kind: supervisor (start|stop), reload, tunnel (its state), forward (its state, or
        # removed), probe (ok|failed), outage (start|end), cause (an open outage's cause
        # changed), flush (accepted|failed: the relay MTA's answer to ETRN, in reason).
        # Times are Unix seconds.
        """CREATE TABLE events (
            id INTEGER PRIMARY KEY,
            session INTEGER NOT NULL REFERENCES sessions(id),
            at REAL NOT NULL,
            kind TEXT NOT NULL,
            tunnel TEXT,
            forward TEXT,
            state TEXT,
            error_kind TEXT,
            reason TEXT
        )""",
        "CREATE INDEX events_at ON events(at)",
        "CREATE INDEX events_forward ON events(tunnel, forward, at)",
        "CREATE INDEX sessions_started ON sessions(started)",
        # pruned_before: events before this time were deleted (history_days).
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value REAL NOT NULL)",
    ),
    # A report reads one session's events of a span: found without a scan of the table.
    2: ("CREATE INDEX events_session ON events(session, kind, at)",),
}
QUEUE_SIZE = 10_000  # events waiting for the writer; more are dropped (and counted)
BATCH = 500  # events written per transaction at most


class HistoryError(TunnelkeeperError):
    """The history database cannot be opened or read."""


def connect(path: Path, *, readonly: bool = False) -> sqlite3.Connection:
    """Open the database at `path`, brought up to SCHEMA_VERSION unless `readonly`.

    Read-only never blocks the writer (WAL readers see the last commit). Raises HistoryError
    when the file is missing (readonly), unusable, or written by a newer schema.
    """
    try:
        if readonly:
            if not path.exists():
                raise HistoryError(f"{path}: no history recorded yet")
            conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=5)
        else:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            conn = sqlite3.connect(path, timeout=5, check_same_thread=False)
        conn.isolation_level = None  # transactions are explicit: BEGIN ... COMMIT
        conn.execute("PRAGMA busy_timeout = 5000")
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        if version > SCHEMA_VERSION:
            conn.close()
            raise HistoryError(
                f"{path}: schema version {version} is newer than this tunnelkeeper's "
                f"({SCHEMA_VERSION}); upgrade tunnelkeeper or move the file away"
            )
        if readonly:
            if version < READABLE_FROM:
                conn.close()
                raise HistoryError(f"{path}: schema version {version}; run the supervisor once")
            return conn
        # WAL: readers (the history command) never wait for the writer, and a killed writer
        # leaves the last committed transaction intact. NORMAL is crash-safe under WAL.
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        _migrate(conn, version)
        return conn
    except (sqlite3.Error, OSError) as exc:
        raise HistoryError(f"{path}: {exc}") from exc


def _migrate(conn: sqlite3.Connection, version: int) -> None:
    for target in range(version + 1, SCHEMA_VERSION + 1):
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in MIGRATIONS[target]:
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {target}")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")


@dataclass(frozen=True)
class Event:
    at: float
    kind: str
    tunnel: str | None = None
    forward: str | None = None
    state: str | None = None
    error_kind: str | None = None
    reason: str | None = None


_Job = Callable[[sqlite3.Connection], None]


class Writer:
    """Writes events on a thread of its own, so the event loop never waits for the disk.

    `record()` never blocks: when the queue is full the event is dropped and counted in
    `dropped`. `start()` opens the database and a session; `close()` ends the session and
    waits for everything queued before it.
    """

    def __init__(self, path: Path, *, pid: int, config: str, queue_size: int = QUEUE_SIZE):
        self.path = path
        self.pid = pid
        self.config = config
        self.session: int | None = None
        self.dropped = 0
        self.written = 0
        self._queue: queue.Queue[Event | _Job | None] = queue.Queue(maxsize=queue_size)
        self._thread = threading.Thread(target=self._run, name="history-writer", daemon=True)
        self._conn: sqlite3.Connection | None = None

    def start(self, now: float | None = None) -> None:
        """Open the database and begin a session. Raises HistoryError. Blocking: call it off
        the event loop."""
        conn = connect(self.path)
        now = time.time() if now is None else now
        try:
            conn.execute("BEGIN IMMEDIATE")
            cur = conn.execute(
                "INSERT INTO sessions (pid, config, started, last_seen) VALUES (?, ?, ?, ?)",
                (self.pid, self.config, now, now),
            )
            self.session = int(cur.lastrowid or 0)
            conn.execute(
                "INSERT INTO events (session, at, kind, state) VALUES (?, ?, ?, ?)",
                (self.session, now, "supervisor", "start"),
            )
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            conn.close()
            raise HistoryError(f"{self.path}: {exc}") from exc
        self._conn = conn
        self._thread.start()

    def record(self, event: Event) -> None:
        self._put(event)

    def heartbeat(self, now: float) -> None:
        """Mark the session as alive at `now`: after a kill -9 it ends at its last heartbeat."""
        session = self.session

        def job(c: sqlite3.Connection) -> None:
            c.execute("UPDATE sessions SET last_seen = ? WHERE id = ?", (now, session))

        self._put(job)

    def prune(self, before: float) -> None:
        """Forget sessions that ended, and events, before `before`."""

        def job(c: sqlite3.Connection) -> None:
            # A session still recording at the cut keeps what it knew: each forward's last
            # state and open outage are carried forward to the cut, then the rest goes.
            c.execute(
                "INSERT INTO events (session, at, kind, tunnel, forward, state, error_kind, "
                "reason) SELECT session, :cut, kind, tunnel, forward, state, error_kind, reason "
                "FROM events WHERE id IN (SELECT max(id) FROM events WHERE at < :cut AND kind IN "
                "('forward', 'outage') GROUP BY session, tunnel, forward, kind) "
                "AND NOT (kind = 'forward' AND state = 'removed') "
                "AND NOT (kind = 'outage' AND state = 'end') "
                "AND session IN "
                "(SELECT id FROM sessions WHERE coalesce(stopped, last_seen) >= :cut)",
                {"cut": before},
            )
            c.execute("DELETE FROM events WHERE at < ?", (before,))
            c.execute(
                "INSERT INTO meta (key, value) VALUES ('pruned_before', ?) "
                "ON CONFLICT (key) DO UPDATE SET value = max(value, excluded.value)",
                (before,),
            )
            c.execute(
                "DELETE FROM sessions WHERE last_seen < ? AND id NOT IN "
                "(SELECT DISTINCT session FROM events)",
                (before,),
            )

        self._put(job)

    def _put(self, item: Event | _Job) -> None:
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.warning("history: writer behind, %d event(s) dropped so far", self.dropped)

    def close(self, now: float | None = None) -> None:
        """End the session and stop the thread after it wrote what was queued. Blocking."""
        if self._conn is None:
            return
        end = time.time() if now is None else now
        session = self.session

        def stop(c: sqlite3.Connection) -> None:
            c.execute(
                "INSERT INTO events (session, at, kind, state) VALUES (?, ?, ?, ?)",
                (session, end, "supervisor", "stop"),
            )
            c.execute(
                "UPDATE sessions SET last_seen = ?, stopped = ? WHERE id = ?", (end, end, session)
            )

        self._queue.put(stop)  # blocking on purpose: the stop must not be dropped
        self._queue.put(None)
        self._thread.join(timeout=30)
        with contextlib.suppress(sqlite3.Error):
            self._conn.close()
        self._conn = None

    def _run(self) -> None:
        assert self._conn is not None
        conn = self._conn
        stopping = False
        while not stopping:
            items = [self._queue.get()]
            while len(items) < BATCH:
                try:
                    items.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            if None in items:
                stopping = True
                items = items[: items.index(None)]
            try:
                self._write(conn, items)
            except sqlite3.Error as exc:  # a full disk must not end the supervisor
                log.error("history: cannot write %s: %s", self.path, exc)

    def _write(self, conn: sqlite3.Connection, items: list[Event | _Job | None]) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            for item in items:
                if isinstance(item, Event):
                    conn.execute(
                        "INSERT INTO events (session, at, kind, tunnel, forward, state, "
                        "error_kind, reason) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        (
                            self.session,
                            item.at,
                            item.kind,
                            item.tunnel,
                            item.forward,
                            item.state,
                            item.error_kind,
                            item.reason,
                        ),
                    )
                    self.written += 1
                elif item is not None:
                    item(conn)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")


def pid_alive(pid: int) -> bool:
    """Whether a process `pid` exists (ours or another user's)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
