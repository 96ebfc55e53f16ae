"""An embedded SSH relay on loopback, for `tunnelkeeper demo` and for faults sshd cannot stage."""

from __future__ import annotations

import asyncssh

from ..resources import Resource


class _RelayServer(asyncssh.SSHServer):
    def __init__(self, relay: EmbeddedRelay) -> None:
        self._relay = relay
        self._conn: asyncssh.SSHServerConnection | None = None

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self._conn = conn
        self._relay.connections.add(conn)

    def connection_lost(self, exc: Exception | None) -> None:
        self._relay.connections.discard(self._conn)

    def server_requested(self, listen_host: str, listen_port: int) -> bool:
        # Like `GatewayPorts no`: a client may only ever listen on loopback.
        return listen_host in ("127.0.0.1", "localhost", "::1") and listen_port != 0

    def connection_requested(
        self, dest_host: str, dest_port: int, orig_host: str, orig_port: int
    ) -> bool:
        return self._relay.allow_direct and dest_host in ("127.0.0.1", "localhost", "::1")


class EmbeddedRelay(Resource):
    """A small in-process SSH relay on 127.0.0.1, for `tunnelkeeper demo` and fault tests.

    It accepts only the given authorized key, lets clients listen on loopback only, and
    can drop every connection at once to show recovery.
    """

    def __init__(
        self, host_key: bytes, authorized_keys: str, *, port: int = 0, allow_direct: bool = True
    ) -> None:
        self._host_key = asyncssh.import_private_key(host_key)
        self._authorized = asyncssh.import_authorized_keys(authorized_keys)
        self._port = port
        self.allow_direct = allow_direct
        self.connections: set[asyncssh.SSHServerConnection | None] = set()
        self._acceptor: asyncssh.SSHAcceptor | None = None

    @property
    def host_public_line(self) -> str:
        return self._host_key.export_public_key("openssh").decode().strip()

    @property
    def port(self) -> int:
        assert self._acceptor is not None, "relay not started"
        return int(self._acceptor.get_port())

    async def start(self) -> None:
        self._acceptor = await asyncssh.listen(
            "127.0.0.1",
            self._port,
            server_factory=lambda: _RelayServer(self),
            server_host_keys=[self._host_key],
            authorized_client_keys=self._authorized,
            allow_pty=False,
            x11_forwarding=False,
            agent_forwarding=False,
            keepalive_interval=5,
            keepalive_count_max=3,
        )

    def close(self) -> None:
        self.drop_all()
        if self._acceptor is not None:
            self._acceptor.close()

    async def wait_closed(self) -> None:
        if self._acceptor is not None:
            await self._acceptor.wait_closed()

    def drop_all(self) -> int:
        """Cut every client connection, as a crashed or restarted relay would."""
        conns = [c for c in self.connections if c is not None]
        for conn in conns:
            conn.abort()
        return len(conns)
