"""The supervisor's keep-loop without SSH: a connector whose outcomes a test scripts, and the
two-tunnel configuration the loop tests run."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, cast

from tunnelkeeper import config
from tunnelkeeper.errors import Disconnected, ForwardRefused, TunnelError
from tunnelkeeper.supervisor import Supervisor
from tunnelkeeper.tunnel import Connector


def make_config(tmp_path: Path, **settings: Any) -> config.Config:
    base: dict[str, Any] = {
        "backoff_initial": 1.0,
        "backoff_max": 8.0,
        "backoff_multiplier": 2.0,
        "stable_after": 30.0,
        "probe_interval": 0,
    }
    base.update(settings)
    raw = {
        "supervisor": {"control_socket": str(tmp_path / "c.sock"), "shutdown_grace": 0.5},
        "tunnel": [
            {
                "name": name,
                "host": "relay.example.net",
                "user": "t",
                **base,
                "forward": [{"name": "smtp", "listen": 2525 + i, "target": 25}],
            }
            for i, name in enumerate(("one", "two"))
        ],
    }
    return config.from_dict(raw, tmp_path / "tk.toml")


class FakeListener:
    def close(self) -> None:
        pass

    async def wait_closed(self) -> None:
        pass


class FakeConnection:
    """Stands in for ssh.RelayConnection: up until `lose()`."""

    cipher = "aes128-gcm@openssh.com"
    host_key = "SHA256:fake"
    relay_version = "SSH-2.0-OpenSSH_9.2p1 fake"
    relay_address = "127.0.0.1"

    def __init__(self, refuse: int = 0) -> None:
        self._lost: asyncio.Future[TunnelError] = asyncio.get_running_loop().create_future()
        self.refuse = refuse

    @property
    def is_closing(self) -> bool:
        return self._lost.done()

    def lose(self, error: TunnelError | None = None) -> None:
        if not self._lost.done():
            self._lost.set_result(error or Disconnected("cut"))

    async def wait_lost(self) -> TunnelError:
        return await self._lost

    async def listen(self, listen: Any, accept: Any, on_bug: Any = None) -> FakeListener:
        if self.refuse:
            self.refuse -= 1
            raise ForwardRefused(f"relay refused to listen on {listen}")
        return FakeListener()

    def close(self) -> None:
        self.lose()


class FakeRelay:
    """A connector whose outcomes the test scripts: a list of errors or "ok"."""

    def __init__(self, outcomes: list[Any]) -> None:
        self.outcomes = outcomes
        self.attempts: list[tuple[str, float]] = []
        self.live: list[FakeConnection] = []

    async def __call__(self, tunnel: config.Tunnel) -> FakeConnection:
        self.attempts.append((tunnel.name, asyncio.get_running_loop().time()))
        outcome = self.outcomes.pop(0) if self.outcomes else "ok"
        if isinstance(outcome, Exception):
            raise outcome
        conn = FakeConnection(refuse=outcome if isinstance(outcome, int) else 0)
        self.live.append(conn)
        return conn


def supervised(cfg: config.Config, relay: FakeRelay, **more: Any) -> Supervisor:
    """A Supervisor whose tunnels connect through `relay`. The cast is the one lie: a
    FakeConnection has only the RelayConnection methods a tunnel's run uses."""
    return Supervisor(cfg, connector=cast(Connector, relay), **more)
