"""What carries the SSH stream: TCP (straight or through a proxy) with packet-sized reads and
quick ACKs, or a channel of the previous jump host; and the moment the relay last sent
anything (our own evidence for a keepalive timeout)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable
from typing import Any

from ..config import Proxy
from .hostkeys import HostKeyVerdict
from .proxy import open_through

_TCP_QUICKACK: int | None = getattr(socket, "TCP_QUICKACK", None)  # Linux only
READ_CHUNK = 36 * 1024  # one of sshd's 32 KiB channel packets with its framing


class Watch:
    """When the relay last sent us anything: our own evidence for a keepalive timeout."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._last_rx = self._loop.time()

    def saw_data(self) -> None:
        self._last_rx = self._loop.time()

    def silent_for(self) -> float:
        return self._loop.time() - self._last_rx


def instrument(conn: Any, verdict: HostKeyVerdict, watch: Watch) -> None:
    """Let our host-key verdict see asyncssh's check of the relay's key, and `watch` see every
    byte that arrives, on this one connection object."""
    conn.validate_server_host_key = verdict.wrap(conn.validate_server_host_key)
    received = conn.data_received

    def data_received(data: bytes, datatype: Any = None) -> None:
        watch.saw_data()
        received(data, datatype)

    conn.data_received = data_received


class PacketSizedReads:
    """asyncssh's `tunnel` hook used for a TCP connection (straight, or through a proxy), so
    that asyncssh is fed what the socket gives in pieces of about one relay packet.

    asyncssh re-slices its whole input buffer for each packet it takes off the front: a
    256 KiB read (eight of sshd's 32 KiB packets) is copied about seven times over before it
    is used up. Fed packet-sized pieces, each byte is copied about once: 10 % less CPU per
    forwarded byte (benchmarks/fig1_throughput).
    """

    def __init__(
        self,
        verdict: HostKeyVerdict,
        watch: Watch,
        proxy: Proxy | None = None,
        proxy_auth: str | None = None,
        timeout: float = 10.0,
    ) -> None:
        self._verdict = verdict
        self._watch = watch
        self._proxy = proxy
        self._proxy_auth = proxy_auth
        self._timeout = timeout
        self.in_proxy = False  # the proxy's handshake is under way: a timeout is the proxy's

    async def create_connection(
        self, session_factory: Callable[[], Any], host: str, port: int
    ) -> tuple[asyncio.BaseTransport, Any]:
        conn = session_factory()
        instrument(conn, self._verdict, self._watch)
        loop = asyncio.get_running_loop()
        chunker = Chunker(conn)
        if self._proxy is None:
            transport, _ = await loop.create_connection(lambda: chunker, host, port)
            return transport, conn
        self.in_proxy = True
        sock, extra = await open_through(self._proxy, host, port, self._proxy_auth, self._timeout)
        self.in_proxy = False
        transport, _ = await loop.create_connection(lambda: chunker, sock=sock)
        if extra:  # the relay's banner came in the proxy's last read
            chunker.data_received(extra)
        return transport, conn


class ThroughHop:
    """asyncssh's `tunnel` hook for the next connection of a ProxyJump chain: a direct-tcpip
    channel on the hop's connection, instrumented like a direct one."""

    def __init__(self, hop: Any, verdict: HostKeyVerdict, watch: Watch) -> None:
        self._hop = hop
        self._verdict = verdict
        self._watch = watch

    async def create_connection(
        self, session_factory: Callable[[], Any], host: str, port: int
    ) -> tuple[Any, Any]:
        conn = session_factory()
        instrument(conn, self._verdict, self._watch)
        chan, _ = await self._hop.create_connection(lambda: conn, host, port)
        return chan, conn


class Chunker(asyncio.Protocol):
    """Passes everything to asyncssh's connection, data in READ_CHUNK pieces, and acknowledges
    what it read at once.

    sshd keeps Nagle on for a session without a terminal: when it sends two messages in a row
    and we have nothing to answer the first with, the second waits for our delayed ACK (40 ms
    on Linux). That stalled the reply to our first tcpip-forward after every login (the
    relay's debug and host-key messages come just before it) and every CHANNEL_OPEN that
    followed a channel's CHANNEL_CLOSE. TCP_QUICKACK after each read sends a pending ACK now;
    when asyncssh answered anything, the ACK went with it and this sends nothing.
    """

    def __init__(self, conn: Any) -> None:
        self._conn = conn
        self._transport: asyncio.BaseTransport | None = None
        self._sock: Any = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport
        if _TCP_QUICKACK is not None:
            self._sock = transport.get_extra_info("socket")
        self._conn.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if len(data) <= READ_CHUNK:
            self._conn.data_received(data)
        else:
            view = memoryview(data)
            for start in range(0, len(data), READ_CHUNK):
                if self._transport is not None and self._transport.is_closing():
                    return  # asyncssh closed the connection on what it has read so far
                self._conn.data_received(view[start : start + READ_CHUNK])
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.setsockopt(socket.IPPROTO_TCP, _TCP_QUICKACK, 1)

    def eof_received(self) -> bool | None:
        return self._conn.eof_received()  # type: ignore[no-any-return]  # asyncssh is untyped here

    def connection_lost(self, exc: Exception | None) -> None:
        self._conn.connection_lost(exc)

    def pause_writing(self) -> None:
        self._conn.pause_writing()

    def resume_writing(self) -> None:
        self._conn.resume_writing()
