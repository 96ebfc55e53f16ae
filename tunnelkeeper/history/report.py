"""Outages and availability per forward, read from the history database."""

from __future__ import annotations

import math
import sqlite3
from collections import defaultdict
from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from .store import Event, pid_alive

WINDOWS = {"24h": 86_400.0, "7d": 7 * 86_400.0, "30d": 30 * 86_400.0}
# A session without a stop whose heartbeat is this recent is still recording (30 s beats).
LIVE_AFTER_BEAT = 90.0

Key = tuple[str, str]  # (tunnel, forward)


@dataclass(frozen=True)
class Outage:
    tunnel: str
    forward: str
    start: float
    end: float  # when it ended, or (ongoing) now
    ongoing: bool
    error_kind: str | None  # what began it
    reason: str | None
    causes: tuple[Cause, ...] = ()  # every cause in order, the first one included

    def to_json(self) -> dict[str, Any]:
        return {
            "tunnel": self.tunnel,
            "forward": self.forward,
            "start": iso(self.start),
            "end": None if self.ongoing else iso(self.end),
            "duration_s": None if self.ongoing else round(self.end - self.start, 1),
            "error_kind": self.error_kind,
            "reason": self.reason,
            "causes": [c.to_json() for c in self.causes],
        }


@dataclass(frozen=True)
class Cause:
    """Why a forward was out from `at` on (until the next cause, or the outage's end)."""

    at: float
    error_kind: str | None
    reason: str | None

    def to_json(self) -> dict[str, Any]:
        return {"at": iso(self.at), "error_kind": self.error_kind, "reason": self.reason}


@dataclass
class Timeline:
    """What the database says about each forward: when it was recorded, when it was out."""

    recorded: dict[Key, list[tuple[float, float]]]
    outages: dict[Key, list[Outage]]


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).replace(microsecond=0).isoformat()


def load(conn: sqlite3.Connection, since: float, until: float) -> Timeline:
    """Read every session that overlaps [since, until] and replay its forward and outage
    events into recorded spans and outages (an outage still open when its session ended
    ends there; one in the live session is ongoing)."""
    row = conn.execute("SELECT value FROM meta WHERE key = 'pruned_before'").fetchone()
    pruned = float(row[0]) if row else 0.0
    sessions = conn.execute(
        "SELECT id, pid, started, last_seen, stopped FROM sessions "
        "WHERE started <= ? AND coalesce(stopped, last_seen) >= ? ORDER BY started, id",
        (until, since - LIVE_AFTER_BEAT),
    ).fetchall()
    newest = conn.execute("SELECT max(id) FROM sessions").fetchone()[0]
    timeline = Timeline(defaultdict(list), defaultdict(list))
    for sid, pid, started, last_seen, stopped in sessions:
        # The span's events, and before it only each forward's last word of each kind: what
        # it takes to know whether the forward was there, and out, when the span began.
        columns = "at, kind, tunnel, forward, state, error_kind, reason, id"
        events = conn.execute(
            f"SELECT {columns} FROM events WHERE session = :s "
            "AND kind IN ('forward', 'outage', 'cause') "
            f"AND at >= :since UNION ALL SELECT {columns} FROM events WHERE id IN "
            "(SELECT max(id) FROM events WHERE session = :s AND kind IN ('forward', 'outage') "
            "AND at < :since GROUP BY tunnel, forward, kind) ORDER BY at, id",
            {"s": sid, "since": since},
        ).fetchall()
        last_event = max((e[0] for e in events), default=last_seen)
        live = (
            stopped is None
            and sid == newest
            and until - last_seen <= LIVE_AFTER_BEAT
            and pid_alive(int(pid))
        )
        end = until if live else float(stopped if stopped is not None else last_seen)
        end = max(end, last_event)
        _replay(timeline, events, max(float(started), pruned), end, live)
    return timeline


def _replay(
    timeline: Timeline, events: list[tuple[Any, ...]], start: float, end: float, live: bool
) -> None:
    present: dict[Key, float] = {}
    open_: dict[Key, list[Cause]] = {}  # each open outage's causes, its first one first

    def close(key: Key, at: float, ongoing: bool = False) -> None:
        if key in open_:
            causes = open_.pop(key)
            first = causes[0]
            outage = Outage(
                *key, first.at, at, ongoing, first.error_kind, first.reason, tuple(causes)
            )
            timeline.outages[key].append(outage)

    for at, kind, tunnel, forward, state, error_kind, reason, _id in events:
        key = (tunnel, forward)
        if kind == "forward" and state == "removed":
            close(key, at)
            if key in present:
                timeline.recorded[key].append((present.pop(key), at))
            continue
        # A forward seen without its "added" (pruned away) was there since the session began.
        present.setdefault(key, at if state == "added" else start)
        if kind == "outage" and state == "start" and key not in open_:
            open_[key] = [Cause(at, error_kind, reason)]
        elif kind == "cause" and key in open_:
            open_[key].append(Cause(at, error_kind, reason))
        elif kind == "outage" and state == "end":
            if key not in open_:  # its start was pruned away
                open_[key] = [Cause(start, None, None)]
            close(key, at)
    for key in list(open_):
        close(key, end, ongoing=live)
    for key, began in present.items():
        timeline.recorded[key].append((began, end))


