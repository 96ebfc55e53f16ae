"""A flood from the relay side: 300 connections pushing into a target that reads nothing and
300 idle ones, with the supervisor held to 256 descriptors. Memory stays within
max_connections x (SSH window + local socket buffer), extra connections are turned away at once,
status answers, and another forward on the same tunnel keeps carrying mail."""

from __future__ import annotations

import contextlib
import resource
import selectors
import smtplib
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import SmtpSink
from tests.support.chaos import PeakRss, StatusPoller, fetch_raw
from tests.support.faults import relay_config, rss_kb, send, smtp_forward, tcp_forward
from tests.support.procs import SupervisorProcess
from tests.support.sshd import free_port, wait_until
from tunnelkeeper import ssh

NOFILE = 256
MAX_CONNECTIONS = 50
FLOOD = 300
LOCAL_BUFFER = 64 * 1024  # asyncio's write buffer high-water mark towards the local target
# The most one forwarded connection may hold when its target reads nothing: the SSH window we
# grant the relay, plus what the local socket's write buffer takes before the channel pauses.
PER_CONNECTION = ssh.WINDOW + LOCAL_BUFFER
SLACK_KB = 30 * 1024
PUSH_SECONDS = 8.0
MAILS = 5


class LimitedSupervisor(SupervisorProcess):
    """`tunnelkeeper run` under `ulimit -n NOFILE` (soft and hard)."""

    def __init__(self, config: Path, nofile: int) -> None:
        self.config = config
        self.log_path = config.parent / f"tunnelkeeper-{time.monotonic_ns()}.log"
        self.socket = config.parent / "control.sock"
        args = [sys.executable, "-m", "tunnelkeeper", "run", "-c", str(config), "--no-dashboard"]
        args.append("--allow-root")

        def limit() -> None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                args,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                preexec_fn=limit,  # only setrlimit runs between fork and exec
            )


