"""Host keys: rotated under a running supervisor, unknown, and accept-new's first contact."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.faults import FaultSshd, relay_config, send, smtp_forward
from tests.support.procs import SupervisorProcess
from tests.support.sshd import SSH_KEYGEN, free_port, port_open, wait_until

pytestmark = pytest.mark.timeout(120)


def _offered_credentials(sshd_log: str) -> bool:
    """Whether sshd saw any authentication attempt (it logs them at LogLevel DEBUG1)."""
    return "userauth-request" in sshd_log or "publickey" in sshd_log


def _rotate(sshd: FaultSshd) -> int:
    """Reinstall the relay with a new host key; return the sshd log offset from then on."""
    sshd.stop()
    sshd.rotate_host_key()
    offset = len(sshd.log_text())
    sshd.start()
    return offset


def test_host_key_rotated_under_a_running_supervisor(
    make_relay, smtp_sink, fdir: Path, outcome: dict[str, Any]
) -> None:
    listen = free_port()
    sshd = make_relay(permitlisten=[f"127.0.0.1:{listen}"])
    backoff_max = 1.5
    cfg = relay_config(
        fdir / "tk.toml",
        sshd,
        [smtp_forward(listen, smtp_sink.port)],
        backoff_initial=0.2,
        backoff_max=backoff_max,
    )
    sup = SupervisorProcess(cfg)
    try:
        sup.wait_forward("up", 15)
        offset = _rotate(sshd)
        t0 = time.monotonic()
        st = sup.wait_status(
            lambda s: s.tunnels[0].error_kind == "host-key-mismatch", 10, "host-key-mismatch"
        )
        noticed = time.monotonic() - t0
        tunnel = st.tunnels[0]
        assert "no credentials were sent" in (tunnel.last_error or "")
        retry = tunnel.next_retry_in()
        # Slow retries, not a flood: backoff_max less its jitter (to /1.25), less the time since.
        assert retry is not None and retry > backoff_max / 1.25 - 0.5
        assert st.forwards[0].state == "down" and not port_open(listen)
        time.sleep(2 * backoff_max)  # a few more attempts, every one refused before auth
        attempts = sup.log().count("[host-key-mismatch]")
        relay_log = sshd.log_text()[offset:]
        assert "kex" in relay_log.lower()  # the attempts did reach sshd ...
        assert not _offered_credentials(relay_log), relay_log  # ... and offered no key
        sshd.write_known_hosts()  # the admin pins the relay's new key
        t1 = time.monotonic()
        sup.wait_forward("up", backoff_max * 1.25 + 10)
        back = time.monotonic() - t1
        send(listen, b"Subject: hi\r\n\r\nafter re-pinning\r\n")
        wait_until(lambda: smtp_sink.raw, 10, what="mail after re-pinning")
    finally:
        assert sup.stop() == 0
    outcome.update(
        noticed_s=round(noticed, 2),
        attempts_in_3s=attempts,
        retry_in_s=retry,
        credentials_offered=False,
        back_after_repin_s=round(back, 2),
    )
    assert attempts <= 4
    assert back <= backoff_max + 1.5


def test_unknown_host_under_strict_policy(make_relay, fdir: Path, outcome: dict[str, Any]) -> None:
    """known_hosts exists but pins only another host: host-key-unknown, no key offered."""
    sshd = make_relay()
    offset = len(sshd.log_text())
    cfg = relay_config(fdir / "tk.toml", sshd, [smtp_forward(free_port(), 25)], backoff_max=1.0)
    sshd.known_hosts.write_text(sshd.known_hosts_line("relay.elsewhere.test", 22))
    sup = SupervisorProcess(cfg)
    try:
        st = sup.wait_status(
            lambda s: s.tunnels[0].error_kind == "host-key-unknown", 10, "host-key-unknown"
        )
        error = st.tunnels[0].last_error or ""
        assert str(sshd.known_hosts) in error and "SHA256:" in error, error
        time.sleep(0.5)
        assert not _offered_credentials(sshd.log_text()[offset:])
    finally:
        assert sup.stop() == 0
    outcome.update(error=error)


def test_accept_new_pins_first_contact_then_is_strict(
    make_relay, smtp_sink, fdir: Path, outcome: dict[str, Any]
) -> None:
    listen = free_port()
    sshd = make_relay(permitlisten=[f"127.0.0.1:{listen}"])
    cfg = relay_config(
        fdir / "tk.toml",
        sshd,
        [smtp_forward(listen, smtp_sink.port)],
        host_key_policy="accept-new",
        backoff_max=1.0,
    )
    sshd.known_hosts.unlink()
    sup = SupervisorProcess(cfg)
    try:
        sup.wait_forward("up", 15)
        assert "pinned new host key" in sup.log()
        pinned = sshd.known_hosts.read_text()
        assert pinned == sshd.known_hosts_line("127.0.0.1", sshd.port), pinned
        # OpenSSH's own tools find the pin: the file is interchangeable with ssh's.
        found = subprocess.run(
            [SSH_KEYGEN, "-F", f"[127.0.0.1]:{sshd.port}", "-f", str(sshd.known_hosts)],
            capture_output=True,
            timeout=30,
        )
        assert found.returncode == 0
        offset = _rotate(sshd)
        st = sup.wait_status(
            lambda s: s.tunnels[0].error_kind == "host-key-mismatch", 10, "strict after pinning"
        )
        time.sleep(0.5)
        assert not _offered_credentials(sshd.log_text()[offset:])
        assert sshd.known_hosts.read_text() == pinned  # the new key was not pinned over it
    finally:
        assert sup.stop() == 0
    outcome.update(
        first_contact="pinned, connected",
        after_rotation=st.tunnels[0].error_kind,
        credentials_offered=False,
    )
