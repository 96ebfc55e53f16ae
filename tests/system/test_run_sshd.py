"""`tunnelkeeper run` against a real OpenSSH sshd: forwards, mail, and every way it breaks."""

from __future__ import annotations

import contextlib
import signal
import smtplib
import time
from pathlib import Path

import pytest

from tests.support.configs import write_config
from tests.support.procs import SupervisorProcess
from tests.support.sshd import free_port, port_open, wait_until

pytestmark = pytest.mark.timeout(90)


def send_mail(port: int, subject: str, timeout: float = 10) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=timeout) as smtp:
        smtp.sendmail(
            "alice@example.net",
            ["bob@example.org"],
            f"Subject: {subject}\r\n\r\nbody of {subject}\r\n",
        )


@pytest.fixture
def relay(make_sshd, tmp_path):
    """An sshd whose authorized_keys permits one listen port, and a config using it."""
    listen = free_port()
    sshd = make_sshd(permitlisten=[f"127.0.0.1:{listen}"])
    return sshd, listen


def smtp_forward(listen: int, target: int) -> dict[str, object]:
    return {
        "name": "smtp",
        "service": "smtp",
        "listen": f"127.0.0.1:{listen}",
        "target": f"127.0.0.1:{target}",
        "domains": ["example.org"],
    }


def test_mail_goes_through_the_tunnel(relay, smtp_sink, tmp_path: Path) -> None:
    sshd, listen = relay
    cfg = write_config(
        tmp_path / "tk.toml", sshd, [smtp_forward(listen, smtp_sink.port)], probe_interval=1
    )
    sup = SupervisorProcess(cfg)
    try:
        t0 = time.monotonic()
        st = sup.wait_forward("up", 15)
        first_forward = time.monotonic() - t0
        send_mail(listen, "through the tunnel")
        wait_until(lambda: smtp_sink.raw, 10, what="message at the sink")
        assert b"body of through the tunnel" in smtp_sink.raw[0]
        st = sup.wait_status(
            lambda s: s.forwards[0].probe is not None and s.forwards[0].probe.ok, 10, "a good probe"
        )
        fwd = st.forwards[0]
        assert fwd.probe is not None and "220" in fwd.probe.detail and fwd.probe.via == "relay"
        assert fwd.connections_total >= 1 and fwd.bytes_in > 0 and fwd.bytes_out > 0
        tunnel = st.tunnels[0]
        assert tunnel.state == "up" and tunnel.connects == 1
        assert tunnel.cipher in (
            "aes128-gcm@openssh.com",
            "aes256-gcm@openssh.com",
            "chacha20-poly1305@openssh.com",
        )
        assert "cipher aes128-gcm@openssh.com" in sup.log() or "cipher" in sup.log()
        print(f"time to first forward: {first_forward:.2f}s")
    finally:
        assert sup.stop() == 0


def test_killed_session_comes_back(relay, smtp_sink, tmp_path: Path) -> None:
    sshd, listen = relay
    cfg = write_config(tmp_path / "tk.toml", sshd, [smtp_forward(listen, smtp_sink.port)])
    sup = SupervisorProcess(cfg)
    try:
        sup.wait_forward("up", 15)
        killed = sshd.signal_sessions(signal.SIGKILL)
        assert killed, "no sshd session to kill"
        t0 = time.monotonic()
        st = sup.wait_status(
            lambda s: s.tunnels[0].connects >= 2 and s.forwards[0].state == "up", 15, "reconnect"
        )
        print(f"recovery after kill -9: {time.monotonic() - t0:.2f}s")
        send_mail(listen, "after the kill")
        wait_until(lambda: smtp_sink.raw, 10, what="message after recovery")
        assert st.tunnels[0].connects == 2
    finally:
        assert sup.stop() == 0


def test_sshd_restart_comes_back_within_backoff(relay, smtp_sink, tmp_path: Path) -> None:
    sshd, listen = relay
    cfg = write_config(
        tmp_path / "tk.toml",
        sshd,
        [smtp_forward(listen, smtp_sink.port)],
        backoff_initial=0.2,
        backoff_max=1.0,
    )
    sup = SupervisorProcess(cfg)
    try:
        sup.wait_forward("up", 15)
        sshd.stop()
        st = sup.wait_status(
            lambda s: s.tunnels[0].error_kind == "connect-refused",
            10,
            "connect-refused while sshd is down",
        )
        assert st.tunnels[0].state in ("backoff", "connecting")
        sshd.start()
        t0 = time.monotonic()
        sup.wait_forward("up", 10)
        # backoff_max (1 s) + 25 % jitter + a connect: well inside 3 s
        assert time.monotonic() - t0 < 3.0
    finally:
        assert sup.stop() == 0


