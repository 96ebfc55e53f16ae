"""A chaos harness: a status poller, books on mail, and a seeded schedule of faults."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.faults import MailLoop, fd_count, rss_kb
from tests.support.targets import DnsTarget, SmtpTarget

# -- the control socket, raw ---------------------------------------------------------------------


def fetch_raw(path: Path, timeout: float = 2.0) -> dict[str, Any] | None:
    """`status --json` as the control socket sends it (every field, new ones too), or None."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(path))
            sock.sendall(b'{"cmd":"status"}\n')
            chunks: list[bytes] = []
            deadline = time.monotonic() + timeout
            while not chunks or not chunks[-1].endswith(b"\n"):
                sock.settimeout(max(0.01, deadline - time.monotonic()))
                data = sock.recv(1 << 20)
                if not data:
                    break
                chunks.append(data)
        reply = json.loads(b"".join(chunks))
    except (OSError, ValueError):
        return None
    return reply if isinstance(reply, dict) and "tunnels" in reply else None


# asyncio's default executor (asyncssh signs and resolves in it) starts threads on demand, up to
# this many, and keeps them: bounded, so no leak; any thread beyond main + this cap would be one.
EXECUTOR_CAP = min(32, (os.cpu_count() or 1) + 4)


def threads_of(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


@dataclass
class Sample:
    at: float
    latency: float | None  # None: no answer
    rss_kb: int
    fds: int
    threads: int
    status: dict[str, Any] | None


@dataclass
class StatusPoller:
    """Asks the control socket every `period` s from a thread; keeps latency and /proc figures."""

    socket: Path
    pid: int
    period: float = 0.5
    samples: list[Sample] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> StatusPoller:
        self._thread = threading.Thread(target=self._body, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def _body(self) -> None:
        while not self._stop.is_set():
            t0 = time.monotonic()
            status = fetch_raw(self.socket, timeout=3.0)
            latency = time.monotonic() - t0 if status is not None else None
            try:
                usage = rss_kb(self.pid), fd_count(self.pid), threads_of(self.pid)
            except (OSError, AssertionError):
                return  # the process is gone; the test says so
            self.samples.append(Sample(t0, latency, *usage, status))
            self._stop.wait(max(0.0, self.period - (time.monotonic() - t0)))

    @property
    def unanswered(self) -> int:
        return sum(1 for s in self.samples if s.latency is None)

    @property
    def worst_latency(self) -> float:
        return max((s.latency or 0.0 for s in self.samples), default=0.0)

    def window(self, start: float, end: float) -> list[Sample]:
        return [s for s in list(self.samples) if start <= s.at <= end]


@dataclass
class PeakRss:
    """The highest VmRSS of `pid`, sampled every `period` s from a thread."""

    pid: int
    period: float = 0.05
    peak_kb: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> PeakRss:
        self._thread = threading.Thread(target=self._body, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def _body(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak_kb = max(self.peak_kb, rss_kb(self.pid))
            except (OSError, AssertionError):
                return
            self._stop.wait(self.period)


def median(values: list[int]) -> int:
    ordered = sorted(values)
    return ordered[len(ordered) // 2] if ordered else 0


# -- books on mail --------------------------------------------------------------------------------


@dataclass
class MailBooks:
    acknowledged: int
    lost: list[int]  # 250 after DATA, never arrived
    duplicated: list[int]  # arrived more than once
    altered: list[int]  # arrived, not byte for byte
    refused: int


class Digests(dict[int, bytes]):
    """MailLoop's `accepted`, keeping each body's SHA-256 rather than the body."""

    def __setitem__(self, seq: int, body: bytes) -> None:
        super().__setitem__(seq, hashlib.sha256(body).digest())


def exactly_once(loop: MailLoop, received: list[tuple[int | None, bytes]]) -> MailBooks:
    """Every mail the sender got 250 for must be there once, byte for byte; none twice.
    `loop.accepted` and `received` hold digests (Digests, SmtpTarget)."""
    got: dict[int, list[bytes]] = {}
    for seq, digest in list(received):
        if seq is not None:
            got.setdefault(seq, []).append(digest)
    accepted = dict(loop.accepted)
    return MailBooks(
        acknowledged=len(accepted),
        lost=[s for s in accepted if s not in got],
        duplicated=[s for s, copies in got.items() if len(copies) > 1],
        altered=[s for s, digest in accepted.items() if s in got and got[s][0] != digest],
        refused=len(loop.refused),
    )


# -- the schedule ---------------------------------------------------------------------------------


@dataclass
class Event:
    at: float  # seconds since the schedule started
    lane: str
    kind: str
    detail: str = ""


@dataclass
class Chaos:
    """Two lanes of faults, each drawn from its own random.Random(seed): the relay lane (kill -9,
    SIGSTOP/SIGCONT, sshd restart, SIGHUP reloads) and the target lane (down, slow-greet,
    reset-in-data, mute, DNS down). Each fault is undone before the next one of its lane."""

    seed: int
    relay: Any  # a FaultSshd
    smtp: list[SmtpTarget]
    dns: DnsTarget
    reload: Callable[[bool], None]  # rewrite the config (True: a real change), SIGHUP
    alive: Callable[[], bool]
    events: list[Event] = field(default_factory=list)
    _t0: float = 0.0
    _stop: threading.Event = field(default_factory=threading.Event)

    RELAY_KINDS = (
        ("kill9", 3),
        ("stopcont", 2),
        ("restart", 2),
        ("hup-same", 1),
        ("hup-change", 1),
    )
    TARGET_KINDS = (
        ("down", 2),
        ("slow-greet", 2),
        ("reset-in-data", 2),
        ("mute", 1),
        ("dns-down", 1),
    )

    def run(self, seconds: float) -> None:
        """Run both lanes for `seconds` (or until the supervisor exits), then restore all."""
        self._t0 = time.monotonic()
        lanes = [
            threading.Thread(target=self._lane, args=("relay", seconds), daemon=True),
            threading.Thread(target=self._lane, args=("target", seconds), daemon=True),
        ]
        for lane in lanes:
            lane.start()
        for lane in lanes:
            lane.join(seconds + 60)
        assert not any(lane.is_alive() for lane in lanes), "a chaos lane hung"
        self.restore()

    def stop(self) -> None:
        self._stop.set()

    def restore(self) -> None:
        self.relay.signal_sessions(signal.SIGCONT)
        if self.relay.proc is None:
            self.relay.start()
        for target in self.smtp:
            target.set_mode("normal")
        self.dns.set_mode("normal")

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for event in self.events:
            out[event.kind] = out.get(event.kind, 0) + 1
        return out

    def _lane(self, lane: str, seconds: float) -> None:
        offset = 1 if lane == "relay" else 2
        rng = random.Random(self.seed * 10 + offset)
        kinds = self.RELAY_KINDS if lane == "relay" else self.TARGET_KINDS
        names = [k for k, _ in kinds]
        weights = [w for _, w in kinds]
        end = self._t0 + seconds
        first = rng.sample(names, len(names))  # every kind once, in a random order, first
        while time.monotonic() < end and not self._stop.is_set() and self.alive():
            kind = first.pop(0) if first else rng.choices(names, weights)[0]
            hold = rng.uniform(0.5, 4.0) if kind == "stopcont" else rng.uniform(1.0, 6.0)
            which = rng.randrange(len(self.smtp))
            detail = getattr(self, f"_do_{kind.replace('-', '_')}")(hold, which)
            self.events.append(Event(round(time.monotonic() - self._t0, 2), lane, kind, detail))
            self._stop.wait(rng.uniform(0.5, 3.0))

    # Each _do_* applies one fault, holds it if it lasts, and undoes it.

    def _do_kill9(self, hold: float, which: int) -> str:
        return f"killed {len(self.relay.signal_sessions(signal.SIGKILL))} session(s)"

    def _do_stopcont(self, hold: float, which: int) -> str:
        pids = self.relay.signal_sessions(signal.SIGSTOP)
        self._stop.wait(hold)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        return f"froze {len(pids)} session(s) for {hold:.1f}s"

    def _do_restart(self, hold: float, which: int) -> str:
        self.relay.restart()
        return "sshd restarted"

    def _do_hup_same(self, hold: float, which: int) -> str:
        self.reload(False)
        return "SIGHUP, comment changed only"

    def _do_hup_change(self, hold: float, which: int) -> str:
        self.reload(True)
        return "SIGHUP, probe_timeout of the second tunnel changed"

    def _mode(self, target: SmtpTarget | DnsTarget, mode: str, hold: float) -> str:
        target.set_mode(mode)
        self._stop.wait(hold)
        target.set_mode("normal")
        return f"{mode} for {hold:.1f}s"

    def _do_down(self, hold: float, which: int) -> str:
        return f"smtp target {which} " + self._mode(self.smtp[which], "down", hold)

    def _do_slow_greet(self, hold: float, which: int) -> str:
        return f"smtp target {which} " + self._mode(self.smtp[which], "slow-greet", hold + 4)

    def _do_reset_in_data(self, hold: float, which: int) -> str:
        return f"smtp target {which} " + self._mode(self.smtp[which], "reset-in-data", hold)

    def _do_mute(self, hold: float, which: int) -> str:
        return f"smtp target {which} " + self._mode(self.smtp[which], "mute", hold)

    def _do_dns_down(self, hold: float, which: int) -> str:
        return "dns target " + self._mode(self.dns, "down", hold)
