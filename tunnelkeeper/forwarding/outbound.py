"""Local forwards (`[[tunnel.local]]`): this host listens, and each connection it accepts goes
out through the relay as a direct-tcpip channel to the target as the relay sees it (the
internal MTA's smarthost, say). The listener lives only while the relay connection does, so a
client is refused at once, and queues, while the tunnel is down."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from .. import config, ssh
from ..errors import ForwardFull, StreamLost, TunnelkeeperError
from .admission import Admission
from .forwarder import ForwarderRuntime

log = logging.getLogger(__name__)

CHUNK = 64 * 1024
CHANNEL_TIMEOUT = 10.0


class _Pipe:
    """One accepted local connection and its channel through the relay."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.task: asyncio.Task[None] | None = None

    def abort(self) -> None:
        self.writer.transport.abort()
        if self.task is not None:
            self.task.cancel()


class LocalRuntime(ForwarderRuntime):
    """The live side of one local forward: its listener, traffic, state, last probe."""

    direction = "local"

    def __init__(self, cfg: config.Local) -> None:
        super().__init__(cfg)
        self.cfg = cfg
        self._server: asyncio.Server | None = None
        self._admission = Admission(f"local {cfg.name}", cfg.max_connections)

    async def hold(self, conn: ssh.RelayConnection, tunnel: str, retry: float) -> None:
        """Listen on this host while `conn` lives; a port in use is retried every `retry`."""
        failures = 0
        while True:
            try:
                await self.open(conn)
            except OSError as exc:
                failures += 1
                if failures == 1:
                    log.warning(
                        "tunnel %s: local %s cannot listen on %s: %s; retrying every %gs",
                        tunnel,
                        self.cfg.name,
                        self.cfg.listen,
                        exc.strerror or exc,
                        retry,
                    )
                self.set_state("refused", f"cannot listen on {self.cfg.listen}: {exc.strerror}")
                await asyncio.sleep(retry)
                continue
            log.info(
                "tunnel %s: local %s up: %s -> relay -> %s",
                tunnel,
                self.cfg.name,
                self.cfg.listen,
                self.cfg.target,
            )
            return

    async def open(self, conn: ssh.RelayConnection) -> None:
        """Listen on this host for as long as `conn` lives. Raises OSError when the port
        cannot be taken (the caller retries)."""

        async def accepted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await self._carry(conn, reader, writer)

        listen = self.cfg.listen
        self._server = await asyncio.start_server(accepted, listen.host, listen.port)
        self.set_state("up")

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        self.traffic.abort_all()
        self.set_state("down", self.error)

    async def _carry(
        self, conn: ssh.RelayConnection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        pipe = _Pipe(writer)
        pipe.task = asyncio.current_task()
        try:
            self._admission.admit(self.traffic)
        except ForwardFull:
            writer.transport.abort()
            return
        self.traffic.opened(pipe)
        try:  # whatever happens from here on, even a cancellation, the count goes back down
            try:
                channel = await conn.open_stream(self.cfg.target, CHANNEL_TIMEOUT)
            except TunnelkeeperError as exc:
                log.warning("local %s: %s", self.cfg.name, exc)
                writer.transport.abort()
                return
            local = ssh.StreamPair(reader, writer, f"local connection on {self.cfg.listen}")
            pumps = [
                asyncio.ensure_future(self._pump(local, channel, outward=True)),
                asyncio.ensure_future(self._pump(channel, local, outward=False)),
            ]
            try:
                # Both directions end normally (EOF each way), or one breaks and ends both.
                await asyncio.wait(pumps, return_when=asyncio.FIRST_EXCEPTION)
            finally:
                for pump in pumps:
                    pump.cancel()
                for result in await asyncio.gather(*pumps, return_exceptions=True):
                    if isinstance(result, StreamLost):
                        log.debug("local %s: %s", self.cfg.name, result)
                    elif isinstance(result, Exception):
                        self.traffic.bug(result)  # a bug: reported, the tunnel restarts
                channel.close()
                local.close()
        finally:
            self.traffic.closed(pipe)

    async def _pump(self, src: ssh.Stream, dst: ssh.Stream, *, outward: bool) -> None:
        while data := await src.read(CHUNK):
            if outward:
                self.traffic.bytes_in += len(data)
            else:
                self.traffic.bytes_out += len(data)
            dst.write(data)
            await dst.drain()
        with contextlib.suppress(StreamLost):
            dst.write_eof()
