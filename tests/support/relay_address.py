"""A real sshd that also answers on an address of its own (RELAY_ADDRESS), so that the relay's
address is not this host's, a config with one forward through it, and that forward held as `run`
holds it. The `relay` fixture is offered to tests/forwarding/ by its conftest.py."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.configs import write_config
from tests.support.sshd import free_port
from tunnelkeeper import ssh
from tunnelkeeper.config import load
from tunnelkeeper.forwarding.inbound import ForwardRuntime

RELAY_ADDRESS = "127.0.0.3"  # the test sshd answers here too, so the relay's address is its own


@pytest.fixture
def relay(make_sshd: Any) -> Any:
    """A real sshd that also answers on RELAY_ADDRESS, with known_hosts naming it there."""
    sshd = make_sshd(start=False)
    sshd.extra_config = f"ListenAddress {RELAY_ADDRESS}\n"
    sshd.start()
    line = sshd.known_hosts.read_text().split(maxsplit=1)[1]
    sshd.known_hosts.write_text(
        sshd.known_hosts.read_text() + f"[{RELAY_ADDRESS}]:{sshd.port} {line}"
    )
    return sshd


def forward_config(
    folder: Path, sshd: Any, target: int, service: str = "smtp", **extra: Any
) -> tuple[Path, int]:
    listen = free_port()
    forward = {
        "name": "fwd",
        "service": service,
        "listen": f"127.0.0.1:{listen}",
        "target": f"127.0.0.1:{target}",
        **extra,
    }
    path = write_config(folder / "tk.toml", sshd, [forward], host=RELAY_ADDRESS)
    return path, listen


@contextlib.asynccontextmanager
async def forwarded(config: Path) -> AsyncIterator[ForwardRuntime]:
    """The tunnel's one forward held through the real sshd, as `run` holds it."""
    tunnel = load(config).tunnel[0]
    async with await ssh.connect(tunnel) as conn:
        fwd = ForwardRuntime(tunnel.forward[0])
        fwd.relay_address = conn.relay_address
        listener = await conn.listen(fwd.cfg.listen, fwd.accept)
        try:
            yield fwd
        finally:
            listener.close()
            await listener.wait_closed()
