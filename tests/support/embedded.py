"""An embedded relay in this process, for the border and isolation tests; its keys and the
known_hosts line for the tests that start one of their own."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.polling import until
from tests.support.sshd import free_port, keygen
from tunnelkeeper import config, ssh


class World:
    """An embedded relay on loopback and configs that point at it."""

    def __init__(self, folder: Path, relay: ssh.EmbeddedRelay, client_key: Path) -> None:
        self.folder = folder
        self.relay = relay
        self.client_key = client_key

    def tunnel(self, name: str, forwards: list[dict[str, Any]], **settings: Any) -> dict[str, Any]:
        base: dict[str, Any] = {
            "name": name,
            "host": "127.0.0.1",
            "port": self.relay.port,
            "user": "tunnel",
            "identity": str(self.client_key),
            "known_hosts": str(self.folder / "known_hosts"),
            "keepalive_interval": 1,
            "keepalive_count_max": 2,
            "backoff_initial": 0.1,
            "backoff_max": 0.5,
            "probe_interval": 0,
            "forward": forwards,
        }
        base.update(settings)
        return base

    def config(self, *tunnels: dict[str, Any], **supervisor: Any) -> config.Config:
        sup = {"control_socket": str(self.folder / "control.sock"), "shutdown_grace": 0.5}
        sup.update(supervisor)
        return config.from_dict({"supervisor": sup, "tunnel": list(tunnels)}, self.folder / "t")


def _relay_keys(folder: Path) -> tuple[bytes, str, Path, str]:
    """The relay's host key (private, public) and the client's key (path, public line)."""
    host = keygen(folder / "host_ed25519", "ed25519")
    client = keygen(folder / "client_rsa")
    host_pub = " ".join(Path(f"{host}.pub").read_text().split()[:2])
    return host.read_bytes(), host_pub, client, Path(f"{client}.pub").read_text()


@pytest.fixture
async def world(fdir: Path) -> AsyncIterator[World]:
    host_key, host_pub, client, client_pub = _relay_keys(fdir)
    relay = ssh.EmbeddedRelay(host_key, client_pub)
    async with relay:
        (fdir / "known_hosts").write_text(f"[127.0.0.1]:{relay.port} {host_pub}\n")
        yield World(fdir, relay, client)


def forward(name: str, target_port: int, service: str = "tcp", **more: Any) -> dict[str, Any]:
    fwd: dict[str, Any] = {
        "name": name,
        "service": service,
        "listen": f"127.0.0.1:{free_port()}",
        "target": f"127.0.0.1:{target_port}",
    }
    if service == "smtp":
        fwd["domains"] = ["example.org"]
    fwd.update(more)
    return fwd


wait_for = until  # the name its users know


def keys(folder: Path) -> tuple[bytes, str, Path, str]:
    """The relay's host key (private, public) and the client's key (path, public line)."""
    host = keygen(folder / "host_ed25519", "ed25519")
    client = keygen(folder / "client_rsa")
    host_pub = " ".join(Path(f"{host}.pub").read_text().split()[:2])
    return host.read_bytes(), host_pub, client, Path(f"{client}.pub").read_text()


def write(path: Path, text: str) -> None:
    path.write_text(text)
