"""Text a hostile relay or network sends (DISCONNECT reasons before key exchange, banners,
SMTP greetings) reaches status, check, logs and the terminal escaped; and it never decides
the error kind."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.embedded import World, forward, wait_for
from tests.support.procs import SupervisorProcess
from tests.support.sshd import free_port
from tunnelkeeper.peertext import EscapingFormatter, peer_text
from tunnelkeeper.supervisor import Shutdown, Supervisor

pytestmark = pytest.mark.timeout(60)

NASTY = "\x1b[2J\x1b]0;owned\x07\x1b]52;c;ZXZpbA==\x07 hi\nforged: host key verified \u202egnp"
RAW = ("\x1b", "\x07", "\u202e", "\nforged")


def _disconnect_packet(code: int, reason: str) -> bytes:
    """An unencrypted SSH_MSG_DISCONNECT, as anyone on the path can send before key exchange."""
    text = reason.encode()
    payload = bytes([1]) + struct.pack("!I", code) + struct.pack("!I", len(text)) + text
    payload += struct.pack("!I", 0)  # language tag
    pad = 8 - (len(payload) + 5) % 8
    pad += 8 if pad < 4 else 0
    return struct.pack("!IB", len(payload) + pad + 1, pad) + payload + b"\0" * pad


class HostileRelay:
    """Speaks the SSH banner, reads ours, then sends DISCONNECT(code, reason) and hangs up."""

    def __init__(self, code: int, reason: str, banner: bytes = b"SSH-2.0-Evil_1.0\r\n") -> None:
        self.code, self.reason, self.banner = code, reason, banner
        self.port = free_port()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def __enter__(self) -> HostileRelay:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(self.banner)
            await asyncio.wait_for(reader.readline(), 5)
            await asyncio.wait_for(reader.read(4096), 5)  # the client's KEXINIT
            writer.write(_disconnect_packet(self.code, self.reason))
            await writer.drain()
        except (OSError, TimeoutError):
            pass
        finally:
            writer.close()


def _config(folder: Path, port: int, **supervisor: Any) -> Path:
    key = folder / "id"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True, timeout=30
    )
    (folder / "known_hosts").write_text(
        f"[127.0.0.1]:{port} " + " ".join(Path(f"{key}.pub").read_text().split()[:2]) + "\n"
    )
    cfg = folder / "tk.toml"
    cfg.write_text(
        f'[supervisor]\ncontrol_socket = "{folder}/control.sock"\n'
        + "".join(f"{k} = {json.dumps(v)}\n" for k, v in supervisor.items())
        + f'\n[[tunnel]]\nname = "evil"\nhost = "127.0.0.1"\nport = {port}\nuser = "t"\n'
        f'identity = "{key}"\nknown_hosts = "{folder}/known_hosts"\n'
        "backoff_initial = 0.2\nbackoff_max = 0.5\nprobe_interval = 0\n"
        '\n[[tunnel.forward]]\nname = "smtp"\nlisten = "127.0.0.1:2525"\n'
        'target = "127.0.0.1:25"\n'
    )
    return cfg


@pytest.fixture
def folder(fdir: Path) -> Iterator[Path]:
    yield fdir


def _clean(text: str) -> bool:
    return not any(raw in text for raw in RAW)


@pytest.mark.parametrize(
    ("code", "reason", "not_kind"),
    [
        (9, NASTY, "host-key-mismatch"),  # HOST_KEY_NOT_VERIFIABLE, said by the relay
        (11, "keepalive timeout " + NASTY, "keepalive-timeout"),  # BY_APPLICATION
    ],
    ids=["host-key-code", "keepalive-text"],
)
def test_disconnect_reason_is_escaped_and_decides_nothing(
    folder: Path, code: int, reason: str, not_kind: str, outcome: dict[str, Any]
) -> None:
    with HostileRelay(code, reason) as relay:
        cfg = _config(folder, relay.port)
        runs = {}
        for args in (["--json"], []):
            proc = subprocess.run(
                [sys.executable, "-m", "tunnelkeeper", "check", "-c", str(cfg), *args],
                capture_output=True,
                text=True,
                timeout=30,
            )
            runs["json" if args else "table"] = proc.stdout + proc.stderr
        result = json.loads(runs["json"])
        supervisor = SupervisorProcess(cfg)
        try:
            supervisor.wait_status(
                lambda st: st.tunnels and st.tunnels[0].connects == 0 and st.tunnels[0].last_error,
                10,
                "a failed attempt",
            )
            status = subprocess.run(
                [sys.executable, "-m", "tunnelkeeper", "status", "-c", str(cfg)],
                capture_output=True,
                text=True,
                timeout=30,
            )
        finally:
            supervisor.stop()
        log = supervisor.log()
    tunnel = result["tunnels"][0]
    outcome.update(error_kind=tunnel["error_kind"], last_error=tunnel["last_error"][:120])
    assert tunnel["error_kind"] == "disconnected" != not_kind
    assert "\\x1b" in tunnel["last_error"] and 'said "' in tunnel["last_error"]
    for name, text in {**runs, "status": status.stdout, "log": log}.items():
        assert _clean(text), (name, text)
    assert not any(line.startswith("forged") for line in log.splitlines())


async def test_smtp_greeting_is_escaped_in_probe_and_status(world: World) -> None:
    async def mta(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 " + NASTY.replace("\n", " ").encode() + b"\r\n")
        while line := await reader.readline():
            writer.write(b"221 bye\r\n" if line.startswith(b"QUIT") else b"250 ok\r\n")
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(mta, "127.0.0.1", 0)
    async with server:
        port = server.sockets[0].getsockname()[1]
        sup = Supervisor(
            world.config(world.tunnel("t", [forward("smtp", port, "smtp")], probe_interval=0.2))
        )
        shutdown = Shutdown()
        running = asyncio.create_task(sup.run(shutdown))
        try:
            await wait_for(
                lambda: sup.snapshot().forwards and sup.snapshot().forwards[0].probe is not None,
                10,
                "a probe",
            )
            probe = sup.snapshot().forwards[0].probe
            assert probe is not None
            detail = probe.detail
            text = json.dumps(sup.snapshot().to_json(), ensure_ascii=False)
        finally:
            shutdown.request()
            await asyncio.wait_for(running, 15)
    assert detail.startswith("220 ") and "\\x1b]0;owned\\x07" in detail and "\\u202e" in detail
    assert _clean(detail) and _clean(text)


def test_log_lines_cannot_be_forged() -> None:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(EscapingFormatter("%(levelname)s %(message)s"))
    logger = logging.getLogger("tunnelkeeper.test-forge")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("relay said %s", "bye\nINFO forged: host key verified\x1b[2J")
    finally:
        logger.removeHandler(handler)
    assert out.getvalue().count("\n") == 1 and "\\x0a" in out.getvalue()
    assert _clean(out.getvalue())


def test_peer_text_is_capped() -> None:
    long = peer_text("x" * 10_000)
    assert len(long) == 201 and long.endswith("…")
    assert peer_text(b"\xff\xfe\x00") == "\ufffd\ufffd\\x00"
