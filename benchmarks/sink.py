"""The sink behind every tunnel: greets with 220, answers PING, swallows `SINK n` bytes, says OK."""

from __future__ import annotations

import asyncio
import signal
import sys

GREETING = b"220 sink.bench ESMTP ready\r\n"


class SinkProtocol(asyncio.Protocol):
    """One connection: command lines (`PING`, `SINK <n>`, `QUIT`), or n bytes being swallowed."""

    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._line = bytearray()
        self._remaining = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        transport.write(GREETING)

    def data_received(self, data: bytes) -> None:
        assert self._transport is not None
        view = memoryview(data)
        while view:
            if self._remaining:
                took = min(self._remaining, len(view))
                self._remaining -= took
                view = view[took:]
                if not self._remaining:
                    self._transport.write(b"OK\r\n")
                continue
            end = bytes(view[:4096]).find(b"\n")
            if end < 0:
                self._line += view
                return
            self._line += view[: end + 1]
            view = view[end + 1 :]
            self._command(bytes(self._line).strip())
            self._line.clear()

    def _command(self, line: bytes) -> None:
        assert self._transport is not None
        if line == b"PING":
            self._transport.write(b"PONG\r\n")
        elif line.startswith(b"SINK "):
            self._remaining = int(line[5:])
            if not self._remaining:
                self._transport.write(b"OK\r\n")
        elif line == b"QUIT":
            self._transport.write(b"221 bye\r\n")
            self._transport.close()
        else:
            self._transport.write(b"500 what\r\n")

    def eof_received(self) -> bool:
        return False  # close our side too


async def serve(port: int) -> None:
    """Serve on 127.0.0.1:`port` until SIGTERM; prints READY once listening."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    server = await loop.create_server(SinkProtocol, "127.0.0.1", port, backlog=4096)
    print("READY", flush=True)
    async with server:
        await stop.wait()


def main() -> None:
    asyncio.run(serve(int(sys.argv[1])))


if __name__ == "__main__":
    main()