def _overlap(spans: list[tuple[float, float]], lo: float, hi: float) -> float:
    return sum(max(0.0, min(b, hi) - max(a, lo)) for a, b in spans)


def availability(timeline: Timeline, key: Key, until: float, window: float) -> float | None:
    """Percent of the recorded time in the last `window` seconds without an outage; 100.00
    only when there was none at all (else at most 99.99); None when nothing was recorded."""
    lo = until - window
    recorded = _overlap(timeline.recorded.get(key, []), lo, until)
    if recorded <= 0:
        return None
    outages = [o for o in timeline.outages.get(key, []) if o.start <= until and o.end >= lo]
    if not outages:
        return 100.0
    down = _overlap([(o.start, o.end) for o in outages], lo, until)
    share = max(0.0, recorded - down) / recorded * 100
    return min(math.floor(share * 100) / 100, 99.99)


def tunnels(conn: sqlite3.Connection) -> set[str]:
    """Every tunnel the database has an event of."""
    rows = conn.execute("SELECT DISTINCT tunnel FROM events WHERE tunnel IS NOT NULL")
    return {row[0] for row in rows}


def report(
    conn: sqlite3.Connection, since: float, until: float, tunnel: str | None = None
) -> dict[str, Any]:
    """The `history --json` document: outages overlapping [since, until], and availability
    of every forward recorded in that span or the last 30 days, over 24 h, 7 d and 30 d."""
    horizon = min(since, until - max(WINDOWS.values()))
    timeline = load(conn, horizon, until)
    keys = sorted(
        key
        for key, spans in timeline.recorded.items()
        if (tunnel is None or key[0] == tunnel) and _overlap(spans, horizon, until) > 0
    )
    outages = sorted(
        (
            o
            for key in keys
            for o in timeline.outages.get(key, [])
            if o.start <= until and o.end >= since
        ),
        key=lambda o: (o.start, o.tunnel, o.forward),
    )
    rows = []
    for key in keys:
        row: dict[str, Any] = {"tunnel": key[0], "forward": key[1]}
        recorded: dict[str, int] = {}
        for name, window in WINDOWS.items():
            row[name] = availability(timeline, key, until, window)
            spans = timeline.recorded.get(key, [])
            recorded[name] = round(_overlap(spans, until - window, until))
        row["recorded_s"] = recorded
        rows.append(row)
    return {
        "since": iso(since),
        "until": iso(until),
        "outages": [o.to_json() for o in outages],
        "availability": rows,
        "flushes": flushes(conn, since, until, tunnel),
    }


def flushes(
    conn: sqlite3.Connection, since: float, until: float, tunnel: str | None = None
) -> list[dict[str, Any]]:
    """The ETRNs of [since, until] (the relay MTA's answers), oldest first."""
    rows = conn.execute(
        "SELECT at, tunnel, forward, state, reason FROM events WHERE kind = 'flush' "
        "AND at >= ? AND at <= ? AND (? IS NULL OR tunnel = ?) ORDER BY at, id",
        (since, until, tunnel, tunnel),
    )
    return [
        {"at": iso(at), "tunnel": t, "forward": f, "ok": state == "accepted", "reply": reply}
        for at, t, f, state, reply in rows
    ]


def availability_24h(conn: sqlite3.Connection, until: float) -> dict[Key, float | None]:
    """Each recorded forward's availability over the last 24 hours."""
    timeline = load(conn, until - WINDOWS["24h"], until)
    return {key: availability(timeline, key, until, WINDOWS["24h"]) for key in timeline.recorded}


def recent_events(conn: sqlite3.Connection, limit: int, kinds: Collection[str]) -> list[Event]:
    """The newest `limit` events of the given kinds, over every session, newest first."""
    marks = ", ".join("?" for _ in kinds)
    rows = conn.execute(
        "SELECT at, kind, tunnel, forward, state, error_kind, reason FROM events "
        f"WHERE kind IN ({marks}) ORDER BY at DESC, id DESC LIMIT ?",
        (*kinds, limit),
    ).fetchall()
    return [Event(float(row[0]), *row[1:]) for row in rows]
