"""sd_notify over a real AF_UNIX datagram socket, path and abstract."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.snapshots import healthy, smtp_failing
from tunnelkeeper.services.notify import Notifier, serve
from tunnelkeeper.state import SupervisorStatus


class Listener:
    """What systemd would be: a datagram socket collecting notifications."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + address[1:] if address.startswith("@") else address)
        self.sock.setblocking(False)

    async def next(self, within: float = 3.0) -> str:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(within):
            return (await loop.sock_recv(self.sock, 4096)).decode()

    async def until(self, wanted: str, within: float = 3.0) -> list[str]:
        """Messages up to and including the first that contains `wanted`."""
        seen: list[str] = []
        async with asyncio.timeout(within):
            while not seen or wanted not in seen[-1]:
                seen.append(await self.next(within))
        return seen

    def drain(self) -> list[str]:
        out = []
        while True:
            try:
                out.append(self.sock.recv(4096).decode())
            except BlockingIOError:
                return out


@pytest.fixture(params=["path", "abstract"])
def listener(request: pytest.FixtureRequest, short_tmp: Path) -> Iterator[Listener]:
    address = str(short_tmp / "notify") if request.param == "path" else f"@tko-{os.getpid()}"
    listener = Listener(address)
    yield listener
    listener.sock.close()


def test_from_env() -> None:
    pid = str(os.getpid())
    assert not Notifier.from_env({}).enabled
    n = Notifier.from_env({"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "30000000"})
    assert n.enabled and n.watchdog_interval == 30.0
    n = Notifier.from_env({"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "1", "WATCHDOG_PID": "1"})
    assert n.enabled and n.watchdog_interval is None  # someone else's watchdog
    n = Notifier.from_env({"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "2000000", "WATCHDOG_PID": pid})
    assert n.watchdog_interval == 2.0
    assert not Notifier.from_env({"NOTIFY_SOCKET": "vsock:2:1234"}).enabled


def test_disabled_notifier_sends_nothing() -> None:
    n = Notifier(None)
    assert not n.ready() and not n.status("x") and not n.watchdog() and not n.stopping()


async def test_messages_arrive(listener: Listener) -> None:
    n = Notifier(listener.address)
    assert n.ready("1/1 up")
    assert await listener.next() == "READY=1\nSTATUS=1/1 up"
    assert n.status("two\nlines")
    assert await listener.next() == "STATUS=two lines"
    assert n.watchdog()
    assert await listener.next() == "WATCHDOG=1"
    assert n.stopping() and not n.stopping()  # once
    assert await listener.next() == "STOPPING=1"
    n.close()


def test_a_vanished_socket_is_not_an_error(
    short_tmp: Path, caplog: pytest.LogCaptureFixture
) -> None:
    n = Notifier(str(short_tmp / "gone"))
    assert not n.watchdog() and not n.watchdog()
    assert len([r for r in caplog.records if r.levelname == "WARNING"]) == 1


async def test_serve_ready_status_watchdog_stopping(listener: Listener) -> None:
    status: SupervisorStatus = smtp_failing()
    done = asyncio.Event()
    n = Notifier(listener.address, watchdog_usec=200_000)  # ping every 0.1 s
    task = asyncio.create_task(serve(n, lambda: status, done, poll=0.05))
    try:
        before = await listener.until("STATUS=")
        before += await listener.until("WATCHDOG=1")
        before += await listener.until("WATCHDOG=1")  # it keeps pinging before READY
        assert not any("READY=1" in m for m in before)
        assert "STATUS=1/2 forwards healthy, 1/1 tunnels up; relay1/smtp failing" in before
        done.set()
        ready = await listener.until("READY=1", within=1.0)
        assert ready[-1].startswith("READY=1\nSTATUS=1/2 forwards healthy")
        status = healthy()
        changed = await listener.until("STATUS=")
        assert changed[-1] == "STATUS=2/2 forwards healthy, 1/1 tunnels up"
        # Half of WATCHDOG_USEC: about five pings in half a second, whatever else happens.
        await asyncio.sleep(0.5)
        pings = [m for m in listener.drain() if m == "WATCHDOG=1"]
        assert 2 <= len(pings) <= 8
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert "STOPPING=1" in listener.drain()


async def test_serve_returns_when_not_under_systemd() -> None:
    async with asyncio.timeout(1):
        await serve(Notifier(None), healthy, asyncio.Event())


async def test_ready_says_how_the_first_attempts_ended(listener: Listener, tmp_path: Path) -> None:
    """READY=1 comes with a STATUS= of the moment it is sent, not of a snapshot from before
    the attempts ended."""
    from tests.support.fake_relay import FakeRelay, make_config, supervised
    from tunnelkeeper.publisher import ServiceContext
    from tunnelkeeper.supervisor import Shutdown

    async def notify(ctx: ServiceContext) -> None:
        await serve(Notifier(listener.address), ctx.published, ctx.ready, poll=0.05)

    class SlowRelay(FakeRelay):  # attempts that end between two published snapshots
        async def __call__(self, tunnel: Any) -> Any:
            await asyncio.sleep(0.1)
            return await super().__call__(tunnel)

    sup = supervised(make_config(tmp_path), SlowRelay([]), services=[notify])
    shutdown = Shutdown()
    task = asyncio.create_task(sup.run(shutdown))
    try:
        ready = await listener.until("READY=1", within=5.0)
        assert "2/2 tunnels up" in ready[-1], ready
    finally:
        shutdown.request()
        await asyncio.wait_for(task, 5)
