"""Forward faults on a live connection: port held, permitlisten denial, target down or hung."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import SmtpSink
from tests.support.faults import relay_config, rss_kb, send, smtp_forward, tcp_forward
from tests.support.procs import SupervisorProcess
from tests.support.sshd import free_port, wait_until

pytestmark = pytest.mark.timeout(120)


def _status_exit(cfg: Path) -> int:
    result = subprocess.run(
        [sys.executable, "-m", "tunnelkeeper", "status", "-c", str(cfg)],
        capture_output=True,
        timeout=30,
    )
    return result.returncode


def test_listen_port_held_by_another_process(
    make_relay, smtp_sink, fdir: Path, outcome: dict[str, Any]
) -> None:
    squatter = socket.socket()  # holds its port from the start: no window for anyone else
    squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    squatter.bind(("127.0.0.1", 0))
    squatter.listen(8)
    listen = squatter.getsockname()[1]
    sshd = make_relay(permitlisten=[f"127.0.0.1:{listen}"])
    cfg = relay_config(
        fdir / "tk.toml", sshd, [smtp_forward(listen, smtp_sink.port)], forward_retry=0.5
    )
    sup = SupervisorProcess(cfg)
    try:
        st = sup.wait_forward("refused", 15)
        tunnel = st.tunnels[0]
        assert tunnel.state == "up" and tunnel.error_kind == "forward-refused"
        assert "smtp" in (tunnel.last_error or "")

        def retries() -> int:  # "… (retry #N)"; a published status may skip some N
            error = sup.status_now().forwards[0].error or ""
            return int(error.rsplit("#", 1)[1].rstrip(")")) if "retry #" in error else 0

        wait_until(lambda: retries() >= 3, 10, what="the refused listen retried")
        assert sup.status_now().tunnels[0].connects == 1
        squatter.close()
        t0 = time.monotonic()
        st = sup.wait_forward("up", 10)
        back = time.monotonic() - t0
        assert st.tunnels[0].error_kind is None
        send(listen, b"Subject: hi\r\n\r\nport freed\r\n")
        wait_until(lambda: smtp_sink.raw, 10, what="mail once the port is free")
    finally:
        squatter.close()
        assert sup.stop() == 0
    outcome.update(up_after_port_freed_s=round(back, 2), forward_retry_s=0.5, connects=1)
    assert back <= 0.5 + 1.0


def test_permitlisten_denies_one_of_two_forwards(
    make_relay, smtp_sink, fdir: Path, outcome: dict[str, Any]
) -> None:
    allowed, denied = free_port(), free_port()
    sshd = make_relay(permitlisten=[f"127.0.0.1:{allowed}"])
    cfg = relay_config(
        fdir / "tk.toml",
        sshd,
        [smtp_forward(allowed, smtp_sink.port), tcp_forward(denied, smtp_sink.port, "extra")],
        forward_retry=0.5,
    )
    sup = SupervisorProcess(cfg)
    try:
        sup.wait_forward("up", 15, forward="smtp")
        st = sup.wait_forward("refused", 10, forward="extra")
        extra = next(f for f in st.forwards if f.name == "extra")
        tunnel = st.tunnels[0]
        assert tunnel.state == "up" and tunnel.error_kind == "forward-refused"
        assert "extra" in (tunnel.last_error or "") and "smtp" not in (tunnel.last_error or "")
        assert "refused" in (extra.error or "")
        send(allowed, b"Subject: hi\r\n\r\nthrough the permitted forward\r\n")
        wait_until(lambda: smtp_sink.raw, 10, what="mail through the permitted forward")
        assert _status_exit(cfg) == 1  # some forwards down
        wait_until(lambda: "denied" in sshd.log_text().lower(), 5, what="sshd's denial")
        time.sleep(1.5)
        st = sup.status_now()
        assert st is not None and st.tunnels[0].connects == 1  # the connection was kept
        assert sup.log().count("forward extra refused") == 1  # said once, not every retry
    finally:
        assert sup.stop() == 0
    outcome.update(allowed="up, mail delivered", denied=extra.error, status_exit=1)


def test_internal_service_down_and_back(make_relay, fdir: Path, outcome: dict[str, Any]) -> None:
    listen, target = free_port(), free_port()
    sshd = make_relay(permitlisten=[f"127.0.0.1:{listen}"])
    sink = SmtpSink(target).start()
    cfg = relay_config(
        fdir / "tk.toml",
        sshd,
        [smtp_forward(listen, target)],
        probe_interval=0.5,
        probe_timeout=2.0,
    )
    sup = SupervisorProcess(cfg)
    refused = 0
    try:
        sup.wait_status(lambda s: bool(s.forwards[0].probe and s.forwards[0].probe.ok), 15, "ok")
        sink.stop()
        t0 = time.monotonic()
        st = sup.wait_status(
            lambda s: bool(s.forwards[0].probe and not s.forwards[0].probe.ok), 10, "probe fails"
        )
        noticed = time.monotonic() - t0
        probe = st.forwards[0].probe
        assert probe is not None
        probe_detail = probe.detail
        for _ in range(3):
            try:
                send(listen, b"Subject: x\r\n\r\nwhile down\r\n", timeout=5)
            except (OSError, Exception):  # the relay end closes: SMTPServerDisconnected
                refused += 1
        assert refused == 3
        st = sup.status_now()
        assert st is not None and st.tunnels[0].state == "up" and st.tunnels[0].connects == 1
        assert _status_exit(cfg) == 2  # the only forward is failing
        sink = SmtpSink(target).start()
        t1 = time.monotonic()
        sup.wait_status(lambda s: bool(s.forwards[0].probe and s.forwards[0].probe.ok), 10, "ok")
        back = time.monotonic() - t1
        send(listen, b"Subject: y\r\n\r\nback again\r\n")
        wait_until(lambda: sink.raw, 10, what="mail after the service came back")
    finally:
        sink.stop()
        assert sup.stop() == 0
    outcome.update(
        probe_noticed_s=round(noticed, 2),
        probe_detail=probe_detail,
        refused_while_down=refused,
        probe_ok_again_s=round(back, 2),
        connects=1,
    )


def test_internal_service_accepts_and_hangs(
    make_relay, smtp_sink, fdir: Path, outcome: dict[str, Any]
) -> None:
    """A target that accepts and never answers: its probe fails, the other forward carries mail,
    and SIGTERM closes the hung connections after shutdown_grace."""
    good, hung = free_port(), free_port()
    sshd = make_relay(permitlisten=[f"127.0.0.1:{good}", f"127.0.0.1:{hung}"])
    black_hole = socket.socket()
    black_hole.bind(("127.0.0.1", 0))
    black_hole.listen(64)
    grace = 2.0
    cfg = relay_config(
        fdir / "tk.toml",
        sshd,
        [
            smtp_forward(good, smtp_sink.port),
            smtp_forward(hung, black_hole.getsockname()[1], "hung"),
        ],
        probe_interval=0.5,
        probe_timeout=1.0,
        supervisor={"shutdown_grace": grace},
    )
    sup = SupervisorProcess(cfg)
    clients: list[socket.socket] = []
    try:
        st = sup.wait_status(
            lambda s: bool(s.forwards[1].probe and not s.forwards[1].probe.ok), 15, "hung probe"
        )
        probe = st.forwards[1].probe
        assert probe is not None
        detail = probe.detail
        assert "no answer within 1s" in detail, detail
        for _ in range(20):
            clients.append(socket.create_connection(("127.0.0.1", hung), timeout=5))
        sup.wait_status(lambda s: s.forwards[1].connections_active >= 20, 10, "20 hung")
        for n in range(3):
            send(good, f"Subject: {n}\r\n\r\nbeside a hung forward\r\n".encode())
        wait_until(lambda: len(smtp_sink.raw) == 3, 10, what="mail beside the hung forward")
        st = sup.status_now()
        assert st is not None and st.forwards[0].healthy and st.tunnels[0].connects == 1
        t0 = time.monotonic()
        sup.signal(signal.SIGTERM)
        code = sup.proc.wait(grace + 10)
        stopped = time.monotonic() - t0
        for client in clients:
            client.settimeout(5)
            assert client.recv(1) == b""  # closed, not left hanging on the relay
    finally:
        for client in clients:
            client.close()
        black_hole.close()
        sup.stop()
    outcome.update(hung_probe=detail, hung_connections=20, stop_s=round(stopped, 2), grace_s=grace)
    assert code == 0
    assert grace - 0.2 <= stopped <= grace + 2.0


class _SlowReader:
    """A target that reads at about `rate` bytes/s: a busy internal server."""

    def __init__(self, rate: int) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(1)
        self.port = self.sock.getsockname()[1]
        self.got = 0
        self._rate = rate
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        conn, _ = self.sock.accept()
        with conn:
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
            while data := conn.recv(65536):
                self.got += len(data)
                time.sleep(len(data) / self._rate)


def test_slow_target_memory_stays_bounded(
    make_relay, fdir: Path, outcome: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fast sender and a slow internal server: the supervisor holds about one SSH window
    (4 MiB) per direction, not the whole transfer."""
    total, rate = 48 * 1024 * 1024, 12 * 1024 * 1024
    target = _SlowReader(rate)
    listen = free_port()
    sshd = make_relay(permitlisten=[f"127.0.0.1:{listen}"])
    cfg = relay_config(fdir / "tk.toml", sshd, [tcp_forward(listen, target.port)])
    # Big buffers straight from mmap and back: RSS then follows what is held, not the heap's
    # high-water mark.
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "16384")
    sup = SupervisorProcess(cfg)
    peak = 0
    try:
        sup.wait_forward("up", 15)
        base = rss_kb(sup.proc.pid)
        sender = socket.create_connection(("127.0.0.1", listen), timeout=30)

        def send_all() -> None:
            chunk = b"m" * 65536
            for _ in range(total // len(chunk)):
                sender.sendall(chunk)
            sender.shutdown(socket.SHUT_WR)

        threading.Thread(target=send_all, daemon=True).start()
        t0 = time.monotonic()
        while target.got < total and time.monotonic() - t0 < 60:
            peak = max(peak, rss_kb(sup.proc.pid) - base)
            time.sleep(0.05)
        elapsed = time.monotonic() - t0
        sender.close()
    finally:
        assert sup.stop() == 0
    outcome.update(
        transferred_mib=target.got >> 20,
        seconds=round(elapsed, 1),
        peak_rss_growth_kib=peak,
    )
    assert target.got == total
    assert peak < 14 * 1024, peak  # two windows and change; the whole transfer is 48 MiB
