"""Targets behind the tunnel that the tests can switch: an SMTP server (normal, slow-greet,
reset-in-data, mute, down) and an authoritative DNS-over-TCP server (normal, down)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import random
import socket
import struct
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from tests.support.faults import seq_of
from tests.support.sshd import free_port

T = TypeVar("T")

SMTP_MODES = ("normal", "slow-greet", "reset-in-data", "mute", "down")
ZONE = "example.org"
SOA = "ns1.example.org. hostmaster.example.org. 2026120101 3600 600 86400 300"


class LoopThread:
    """An asyncio event loop in a daemon thread, for servers the test controls from outside."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        async def cancel_all() -> None:
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        with contextlib.suppress(Exception):
            self.call(cancel_all(), 5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)


class _Switchable(LoopThread):
    """A TCP server on 127.0.0.1:`port` whose mode can change; "down" closes the listener and
    every open connection (the service stopped)."""

    def __init__(self, port: int | None = None) -> None:
        super().__init__()
        self.port = port or free_port()
        self.mode = "normal"
        self.connections = 0
        self._server: asyncio.base_events.Server | None = None
        self._open: set[asyncio.StreamWriter] = set()
        self._wake = asyncio.Event()  # set (and replaced) at each mode change
        self.call(self._listen())

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)

    def set_mode(self, mode: str) -> None:
        self.call(self._set_mode(mode))

    async def _set_mode(self, mode: str) -> None:
        if mode == self.mode:
            return
        old, self.mode = self.mode, mode
        self._wake.set()  # releases connections held by the old mode
        self._wake = asyncio.Event()
        if mode == "down":
            assert self._server is not None
            self._server.close()
            for writer in list(self._open):
                writer.transport.abort()
            await self._server.wait_closed()
            self._server = None
        elif old == "down":
            await self._listen()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._open.add(writer)
        try:
            await self.serve(reader, writer, self.mode, self._wake)
        except (OSError, EOFError, asyncio.IncompleteReadError, ValueError):
            pass  # the peer went away, or sent nonsense: end this connection
        finally:
            self._open.discard(writer)
            writer.close()

    async def serve(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        mode: str,
        wake: asyncio.Event,
    ) -> None:
        raise NotImplementedError

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.set_mode("down")
        super().close()


class SmtpTarget(_Switchable):
    """A small SMTP server behind the tunnel whose behaviour can be switched:

    normal: a plain MTA; slow-greet: greets after 3-8 s (sendmail's greet_pause);
    reset-in-data: sends RST in the middle of DATA; mute: accepts and never speaks;
    down: not listening. Leaving slow-greet or mute releases the held connections (greet now;
    close), as a restarted service would. Each delivered body is recorded (as a digest) before
    its 250.
    """

    def __init__(self, seed: int, port: int | None = None) -> None:
        self._rng = random.Random(seed)
        # (X-Seq, SHA-256) of each delivered body: a soak delivers gigabytes, kept as digests.
        self.received: list[tuple[int | None, bytes]] = []
        self.resets = 0
        super().__init__(port)

    async def serve(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        mode: str,
        wake: asyncio.Event,
    ) -> None:
        if mode == "mute":
            await wake.wait()
            return
        if mode == "slow-greet":
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), self._rng.uniform(3.0, 8.0))
        writer.write(b"220 mail.example.org ESMTP chaos\r\n")
        while line := await reader.readline():
            verb = line[:4].upper()
            if verb in (b"EHLO", b"HELO"):
                writer.write(b"250-mail.example.org\r\n250 8BITMIME\r\n")
            elif verb in (b"MAIL", b"RCPT", b"RSET", b"NOOP"):
                writer.write(b"250 OK\r\n")
            elif verb == b"QUIT":
                writer.write(b"221 bye\r\n")
                await writer.drain()
                return
            elif verb == b"DATA":
                writer.write(b"354 go ahead\r\n")
                await writer.drain()
                body = await self._data(reader, writer, mode == "reset-in-data")
                if body is None:
                    return
                self.received.append((seq_of(body), hashlib.sha256(body).digest()))
                writer.write(b"250 OK queued\r\n")
            else:
                writer.write(b"500 what?\r\n")
            await writer.drain()

    async def _data(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, reset: bool
    ) -> bytes | None:
        lines: list[bytes] = []
        while True:
            line = await reader.readline()
            if not line:
                return None
            if line == b".\r\n":
                return b"".join(lines)
            lines.append(line[1:] if line.startswith(b".") else line)
            if reset and len(lines) == 3:
                sock = writer.get_extra_info("socket")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                writer.transport.abort()  # SO_LINGER 0: the close sends RST
                self.resets += 1
                return None


class DnsTarget(_Switchable):
    """An authoritative DNS-over-TCP server for ZONE: SOA answered, anything else NXDOMAIN."""

    async def serve(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        mode: str,
        wake: asyncio.Event,
    ) -> None:
        import dns.flags
        import dns.message
        import dns.name
        import dns.rcode
        import dns.rdatatype
        import dns.rrset

        zone = dns.name.from_text(ZONE)
        while True:
            (length,) = struct.unpack("!H", await reader.readexactly(2))
            query = dns.message.from_wire(await reader.readexactly(length))
            reply = dns.message.make_response(query)
            reply.flags |= dns.flags.AA
            question = query.question[0]
            if question.name == zone and question.rdtype == dns.rdatatype.SOA:
                reply.answer.append(dns.rrset.from_text(zone, 300, "IN", "SOA", SOA))
            else:
                reply.set_rcode(dns.rcode.NXDOMAIN)
            wire = reply.to_wire()
            writer.write(struct.pack("!H", len(wire)) + wire)
            await writer.drain()