class BlackHole:
    """Accepts every connection and never reads; a small receive buffer, so the kernel holds
    little and the backlog shows up in the supervisor."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(1024)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.held: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError, OSError):
                self.held.append(self.sock.accept()[0])

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for sock in [self.sock, *self.held]:
            sock.close()


class Flood:
    """Many relay-side clients; `pump()` pushes data on the pushing ones and notes closes."""

    def __init__(self, port: int, count: int, push: bool) -> None:
        self.push = push
        self.opened_at: dict[socket.socket, float] = {}
        self.closed_at: dict[socket.socket, float] = {}
        self.pushed = 0
        for _ in range(count):
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            sock.setblocking(False)
            self.opened_at[sock] = time.monotonic()

    @property
    def open(self) -> int:
        return len(self.opened_at) - len(self.closed_at)

    def register(self, sel: selectors.BaseSelector) -> None:
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if self.push else 0)
        for sock in self.opened_at:
            sel.register(sock, events, self)

    def ready(self, sel: selectors.BaseSelector, sock: socket.socket, mask: int) -> None:
        try:
            if mask & selectors.EVENT_READ and not sock.recv(65536):
                raise ConnectionResetError
            if mask & selectors.EVENT_WRITE:
                self.pushed += sock.send(b"x" * 65536)
        except BlockingIOError:
            pass
        except OSError:
            self.closed_at[sock] = time.monotonic()
            sel.unregister(sock)

    def close(self) -> None:
        for sock in self.opened_at:
            sock.close()


def _pump(floods: list[Flood], seconds: float) -> None:
    with selectors.DefaultSelector() as sel:
        for flood in floods:
            flood.register(sel)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and sel.get_map():
            for key, mask in sel.select(0.1):
                key.data.ready(sel, key.fileobj, mask)


def _mails(port: int, sink: SmtpSink, count: int) -> list[str]:
    """Send `count` mails to the relay-side `port`; the errors, and wait for the rest."""
    errors: list[str] = []
    before = len(sink.raw)
    for n in range(count):
        try:
            send(port, f"Subject: {n}\r\n\r\nthrough the flood\r\n".encode())
        except (OSError, smtplib.SMTPException) as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
    with contextlib.suppress(AssertionError):
        wait_until(lambda: len(sink.raw) - before >= count - len(errors), 10)
    return errors


def _refused(status: dict[str, Any] | None) -> dict[str, Any]:
    if status is None:
        return {}
    return {f["name"]: f.get("connections_refused") for f in status["tunnels"][0]["forwards"]}


def _refusal_lines(log: str) -> int:
    return sum(1 for line in log.splitlines() if "refusing new connections" in line)


@pytest.mark.timeout(90)
def test_flood_of_relay_connections(
    make_relay, smtp_sink: SmtpSink, fdir: Path, outcome: dict[str, Any]
) -> None:
    sink_port, idle_port, mail_port = free_port(), free_port(), free_port()
    sshd = make_relay(permitlisten=[f"127.0.0.1:{p}" for p in (sink_port, idle_port, mail_port)])
    sink, idle = BlackHole(), BlackHole()
    forwards = [
        {**tcp_forward(sink_port, sink.port, "sink"), "max_connections": MAX_CONNECTIONS},
        {**tcp_forward(idle_port, idle.port, "idle"), "max_connections": MAX_CONNECTIONS},
        smtp_forward(mail_port, smtp_sink.port),
    ]
    cfg = relay_config(fdir / "tk.toml", sshd, forwards, supervisor={"log_level": "info"})
    sup = LimitedSupervisor(cfg, NOFILE)
    floods: list[Flood] = []
    mail_errors: list[str] = []
    alive, st = False, None
    poller = StatusPoller(sup.socket, sup.proc.pid, period=0.25)
    rss = PeakRss(sup.proc.pid)
    base = 0
    try:
        sup.wait_forward("up", 15)
        time.sleep(0.5)
        base = rss_kb(sup.proc.pid)
        rss.start()
        poller.start()
        t0 = time.monotonic()
        floods = [Flood(sink_port, FLOOD, push=True), Flood(idle_port, FLOOD, push=False)]
        opened = time.monotonic() - t0
        pumper = threading.Thread(target=_pump, args=(floods, PUSH_SECONDS), daemon=True)
        pumper.start()
        time.sleep(1.0)
        mail_errors = _mails(mail_port, smtp_sink, MAILS)
        pumper.join(PUSH_SECONDS + 10)
        alive = sup.proc.poll() is None
        st = fetch_raw(sup.socket) if alive else None
    finally:
        poller.stop()
        rss.stop()
        for flood in floods:
            flood.close()
        code = sup.stop()
        sink.close()
        idle.close()
    peak = max(0, rss.peak_kb - base)
    bound_kb = MAX_CONNECTIONS * PER_CONNECTION // 1024 + SLACK_KB
    refused_close = [f.closed_at[s] - f.opened_at[s] for f in floods for s in f.closed_at]
    outcome.update(
        connections=2 * FLOOD,
        opened_s=round(opened, 2),
        open_after_flood={"sink": floods[0].open, "idle": floods[1].open} if floods else None,
        pushed_mib=round(floods[0].pushed / 2**20, 1) if floods else 0,
        worst_close_s=round(max(refused_close, default=0.0), 2),
        peak_rss_growth_kib=peak,
        bound_kib=bound_kb,
        status_polls=len(poller.samples),
        status_unanswered=poller.unanswered,
        worst_status_latency_s=round(poller.worst_latency, 3),
        peak_fds=max((s.fds for s in poller.samples), default=0),
        mails_delivered=len(smtp_sink.raw),
        mail_errors=mail_errors[:2],
        refused_by_forward=_refused(st),
        refusal_log_lines=_refusal_lines(sup.log()),
    )
    assert alive, f"supervisor exited {sup.proc.returncode}:\n{sup.log()[-4000:]}"
    assert code == 0
    assert st is not None and st["tunnels"][0]["connects"] == 1, st
    # One log line per burst of refusals, not one per refused connection.
    assert _refusal_lines(sup.log()) <= 6, sup.log()[-4000:]
    for flood in floods:
        assert flood.open <= MAX_CONNECTIONS, outcome
        assert len(flood.closed_at) >= FLOOD - MAX_CONNECTIONS, outcome
    assert max(refused_close) < 5.0, outcome
    assert poller.unanswered == 0 and poller.worst_latency < 1.0, outcome
    assert peak < bound_kb, outcome
    assert len(smtp_sink.raw) == MAILS and not mail_errors, outcome


@pytest.mark.timeout(90)
def test_flood_past_the_descriptor_limit(
    make_relay, smtp_sink: SmtpSink, fdir: Path, outcome: dict[str, Any]
) -> None:
    """max_connections above what 256 descriptors allow: the descriptor reserve is then the
    only guard. Status keeps answering, nothing dies, and once the flood ends mail flows."""
    idle_port, mail_port = free_port(), free_port()
    sshd = make_relay(permitlisten=[f"127.0.0.1:{p}" for p in (idle_port, mail_port)])
    idle = BlackHole()
    forwards = [
        {**tcp_forward(idle_port, idle.port, "idle"), "max_connections": 10_000},
        smtp_forward(mail_port, smtp_sink.port),
    ]
    cfg = relay_config(fdir / "tk.toml", sshd, forwards, supervisor={"log_level": "info"})
    sup = LimitedSupervisor(cfg, NOFILE)
    flood: Flood | None = None
    poller = StatusPoller(sup.socket, sup.proc.pid, period=0.25)
    st: dict[str, Any] | None = None
    try:
        sup.wait_forward("up", 15)
        poller.start()
        flood = Flood(idle_port, FLOOD, push=False)
        _pump([flood], 4.0)
        held = flood.open
        st = fetch_raw(sup.socket)
        flood.close()
        idle.close()  # a half-closed splice ends when the target closes too
        wait_until(
            lambda: sup.status_now().forwards[0].connections_active == 0,
            10,
            0.1,
            "the flood's connections closed",
        )
        after = _mails(mail_port, smtp_sink, MAILS)
        alive = sup.proc.poll() is None
    finally:
        poller.stop()
        if flood is not None:
            flood.close()
        code = sup.stop()
        idle.close()
    outcome.update(
        connections=FLOOD,
        held_open=held,
        refused=_refused(st),
        status_unanswered=poller.unanswered,
        worst_status_latency_s=round(poller.worst_latency, 3),
        peak_fds=max((s.fds for s in poller.samples), default=0),
        mail_errors_after=after[:2],
    )
    assert alive and code == 0, sup.log()[-4000:]
    assert held < NOFILE, outcome
    assert poller.unanswered == 0 and poller.worst_latency < 1.0, outcome
    assert max(s.fds for s in poller.samples) < NOFILE, outcome
    assert not after, outcome
    assert _refusal_lines(sup.log()) <= 6, sup.log()[-4000:]