def test_frozen_session_is_noticed_and_port_freed(relay, smtp_sink, tmp_path: Path) -> None:
    sshd, listen = relay
    cfg = write_config(
        tmp_path / "tk.toml",
        sshd,
        [smtp_forward(listen, smtp_sink.port)],
        keepalive_interval=1,
        keepalive_count_max=2,
        forward_retry=0.5,
        backoff_initial=0.2,
        backoff_max=1.0,
    )
    sup = SupervisorProcess(cfg)
    frozen: list[int] = []
    try:
        sup.wait_forward("up", 15)
        frozen = sshd.signal_sessions(signal.SIGSTOP)
        t0 = time.monotonic()
        sup.wait_status(
            lambda s: s.tunnels[0].connects >= 2 or s.tunnels[0].error_kind == "keepalive-timeout",
            10,
            "keepalive timeout",
        )
        noticed = time.monotonic() - t0
        # keepalive_interval × keepalive_count_max, plus one period (SPEC §5)
        assert noticed <= 1 * 2 + 1 + 1.0, noticed
        st = sup.wait_forward("refused", 10)
        assert st.tunnels[0].error_kind == "forward-refused"
        assert "refused" in (st.forwards[0].error or "")
        for pid in frozen:
            sshd_cont(pid)
        t1 = time.monotonic()
        sup.wait_forward("up", 10)
        back = time.monotonic() - t1
        assert back <= 0.5 + 1.5, back  # forward_retry plus the relay freeing the port
        print(f"frozen relay noticed in {noticed:.2f}s, back {back:.2f}s after SIGCONT")
        send_mail(listen, "after the freeze")
        wait_until(lambda: smtp_sink.raw, 10, what="message after the freeze")
    finally:
        for pid in frozen:
            sshd_cont(pid)
        assert sup.stop() == 0


def sshd_cont(pid: int) -> None:
    import os

    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGCONT)


def test_changed_host_key_fails_closed_without_offering_a_key(relay, tmp_path: Path) -> None:
    sshd, listen = relay
    sshd.stop()
    sshd.rotate_host_key()
    sshd.start()
    cfg = write_config(tmp_path / "tk.toml", sshd, [smtp_forward(listen, 25)], backoff_max=1.0)
    log_before = len(sshd.log_text())
    sup = SupervisorProcess(cfg)
    try:
        st = sup.wait_status(
            lambda s: s.tunnels[0].error_kind == "host-key-mismatch", 10, "host-key-mismatch"
        )
        assert st.tunnels[0].state in ("backoff", "connecting")
        assert "no credentials were sent" in (st.tunnels[0].last_error or "")
        assert not port_open(listen)
        time.sleep(0.5)
        sshd_log = sshd.log_text()[log_before:]
        assert "kex" in sshd_log.lower(), sshd_log  # the connection did reach sshd
        assert "publickey" not in sshd_log and "userauth-request" not in sshd_log, sshd_log
    finally:
        assert sup.stop() == 0


def test_key_removed_from_authorized_keys_is_auth_failed(relay, tmp_path: Path) -> None:
    sshd, listen = relay
    sshd.authorized_keys.write_text("")
    cfg = write_config(
        tmp_path / "tk.toml", sshd, [smtp_forward(listen, 25)], backoff_initial=0.5, backoff_max=4.0
    )
    sup = SupervisorProcess(cfg)
    try:
        st = sup.wait_status(
            lambda s: s.tunnels[0].error_kind == "auth-failed" and s.tunnels[0].state == "backoff",
            10,
            "auth-failed",
        )
        retry = st.tunnels[0].next_retry_in()
        assert retry is not None and 0 < retry <= 4.0 * 1.25
        assert st.forwards[0].state == "down"
    finally:
        assert sup.stop() == 0


def test_sigterm_exits_zero_and_frees_the_relay_port(relay, smtp_sink, tmp_path: Path) -> None:
    sshd, listen = relay
    cfg = write_config(tmp_path / "tk.toml", sshd, [smtp_forward(listen, smtp_sink.port)])
    sup = SupervisorProcess(cfg)
    sup.wait_forward("up", 15)
    assert port_open(listen)
    assert sup.stop() == 0
    wait_until(lambda: not port_open(listen), 5, what="relay port freed")
    assert "supervisor stopped" in sup.log()
    assert not (tmp_path / "control.sock").exists()


def test_second_instance_is_refused(relay, smtp_sink, tmp_path: Path) -> None:
    sshd, listen = relay
    cfg = write_config(tmp_path / "tk.toml", sshd, [smtp_forward(listen, smtp_sink.port)])
    first = SupervisorProcess(cfg)
    try:
        first.wait_forward("up", 15)
        second = SupervisorProcess(cfg)
        assert second.proc.wait(20) == 1
        assert "already running" in second.log()
        assert first.status() is not None  # the first one is untouched
    finally:
        assert first.stop() == 0
