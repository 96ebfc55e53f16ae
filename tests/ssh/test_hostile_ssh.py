"""A hostile relay at the SSH layer, for what sshd will not stage: a probe channel that ends or
stalls mid-probe, a window that never opens, a DISCONNECT during authentication, banners that
are too long or binary, replies to global requests nobody made. Each must end as a classified
error or a failed probe, never as the end of the supervisor."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import socket
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import asyncssh
import pytest
from asyncssh.constants import MSG_REQUEST_FAILURE, MSG_REQUEST_SUCCESS
from asyncssh.packet import UInt32

from tests.support.embedded import keys, write
from tests.support.faults import rss_kb
from tests.support.polling import until
from tests.support.sshd import free_port
from tunnelkeeper import config
from tunnelkeeper.errors import ERROR_KINDS
from tunnelkeeper.state import SupervisorStatus, TunnelStatus
from tunnelkeeper.supervisor import Shutdown, Supervisor

pytestmark = pytest.mark.timeout(60)

GREETING = b"220 mail.example.org ESMTP\r\n"
# What a relay's misbehaviour may be reported as: never "config", and never "internal" (that is
# for our own bugs; a hostile peer is expected, and must be translated into the error tree).
EXTERNAL = set(ERROR_KINDS) - {"config", "internal"}


async def _smtp_target(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """The internal mail server behind the tunnel: greets, answers EHLO and QUIT."""
    with contextlib.suppress(OSError, asyncio.IncompleteReadError):
        writer.write(GREETING)
        while line := await reader.readline():
            writer.write(b"221 bye\r\n" if line.upper().startswith(b"QUIT") else b"250 ok\r\n")
            await writer.drain()
    writer.close()


class _Session(asyncssh.SSHTCPSession[bytes]):
    """A probe channel the relay answers itself, by `script(chan)`."""

    def __init__(self, script: Callable[[Any], object]) -> None:
        self._script = script

    def connection_made(self, chan: Any) -> None:
        self._script(chan)


class HostileServer(asyncssh.SSHServer):
    """Loopback listens like sshd; the rest is `relay.mode`."""

    def __init__(self, relay: HostileRelay) -> None:
        self._relay = relay
        self._conn: asyncssh.SSHServerConnection | None = None

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self._conn = conn
        self._relay.connections.append(conn)

    def begin_auth(self, username: str) -> bool:
        if self._relay.mode == "disconnect-in-auth" and self._conn is not None:
            self._relay.hits += 1
            self._conn.disconnect(
                self._relay.disconnect_code,
                "go away\x1b[2J\r\nFAKE: tunnel up\x07",
            )
        return True

    def server_requested(self, listen_host: str, listen_port: int) -> bool:
        if self._relay.mode == "unasked-replies" and self._relay.hits == 0:
            self._relay.hits += 1
            loop = asyncio.get_running_loop()
            loop.call_later(0.3, self._unasked_replies)
        return listen_host == "127.0.0.1"

    def _unasked_replies(self) -> None:
        # Replies to global requests the client never sent: a tcpip-forward success naming a
        # port, and a failure.
        assert self._conn is not None
        self._conn.send_packet(MSG_REQUEST_SUCCESS, UInt32(free_port()))
        self._conn.send_packet(MSG_REQUEST_FAILURE)

    def connection_requested(
        self, dest_host: str, dest_port: int, orig_host: str, orig_port: int
    ) -> Any:
        """Probe channels (direct-tcpip to a listen address) get the hostile treatment."""
        mode, conn = self._relay.mode, self._conn
        assert conn is not None
        self._relay.hits += mode in PROBE_CASES
        loop = asyncio.get_running_loop()
        if mode == "probe-eof":  # half a multi-line greeting, then EOF
            return _Session(
                lambda chan: (chan.write(b"220-mail.example.org\r\n"), chan.write_eof())
            )
        if mode == "probe-close":  # nothing said, the channel closed after a moment
            return _Session(lambda chan: loop.call_later(0.2, chan.close))
        if mode == "probe-drop":  # the whole connection dropped while the probe waits
            return _Session(lambda chan: loop.call_later(0.2, conn.abort))
        if mode == "window-shut":  # greets, but grants a window of 0 that never opens
            return conn.create_tcp_channel(window=0), _Session(lambda chan: chan.write(GREETING))
        return True


class HostileRelay:
    """An asyncssh relay on 127.0.0.1 in this process."""

    def __init__(
        self, host_key: bytes, client_pub: str, mode: str, disconnect_code: int = 0
    ) -> None:
        self.mode = mode
        self.disconnect_code = disconnect_code
        self.hits = 0
        self.connections: list[asyncssh.SSHServerConnection] = []
        self._host_key = asyncssh.import_private_key(host_key)
        self._authorized = asyncssh.import_authorized_keys(client_pub)
        self._acceptor: asyncssh.SSHAcceptor | None = None

    @property
    def port(self) -> int:
        assert self._acceptor is not None
        return int(self._acceptor.get_port())

    async def __aenter__(self) -> HostileRelay:
        self._acceptor = await asyncssh.listen(
            "127.0.0.1",
            0,
            server_factory=lambda: HostileServer(self),
            server_host_keys=[self._host_key],
            authorized_client_keys=self._authorized,
            allow_pty=False,
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        for conn in self.connections:
            conn.abort()
        assert self._acceptor is not None
        self._acceptor.close()
        await self._acceptor.wait_closed()


class Watch:
    """The supervisor in this process, its status sampled every 10 ms."""

    def __init__(self, supervisor: Supervisor, running: asyncio.Task[None]) -> None:
        self.supervisor = supervisor
        self.running = running
        self.seen: list[TunnelStatus] = []
        self._sampler = asyncio.create_task(self._sample())

    async def _sample(self) -> None:
        while True:
            tunnels = self.supervisor.snapshot().tunnels
            if tunnels and (not self.seen or tunnels[0] != self.seen[-1]):
                self.seen.append(tunnels[0])
            await asyncio.sleep(0.01)

    def status(self) -> SupervisorStatus:
        return self.supervisor.snapshot()

    def internal_errors(self) -> int:
        return max((getattr(t, "internal_errors", 0) for t in self.seen), default=0)

    def kinds(self) -> set[str]:
        return {t.error_kind for t in self.seen if t.error_kind}

    def errors(self) -> list[str]:
        return list(dict.fromkeys(t.last_error for t in self.seen if t.last_error))

    def probe_details(self) -> list[str]:
        return list(
            dict.fromkeys(
                f.probe.detail for t in self.seen for f in t.forwards if f.probe and not f.probe.ok
            )
        )

    async def until(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        """Wait for `predicate`; fail at once, with its error, if the supervisor ends."""

        def done() -> bool:
            if self.running.done():
                return True
            try:
                return predicate()
            except IndexError:  # no tunnel in the snapshot yet
                return False

        await until(done, timeout, what, interval=0.002)
        self.alive(what)

    def alive(self, what: str = "") -> None:
        if self.running.done():
            exc = self.running.exception() if not self.running.cancelled() else None
            raise AssertionError(f"the supervisor ended ({what}): {exc!r}") from exc

    def stop(self) -> None:
        self._sampler.cancel()


@contextlib.asynccontextmanager
async def supervised(
    fdir: Path, port: int, host_pub: str, client_key: Path, target: int, **tunnel: Any
) -> AsyncIterator[Watch]:
    """The real supervisor, in this process, with one smtp forward through 127.0.0.1:`port`."""
    write(fdir / "known_hosts", f"[127.0.0.1]:{port} {host_pub}\n")
    settings: dict[str, Any] = {
        "backoff_initial": 0.1,
        "backoff_max": 0.5,
        "connect_timeout": 2,
        "keepalive_interval": 1,
        "probe_interval": 0.5,
        "probe_timeout": 1.0,
    }
    settings.update(tunnel)
    raw = {
        "supervisor": {"control_socket": str(fdir / "control.sock"), "shutdown_grace": 1},
        "tunnel": [
            {
                "name": "hostile",
                "host": "127.0.0.1",
                "port": port,
                "user": "tunnel",
                "identity": str(client_key),
                "known_hosts": str(fdir / "known_hosts"),
                **settings,
                "forward": [
                    {
                        "name": "smtp",
                        "service": "smtp",
                        "listen": f"127.0.0.1:{free_port()}",
                        "target": f"127.0.0.1:{target}",
                    }
                ],
            }
        ],
    }
    supervisor = Supervisor(config.from_dict(raw, fdir / "tk.toml"))
    shutdown = Shutdown()
    running = asyncio.create_task(supervisor.run(shutdown))
    watch = Watch(supervisor, running)
    try:
        yield watch
    finally:
        watch.stop()
        shutdown.request()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(running, 15)


def _escaped(text: str) -> bool:
    return not any(ord(c) < 32 or ord(c) == 127 for c in text)


@pytest.fixture
async def smtp_target() -> AsyncIterator[int]:
    server = await asyncio.start_server(_smtp_target, "127.0.0.1", 0)
    async with server:
        yield int(server.sockets[0].getsockname()[1])


# -- probe channels that misbehave ---------------------------------------------------------------


PROBE_CASES = {
    # mode: (what a failed probe must say, whether the connection itself is lost)
    "probe-eof": ("closed inside the greeting", False),
    "probe-close": ("closed before the SMTP greeting", False),
    "window-shut": ("no answer within 1s", False),
    "probe-drop": ("", True),
}


@pytest.mark.parametrize("mode", list(PROBE_CASES))
async def test_probe_channel_misbehaves(
    mode: str, fdir: Path, smtp_target: int, outcome: dict[str, Any]
) -> None:
    host_key, host_pub, client_key, client_pub = keys(fdir)
    detail, drops = PROBE_CASES[mode]
    async with (
        HostileRelay(host_key, client_pub, mode) as relay,
        supervised(fdir, relay.port, host_pub, client_key, smtp_target) as watch,
    ):
        if drops:
            await watch.until(lambda: watch.status().tunnels[0].connects >= 3, 20, "3 drops")
        else:
            await watch.until(lambda: bool(watch.probe_details()), 15, "a failed probe")
            await asyncio.sleep(1.5)  # more probes, on the same connection
        status = watch.status()
        watch.alive("after the hostile probes")
    tunnel = status.tunnels[0]
    outcome.update(
        mode=mode,
        probes_hit=relay.hits,
        connects=tunnel.connects,
        error_kinds=sorted(watch.kinds()),
        probe_failures=watch.probe_details()[:2],
    )
    assert relay.hits >= 2, outcome
    assert watch.kinds() <= EXTERNAL and watch.internal_errors() == 0, outcome
    if drops:
        assert "disconnected" in watch.kinds(), outcome
    else:
        assert tunnel.connects == 1 and tunnel.state == "up", outcome
        assert any(detail in d for d in watch.probe_details()), outcome


# -- the connection itself -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        (asyncssh.DISC_NO_MORE_AUTH_METHODS_AVAILABLE, "auth-failed"),
        (asyncssh.DISC_BY_APPLICATION, "disconnected"),
    ],
)
async def test_disconnect_during_authentication(
    code: int, kind: str, fdir: Path, smtp_target: int, outcome: dict[str, Any]
) -> None:
    host_key, host_pub, client_key, client_pub = keys(fdir)
    async with (
        HostileRelay(host_key, client_pub, "disconnect-in-auth", code) as relay,
        supervised(fdir, relay.port, host_pub, client_key, smtp_target) as watch,
    ):
        await watch.until(lambda: relay.hits >= 3 and bool(watch.kinds()), 20, "3 attempts")
        status = watch.status()
    tunnel = status.tunnels[0]
    outcome.update(attempts=relay.hits, error_kinds=sorted(watch.kinds()), last=watch.errors()[-1:])
    assert tunnel.connects == 0 and tunnel.state in ("backoff", "connecting"), outcome
    assert watch.kinds() == {kind} and watch.internal_errors() == 0, outcome
    # The relay's reason is shown, but never its control characters (a forged log line).
    assert all(_escaped(e) for e in watch.errors()), watch.errors()


async def test_replies_to_requests_never_made(
    fdir: Path, smtp_target: int, outcome: dict[str, Any]
) -> None:
    host_key, host_pub, client_key, client_pub = keys(fdir)
    async with (
        HostileRelay(host_key, client_pub, "unasked-replies") as relay,
        supervised(fdir, relay.port, host_pub, client_key, smtp_target) as watch,
    ):
        await watch.until(lambda: relay.hits == 1, 10, "the unasked replies")
        await asyncio.sleep(1.0)
        await watch.until(
            lambda: all(f.state == "up" for f in watch.status().forwards), 10, "forward up"
        )
        await watch.until(
            lambda: any(f.probe and f.probe.ok for f in watch.status().forwards), 10, "ok"
        )
        status = watch.status()
    outcome.update(connects=status.tunnels[0].connects, error_kinds=sorted(watch.kinds()))
    assert watch.kinds() <= EXTERNAL and watch.internal_errors() == 0, outcome


# -- banners -------------------------------------------------------------------------------------


BANNERS: dict[str, bytes] = {
    "endless-line": b"x" * 300_000,
    "many-lines": b"hello, this is not ssh\r\n" * 2000,
    "binary-version": b"SSH-2.0-\xff\xfe\x00\x1b[31mred\r\n",
    "long-version": b"SSH-2.0-" + b"A" * 20_000 + b"\r\n",
    "binary-junk": bytes(range(256)) * 64,
    "ssh-1": b"SSH-1.5-ancient\r\n",
}


async def _banner_server(banner: bytes) -> tuple[asyncio.base_events.Server, list[int]]:
    served = [0]

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        served[0] += 1
        with contextlib.suppress(OSError):
            writer.write(banner)
            await writer.drain()
            await asyncio.wait_for(reader.read(1 << 20), 5)
        writer.close()

    return await asyncio.start_server(serve, "127.0.0.1", 0), served


@pytest.mark.parametrize("name", list(BANNERS))
async def test_hostile_banner(
    name: str, fdir: Path, smtp_target: int, outcome: dict[str, Any]
) -> None:
    _host_key, host_pub, client_key, _client_pub = keys(fdir)
    server, served = await _banner_server(BANNERS[name])
    port = int(server.sockets[0].getsockname()[1])
    async with server, supervised(fdir, port, host_pub, client_key, smtp_target) as watch:
        await watch.until(lambda: served[0] >= 3 and bool(watch.kinds()), 20, "3 attempts")
        status = watch.status()
    tunnel = status.tunnels[0]
    outcome.update(banner=name, attempts=served[0], error_kinds=sorted(watch.kinds()))
    outcome.update(internal_errors=watch.internal_errors())
    outcome.update(last_error=watch.errors()[-1][:120] if watch.errors() else None)
    assert tunnel.connects == 0, outcome
    assert watch.kinds() <= EXTERNAL and watch.internal_errors() == 0, outcome
    assert all(_escaped(e) and len(e) < 1000 for e in watch.errors()), watch.errors()


# -- a forwarded channel that never opens its window ---------------------------------------------


class _Pusher:
    """A target that writes as fast as it is let, from a thread; counts what it got rid of."""

    def __init__(self, total: int) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(1)
        self.port = int(self.sock.getsockname()[1])
        self.sent = 0
        self._total = total
        self._thread = threading.Thread(target=self._push, daemon=True)
        self._thread.start()

    def _push(self) -> None:
        conn, _ = self.sock.accept()
        chunk = b"p" * 65536
        with conn, contextlib.suppress(OSError):
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
            while self.sent < self._total:
                self.sent += conn.send(chunk)

    def close(self) -> None:
        self.sock.close()


async def test_forwarded_channel_window_never_opens(fdir: Path, outcome: dict[str, Any]) -> None:
    """The relay opens a forwarded channel with a window of 0 and the target has 64 MiB to
    say: flow control must stop reading the target, not buffer it all."""
    total = 64 * 1024 * 1024
    host_key, host_pub, client_key, client_pub = keys(fdir)
    pusher = _Pusher(total)
    try:
        async with (
            HostileRelay(host_key, client_pub, "plain") as relay,
            supervised(
                fdir, relay.port, host_pub, client_key, pusher.port, probe_interval=0
            ) as watch,
        ):
            await watch.until(lambda: watch.status().forwards[0].state == "up", 10, "up")
            listen = int(watch.status().forwards[0].listen.rsplit(":", 1)[1])
            gc.collect()
            base = peak = rss_kb(os.getpid())
            chan, _ = await relay.connections[0].create_connection(
                asyncssh.SSHTCPSession, "127.0.0.1", listen, window=0
            )
            for _ in range(60):  # 3 s
                await asyncio.sleep(0.05)
                peak = max(peak, rss_kb(os.getpid()))
            active = watch.status().forwards[0].connections_active
            watch.alive("with a shut window")
            chan.close()
    finally:
        pusher.close()
    outcome.update(target_sent_kib=pusher.sent >> 10, peak_rss_growth_kib=peak - base)
    assert active == 1, outcome
    assert pusher.sent < 16 * 1024 * 1024, outcome  # kernel buffers and one pause's worth
    assert peak - base < 16 * 1024, outcome
