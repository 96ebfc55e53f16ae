"""The control socket under hostile clients, and against another local user."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import stat
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.faults import fd_count, relay_config, smtp_forward
from tests.support.nobody import as_nobody
from tests.support.procs import SupervisorProcess
from tests.support.sshd import free_port

pytestmark = pytest.mark.timeout(120)


def _client(path: Path, payload: bytes, *, close_early: bool = False) -> bytes:
    """Send `payload` and read the reply (b"" when the server just closed)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(str(path))
        # The server may give up on a huge line before we finished writing it.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(payload)
        if close_early:
            return b""
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except ConnectionResetError:
            pass
        return b"".join(chunks)


@pytest.fixture
def running(make_relay, fdir: Path):
    """A supervisor whose relay is down (it sits in backoff), with its control socket in a
    folder another user may walk through but not list."""
    fdir.chmod(0o711)
    sshd = make_relay(start=False)
    cfg = relay_config(
        fdir / "tk.toml",
        sshd,
        [smtp_forward(free_port(), 25)],
        supervisor={"control_socket": str(fdir / "run" / "control.sock")},
        backoff_max=1.0,
    )
    sup = SupervisorProcess(cfg)
    sup.socket = fdir / "run" / "control.sock"
    try:
        sup.wait_status(lambda s: s.tunnels[0].state != "connecting", 15, "first attempt")
        yield sup
    finally:
        sup.stop()


HOSTILE: list[tuple[str, bytes]] = [
    ("garbage", b"\x00\xff\xfe garbage \x80\n"),
    ("not-json", b"status please\n"),
    ("json-list", b"[1, 2, 3]\n"),
    ("unknown-cmd", b'{"cmd": "shutdown"}\n'),
    ("cmd-not-str", b'{"cmd": ["status"]}\n'),
    ("deep-json", b"[" * 2000 + b"]" * 2000 + b"\n"),
    ("huge-line", b"x" * (8 * 1024 * 1024)),
    ("huge-line-newline", b"{" * 100_000 + b"\n"),
    ("empty-line", b"\n"),
    ("status-then-junk", b'{"cmd": "status"}\n' + b"\x00" * 10_000),
]


def test_hostile_clients_do_not_hurt_the_supervisor(running, outcome: dict[str, Any]) -> None:
    sup = running
    path = sup.socket
    fds_before = fd_count(sup.proc.pid)
    replies: dict[str, str] = {}
    for name, payload in HOSTILE:
        reply = _client(path, payload)
        replies[name] = reply[:60].decode("utf-8", "replace")
        if name != "status-then-junk" and reply:
            assert b"error" in reply and b"tunnels" not in reply, (name, reply[:200])
        assert sup.status() is not None, f"no status after {name}"
    for _ in range(20):  # disconnect mid-request, at several points
        _client(path, b'{"cmd": "sta', close_early=True)
        _client(path, b"", close_early=True)
    # Clients that connect and say nothing must not block the others.
    silent = []
    for _ in range(50):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(str(path))
        silent.append(sock)
    t0 = time.monotonic()
    assert sup.status() is not None
    answered_beside_silent = time.monotonic() - t0
    for sock in silent:
        sock.close()
    time.sleep(0.5)
    fds_after = fd_count(sup.proc.pid)
    log = sup.log()
    outcome.update(
        hostile_requests=len(HOSTILE) + 40,
        silent_clients=50,
        status_beside_silent_s=round(answered_beside_silent, 3),
        fds_before=fds_before,
        fds_after=fds_after,
        replies={k: v for k, v in replies.items() if k in ("garbage", "huge-line", "deep-json")},
    )
    assert sup.proc.poll() is None
    assert answered_beside_silent < 1.0
    assert "Traceback" not in log and "Unhandled exception" not in log, log[-3000:]
    assert fds_after <= fds_before + 1


def test_socket_modes_and_another_user(running, outcome: dict[str, Any]) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to act as a second user (CI runs the suite as root)")
    sup = running
    path: Path = sup.socket
    sock_mode = stat.S_IMODE(path.stat().st_mode)
    dir_mode = stat.S_IMODE(path.parent.stat().st_mode)
    lock_mode = stat.S_IMODE(path.with_name(path.name + ".lock").stat().st_mode)
    assert (sock_mode, dir_mode, lock_mode) == (0o600, 0o700, 0o600)

    def ask() -> str:
        return _client(path, b'{"cmd": "status"}\n').decode()

    denied_by_modes = as_nobody(ask)
    assert denied_by_modes.get("error") == "PermissionError", denied_by_modes
    # An admin loosens the modes by mistake: the peer-uid check still turns the user away.
    path.parent.chmod(0o755)
    path.chmod(0o666)
    try:
        denied_by_uid = as_nobody(ask)
    finally:
        path.parent.chmod(0o700)
        path.chmod(0o600)
    reply = denied_by_uid.get("value", "")
    assert json.loads(reply) == {"error": "permission denied"}, denied_by_uid
    assert "tunnels" not in reply and sup.status() is not None
    outcome.update(
        modes={"socket": oct(sock_mode), "dir": oct(dir_mode), "lock": oct(lock_mode)},
        nobody_with_default_modes=denied_by_modes,
        nobody_with_loosened_modes=json.loads(reply),
    )
