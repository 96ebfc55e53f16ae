"""The last hour per forward: minute cells (up, degraded, down) and recent probe latencies,
kept from the snapshots the dashboard sees and filled from the history database."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from ..history.report import Timeline
from ..state import ForwardStatus, SupervisorStatus, TunnelStatus

Key = tuple[str, str]  # (tunnel, forward)
Cell = Literal["up", "degraded", "down", "none"]

MINUTES = 60  # the strip: one cell a minute over the last hour
SAMPLES = 30  # probe latencies kept per forward for the sparkline
# A minute shows the worst state seen in it, so a short break is not lost between snapshots.
_RANK: dict[Cell, int] = {"none": 0, "up": 1, "degraded": 2, "down": 3}


def worse(a: Cell, b: Cell) -> Cell:
    return a if _RANK[a] >= _RANK[b] else b


def minute_of(ts: float) -> int:
    return int(ts // 60)


def cell_of(fwd: ForwardStatus, tunnel: TunnelStatus) -> Cell:
    """Up and its last probe got through; up but the last probe failed; anything else."""
    if fwd.state != "up" or tunnel.state != "up":
        return "down"
    return "degraded" if fwd.failing else "up"


@dataclass(frozen=True)
class ForwardTrend:
    """One forward's last hour, frozen: `minutes` as (minute number, cell), oldest first,
    and its newest probe latencies in ms (None: that probe failed), oldest first."""

    key: Key
    minutes: tuple[tuple[int, Cell], ...] = ()
    latencies: tuple[float | None, ...] = ()

    def cells(self, now: float) -> list[Cell]:
        """The MINUTES cells ending with the minute of `now`; "none" where nothing is known."""
        known = dict(self.minutes)
        last = minute_of(now)
        return [known.get(m, "none") for m in range(last - MINUTES + 1, last + 1)]


class TrendBook:
    """Per-forward minute buckets (a bounded deque of MINUTES each) and probe latencies.

    Not thread-safe: feed it on one thread and hand `trends()`, which is frozen, to readers.
    """

    def __init__(self) -> None:
        self._minutes: dict[Key, deque[tuple[int, Cell]]] = {}
        self._latencies: dict[Key, deque[float | None]] = {}
        self._probe_at: dict[Key, datetime] = {}
        self._been_up: set[Key] = set()
        self._connects: dict[str, int] = {}

    def observe(self, status: SupervisorStatus, now: float) -> None:
        """Count one snapshot, taken at `now` (Unix seconds), into the current minute."""
        minute = minute_of(now)
        for tunnel in status.tunnels:
            # Reconnected since the last snapshot: it broke, though no snapshot showed it down.
            broke = tunnel.connects > self._connects.get(tunnel.name, tunnel.connects)
            self._connects[tunnel.name] = tunnel.connects
            for fwd in tunnel.forwards:
                key = (tunnel.name, fwd.name)
                cell = cell_of(fwd, tunnel)
                if broke and key in self._been_up:
                    cell = "down"
                if cell != "down":
                    self._been_up.add(key)
                elif key not in self._been_up and (
                    fwd.state == "pending" or tunnel.state == "connecting"
                ):
                    cell = "none"  # still starting: no outage yet (as the history counts it)
                self.merge(key, minute, cell)
                probe = fwd.probe
                if probe is not None and self._probe_at.get(key) != probe.at:
                    self._probe_at[key] = probe.at
                    samples = self._latencies.setdefault(key, deque(maxlen=SAMPLES))
                    samples.append(probe.latency_ms if probe.ok else None)

    def merge(self, key: Key, minute: int, cell: Cell) -> None:
        """Make `minute` of `key` at least as bad as `cell`."""
        slots = self._minutes.setdefault(key, deque(maxlen=MINUTES))
        if not slots or minute > slots[-1][0]:
            slots.append((minute, cell))
            return
        for i in range(len(slots) - 1, -1, -1):
            if slots[i][0] == minute:
                slots[i] = (minute, worse(slots[i][1], cell))
                return
        if minute > slots[-1][0] - MINUTES:  # a gap inside the hour: keep minutes in order
            ordered = sorted([*slots, (minute, cell)])
            slots.clear()
            slots.extend(ordered[-MINUTES:])

    def fill(self, timeline: Timeline, now: float) -> None:
        """Merge what the history database recorded over the last hour: a minute with an
        outage is down (degraded when the outage was a failing probe), a recorded one up."""
        last = minute_of(now)
        for key, spans in timeline.recorded.items():
            outages = timeline.outages.get(key, [])
            for minute in range(last - MINUTES + 1, last + 1):
                lo, hi = minute * 60.0, min(minute * 60.0 + 60.0, now)
                if not any(a < hi and b >= lo for a, b in spans):
                    continue
                cell: Cell = "up"
                for o in outages:
                    if o.start < hi and o.end >= lo:
                        cell = worse(cell, "degraded" if o.error_kind == "probe-failed" else "down")
                self.merge(key, minute, cell)

    def forget(self, keep: Iterable[Key]) -> None:
        """Drop forwards no longer configured."""
        wanted = set(keep)
        for book in (self._minutes, self._latencies, self._probe_at):
            for key in book.keys() - wanted:
                del book[key]
        self._been_up &= wanted

    def trends(self) -> dict[Key, ForwardTrend]:
        keys = self._minutes.keys() | self._latencies.keys()
        return {
            key: ForwardTrend(
                key,
                tuple(self._minutes.get(key, ())),
                tuple(self._latencies.get(key, ())),
            )
            for key in keys
        }
