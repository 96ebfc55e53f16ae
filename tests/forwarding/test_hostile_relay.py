"""A compromised relay (in-process, since sshd will not misbehave): it reaches only the targets."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import asyncssh
import pytest

from tests.support.embedded import keys, write
from tests.support.polling import wait
from tests.support.sshd import free_port
from tunnelkeeper import config, ssh
from tunnelkeeper.supervisor import Shutdown, Supervisor

pytestmark = pytest.mark.timeout(60)


class _Target:
    """A local service that records who reached it."""

    def __init__(self) -> None:
        self.seen: list[bytes] = []
        self.server: asyncio.base_events.Server | None = None

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.seen.append(await reader.read(100))
        writer.write(b"target says hi\n")
        await writer.drain()
        writer.close()

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])


async def test_relay_reaches_only_configured_targets(fdir: Path, outcome: dict[str, Any]) -> None:
    host_key, host_pub, client_key, client_pub = keys(fdir)
    target, bystander = _Target(), _Target()
    target.server = await asyncio.start_server(target.serve, "127.0.0.1", 0)
    bystander.server = await asyncio.start_server(bystander.serve, "127.0.0.1", 0)
    listen = free_port()
    relay = ssh.EmbeddedRelay(host_key, client_pub)
    async with target.server, bystander.server, relay:
        write(fdir / "known_hosts", f"[127.0.0.1]:{relay.port} {host_pub}\n")
        raw = {
            "supervisor": {"control_socket": str(fdir / "control.sock")},
            "tunnel": [
                {
                    "name": "evil",
                    "host": "127.0.0.1",
                    "port": relay.port,
                    "user": "tunnel",
                    "identity": str(client_key),
                    "known_hosts": str(fdir / "known_hosts"),
                    "probe_interval": 0,
                    "forward": [
                        {
                            "name": "smtp",
                            "listen": f"127.0.0.1:{listen}",
                            "target": f"127.0.0.1:{target.port}",
                        }
                    ],
                }
            ],
        }
        supervisor = Supervisor(config.from_dict(raw, fdir / "tk.toml"))
        shutdown = Shutdown()
        running = asyncio.create_task(supervisor.run(shutdown))
        try:
            await wait(
                lambda: any(f.state == "up" for f in supervisor.snapshot().forwards), 10, "up"
            )
            (conn,) = [c for c in relay.connections if c is not None]
            refused: dict[str, str] = {}

            async def attempt(name: str, opener: Any) -> None:
                try:
                    first, second = await asyncio.wait_for(opener(), 5)
                except asyncssh.ChannelOpenError as exc:
                    refused[name] = exc.reason
                else:  # a reader/writer or a channel/session pair: close what was opened
                    (second if hasattr(second, "close") else first).close()

            # A forwarded-tcpip channel naming a port tunnelkeeper never listened on, one
            # naming the bystander's port, a forwarded unix socket, the agent, X11.
            await attempt("unlistened-port", lambda: conn.open_connection("127.0.0.1", free_port()))
            await attempt(
                "bystander-port", lambda: conn.open_connection("127.0.0.1", bystander.port)
            )
            await attempt("unix-socket", lambda: conn.open_unix_connection("/run/any.sock"))
            await attempt("agent", conn.open_agent_connection)
            await attempt("x11", lambda: conn.create_x11_connection(asyncssh.SSHTCPSession))
            # The one thing it may do: use the forward, which lands on the configured target,
            # whatever origin it claims.
            reader, writer = await conn.open_connection("127.0.0.1", listen, "10.66.66.66", 31337)
            writer.write(b"hello from the relay\n")
            reply = await asyncio.wait_for(reader.read(100), 5)
            writer.close()
        finally:
            shutdown.request()
            await asyncio.wait_for(running, 15)
    outcome.update(refused=refused, forward_reply=reply.decode().strip())
    assert set(refused) == {"unlistened-port", "bystander-port", "unix-socket", "agent", "x11"}, (
        refused
    )
    assert reply == b"target says hi\n" and target.seen == [b"hello from the relay\n"]
    assert bystander.seen == []
