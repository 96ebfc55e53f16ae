"""The history service: diffs consecutive status snapshots and records every change.

Outage rules: a forward's outage starts when it leaves `up` (or, at start, when its first
attempt fails), or when its probe fails while it is up (`probe-failed`); it ends when the
forward is up again and, with probes on, a probe run since then got through. A tunnel-level
cause is recorded on each of the tunnel's forwards; when the cause changes during an outage,
the new one is recorded too (an event of kind `cause`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from ..state import ForwardStatus, SupervisorStatus, TunnelStatus
from . import report as history_report
from .store import Event, HistoryError, Writer, connect

if TYPE_CHECKING:
    from ..config import Config
    from ..publisher import ServiceContext

log = logging.getLogger(__name__)

POLL = 0.5  # the supervisor publishes a snapshot twice a second
HEARTBEAT = 30.0  # after a kill -9 the session ends at its last heartbeat
REFRESH = 30.0  # availability_24h in the snapshots is this fresh
PRUNE_EVERY = 86_400.0
SOON = 1.0  # seconds from a change to fresh availability figures

Key = tuple[str, str]


@dataclass
class _Forward:
    state: str
    probe_ok: bool | None = None
    been_up: bool = False  # up at least once since it appeared (startup is no outage)
    outage: bool = False
    cause: str | None = None  # the open outage's error kind, as last recorded
    etrns: int = 0  # ETRNs answered (or not) so far: more means a flush to record
    # First seen `down` under a tunnel still `up`: the moment between a connection's end and
    # the tunnel saying why (or that it is stopping). An outage, if one follows, began here.
    doubtful_since: float | None = None


class Recorder:
    """Turns a sequence of snapshots into history events. Pure: no clock, no I/O."""

    def __init__(self) -> None:
        self._forwards: dict[Key, _Forward] = {}
        self._tunnels: dict[str, tuple[str, str | None]] = {}
        self._connects: dict[str, int] = {}

    def observe(
        self, status: SupervisorStatus, now: float, probes_on: Callable[[str], bool]
    ) -> list[Event]:
        events: list[Event] = []
        seen: set[Key] = set()
        tunnels_seen: set[str] = set()
        for tunnel in status.tunnels:
            tunnels_seen.add(tunnel.name)
            last = self._tunnels.get(tunnel.name)
            connects = self._connects.get(tunnel.name, tunnel.connects)
            self._connects[tunnel.name] = tunnel.connects
            if last and last[0] == tunnel.state == "up" and tunnel.connects > connects:
                events += self._missed_break(tunnel, now)
                last = self._tunnels[tunnel.name] = ("connecting", tunnel.error_kind)
            if last != (tunnel.state, tunnel.error_kind):
                self._tunnels[tunnel.name] = (tunnel.state, tunnel.error_kind)
                events.append(
                    Event(
                        now,
                        "tunnel",
                        tunnel.name,
                        state=tunnel.state,
                        error_kind=tunnel.error_kind,
                        reason=tunnel.last_error,
                    )
                )
            if tunnel.state == "stopped":
                continue  # stopping (or restarting after a reload): its forwards are gone
            for fwd in tunnel.forwards:
                key = (tunnel.name, fwd.name)
                seen.add(key)
                events += self._forward(key, tunnel, fwd, now, probes_on(tunnel.name))
        for key in self._forwards.keys() - seen:
            del self._forwards[key]
            events.append(Event(now, "forward", *key, state="removed"))
        for name in self._tunnels.keys() - tunnels_seen:
            del self._tunnels[name]
            self._connects.pop(name, None)
        return events

    def _missed_break(self, tunnel: TunnelStatus, now: float) -> list[Event]:
        """The connection broke and came back between two snapshots (an immediate reconnect
        after a stable one): a moment's outage of every forward, and the tunnel's reason; the
        snapshot's own `up` is then recorded as the tunnel's next state."""
        name, reason = tunnel.name, tunnel.last_error
        kind = tunnel.error_kind or "disconnected"
        events = [Event(now, "tunnel", name, state="connecting", error_kind=kind, reason=reason)]
        for fwd in tunnel.forwards:
            mem = self._forwards.get((name, fwd.name))
            if mem is not None and not mem.outage and mem.been_up:
                events.append(
                    Event(
                        now, "outage", name, fwd.name, state="start", error_kind=kind, reason=reason
                    )
                )
                events.append(Event(now, "outage", name, fwd.name, state="end"))
        return events

    def _forward(
        self, key: Key, tunnel: TunnelStatus, fwd: ForwardStatus, now: float, probes: bool
    ) -> list[Event]:
        events: list[Event] = []
        mem = self._forwards.get(key)
        if mem is None:
            mem = self._forwards[key] = _Forward(state=fwd.state)
            events.append(Event(now, "forward", *key, state="added"))
            events.append(Event(now, "forward", *key, state=fwd.state, reason=fwd.error))
        elif fwd.state != mem.state:
            mem.state = fwd.state
            kind = "forward-refused" if fwd.state == "refused" else tunnel.error_kind
            reason = fwd.error or (tunnel.last_error if tunnel.state != "up" else None)
            events.append(
                Event(now, "forward", *key, state=fwd.state, error_kind=kind, reason=reason)
            )
        flush, etrns = fwd.last_flush, fwd.etrn_accepted + fwd.etrn_refused + fwd.etrn_unreachable
        if flush is not None and etrns != mem.etrns:  # (two within a poll: the last one)
            mem.etrns = etrns
            state = "accepted" if flush.ok else "failed"
            events.append(Event(now, "flush", *key, state=state, reason=flush.reply))
        probe = fwd.probe
        if probe is not None and probe.ok != mem.probe_ok:
            if not probe.ok or mem.probe_ok is False:  # a failure, or a recovery from one
                state = "ok" if probe.ok else "failed"
                events.append(Event(now, "probe", *key, state=state, reason=probe.detail))
            mem.probe_ok = probe.ok
        up = fwd.state == "up" and tunnel.state == "up"
        if not mem.outage:
            failed = probe is not None and not probe.ok
            starting = not mem.been_up and (fwd.state == "pending" or tunnel.state == "connecting")
            if fwd.state == "down" and tunnel.state == "up":
                # A clean stop passes through here too; wait for the next snapshot to tell.
                mem.doubtful_since = mem.doubtful_since or now
            elif (up and failed) or (not up and not starting):
                mem.outage = True
                error_kind, reason = _cause(tunnel, fwd)
                mem.cause = error_kind
                began = mem.doubtful_since or now
                events.append(
                    Event(
                        began, "outage", *key, state="start", error_kind=error_kind, reason=reason
                    )
                )
                mem.doubtful_since = None
            else:
                mem.doubtful_since = None
        elif up and (not probes or _probed_since_up(fwd)):
            mem.outage = False
            events.append(Event(now, "outage", *key, state="end"))
        else:
            # Still out, maybe for another reason now (the relay is back, with another host
            # key): the outage keeps its first cause and records each one that followed.
            error_kind, reason = _cause(tunnel, fwd)
            if error_kind is not None and error_kind != mem.cause:
                mem.cause = error_kind
                events.append(Event(now, "cause", *key, error_kind=error_kind, reason=reason))
        mem.been_up = mem.been_up or up
        return events


def _probed_since_up(fwd: ForwardStatus) -> bool:
    probe = fwd.probe
    if probe is None or not probe.ok:
        return False
    return fwd.since is None or probe.at >= fwd.since


def _cause(tunnel: TunnelStatus, fwd: ForwardStatus) -> tuple[str | None, str | None]:
    """Why an outage began: the error kind and the reason, for people."""
    if fwd.state == "up" and tunnel.state == "up" and fwd.probe is not None:
        return "probe-failed", fwd.error or fwd.probe.detail
    if fwd.state == "refused":
        return "forward-refused", fwd.error
    if tunnel.state != "up":
        return tunnel.error_kind, tunnel.last_error or f"tunnel {tunnel.state}"
    return tunnel.error_kind, fwd.error or f"forward {fwd.state}"


class Availability:
    """The newest availability_24h per forward, and the snapshot amendment that shows it."""

    def __init__(self) -> None:
        self.values: dict[Key, float | None] = {}

    def amend(self, status: SupervisorStatus) -> SupervisorStatus:
        values = self.values
        if not values:
            return status
        return replace(
            status,
            tunnels=tuple(
                replace(
                    t,
                    forwards=tuple(
                        replace(f, availability_24h=values.get((t.name, f.name)))
                        for f in t.forwards
                    ),
                )
                for t in status.tunnels
            ),
        )

    def refresh(self, path: Path, now: float) -> None:
        """Re-read the database (blocking: run it off the event loop)."""
        conn = connect(path, readonly=True)
        try:
            self.values = history_report.availability_24h(conn, now)
        finally:
            conn.close()


async def record(ctx: ServiceContext, *, poll: float = POLL, refresh: float = REFRESH) -> None:
    """Record the published status's changes until cancelled, and amend what is published
    with availability_24h. A database that cannot be opened turns history off (logged); it
    never stops the supervisor."""
    config = ctx.config()
    if not config.supervisor.history:
        return
    path = config.supervisor.history_file
    writer = Writer(path, pid=ctx.pid, config=str(config.path))
    try:
        await asyncio.to_thread(writer.start)
    except HistoryError as exc:
        log.error("history off: %s", exc)
        return
    log.info("history: recording state changes in %s", path)
    avail = Availability()
    recorder = Recorder()
    refreshing: asyncio.Task[None] | None = None
    beat = pruned = 0.0
    # First figures soon after start, and soon after each outage begins or ends (once the
    # writer had time to commit it); else every `refresh` seconds.
    refreshed = time.time() - refresh + SOON
    try:
        with ctx.amending(avail.amend):
            while True:
                now = time.time()
                if ctx.config() is not config:
                    config = ctx.config()
                    writer.record(Event(now, "reload", reason=str(config.path)))
                for event in recorder.observe(ctx.published(), now, _probes_on(config)):
                    writer.record(event)
                    if event.kind == "outage":
                        refreshed = min(refreshed, now - refresh + SOON)
                if now - pruned >= PRUNE_EVERY:
                    pruned = now
                    writer.prune(now - config.supervisor.history_days * 86_400.0)
                if now - beat >= HEARTBEAT:
                    beat = now
                    writer.heartbeat(now)
                if now - refreshed >= refresh and (refreshing is None or refreshing.done()):
                    refreshed = now
                    refreshing = asyncio.create_task(_refresh(avail, path, now))
                await asyncio.sleep(poll)
    finally:
        if refreshing is not None:
            refreshing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await refreshing
        # Shielded: the stop event must reach the disk even though we are being cancelled.
        await asyncio.shield(asyncio.to_thread(writer.close))
        if writer.dropped:
            log.warning("history: %d event(s) were dropped (writer behind)", writer.dropped)


async def _refresh(avail: Availability, path: Path, now: float) -> None:
    try:
        await asyncio.to_thread(avail.refresh, path, now)
    except HistoryError as exc:
        log.warning("history: availability not refreshed: %s", exc)


def _probes_on(config: Config) -> Callable[[str], bool]:
    intervals = {t.name: t.probe_interval for t in config.tunnel}
    return lambda name: intervals.get(name, 1.0) > 0
