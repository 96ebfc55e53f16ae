"""Byte streams for probes: a relay channel or a local connection, whose every call returns
data or raises a tunnelkeeper error (StreamLost, ProbeError), never a library exception."""

from __future__ import annotations

import contextlib
from typing import Any, Protocol

from ..errors import ProbeError, StreamLost
from ..peertext import peer_text
from .translate import WIRE_ERRORS

MAX_LINE = 4096  # an SMTP reply line is at most 512 bytes; a longer one is a peer's trick
READ_SIZE = 4096


class Stream(Protocol):
    """What probes need of a byte stream: asyncio-like reader/writer in one object."""

    async def read(self, n: int) -> bytes: ...
    async def readline(self) -> bytes: ...
    async def readexactly(self, n: int) -> bytes: ...
    def write(self, data: bytes) -> None: ...
    def write_eof(self) -> None: ...
    async def drain(self) -> None: ...
    def close(self) -> None: ...


class StreamPair:
    """A reader and writer (asyncio's or asyncssh's, which share the API) as one Stream.

    Reads are bounded: a line longer than MAX_LINE raises ProbeError instead of growing a
    buffer for as long as the peer keeps talking.
    """

    def __init__(self, reader: Any, writer: Any, what: str = "channel") -> None:
        self._reader = reader
        self._writer = writer
        self._what = what
        self._buffer = b""

    def _lost(self, exc: BaseException) -> StreamLost:
        detail = peer_text(str(exc)) or type(exc).__name__
        return StreamLost(f"{self._what} broke: {detail}")

    async def _more(self, n: int) -> bytes:
        try:
            return bytes(await self._reader.read(n))
        except WIRE_ERRORS as exc:
            raise self._lost(exc) from exc

    async def read(self, n: int) -> bytes:
        if self._buffer:
            data, self._buffer = self._buffer[:n], self._buffer[n:]
            return data
        return await self._more(n)

    async def readline(self) -> bytes:
        """One line with its newline; what is left at the end of the stream; b"" at EOF."""
        while True:
            end = self._buffer.find(b"\n")
            if end >= 0:
                line, self._buffer = self._buffer[: end + 1], self._buffer[end + 1 :]
                return line
            if len(self._buffer) > MAX_LINE:
                raise ProbeError(f"the peer sent a line longer than {MAX_LINE} bytes")
            data = await self._more(READ_SIZE)
            if not data:
                line, self._buffer = self._buffer, b""
                return line
            self._buffer += data

    async def readexactly(self, n: int) -> bytes:
        while len(self._buffer) < n:
            data = await self._more(max(READ_SIZE, n - len(self._buffer)))
            if not data:
                raise StreamLost(f"{self._what} ended after {len(self._buffer)} of {n} bytes")
            self._buffer += data
        data, self._buffer = self._buffer[:n], self._buffer[n:]
        return data

    def write(self, data: bytes) -> None:
        try:
            self._writer.write(data)
        except WIRE_ERRORS as exc:
            raise self._lost(exc) from exc

    def write_eof(self) -> None:
        """Half-close: we send no more, and may still read."""
        try:
            self._writer.write_eof()
        except WIRE_ERRORS as exc:
            raise self._lost(exc) from exc

    async def drain(self) -> None:
        try:
            await self._writer.drain()
        except WIRE_ERRORS as exc:
            raise self._lost(exc) from exc

    def close(self) -> None:
        with contextlib.suppress(*WIRE_ERRORS):  # already gone: closing is all we wanted
            self._writer.close()
