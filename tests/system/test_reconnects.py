"""Many forced reconnects in one process: no memory, task or file-descriptor growth."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.embedded import keys, write
from tests.support.faults import rss_kb
from tests.support.polling import wait
from tests.support.sshd import free_port
from tunnelkeeper import config, ssh
from tunnelkeeper.supervisor import Shutdown, Supervisor

WARMUP = 30


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    finally:
        writer.close()


def _usage() -> tuple[int, int, int]:
    gc.collect()
    return rss_kb(os.getpid()), len(os.listdir("/proc/self/fd")), len(asyncio.all_tasks())


async def forced_reconnects(count: int, folder: Path) -> dict[str, Any]:
    """Run the real supervisor against the embedded relay and cut its connection `count`
    times; a forwarded connection goes through every tenth time."""
    host_key, host_pub, client_key, client_pub = keys(folder)
    listen = free_port()
    echo = await asyncio.start_server(_echo, "127.0.0.1", 0)
    relay = ssh.EmbeddedRelay(host_key, client_pub, allow_direct=False)
    async with echo, relay:
        write(folder / "known_hosts", f"[127.0.0.1]:{relay.port} {host_pub}\n")
        raw = {
            "supervisor": {"control_socket": str(folder / "control.sock")},
            "tunnel": [
                {
                    "name": "loop",
                    "host": "127.0.0.1",
                    "port": relay.port,
                    "user": "tunnel",
                    "identity": str(client_key),
                    "known_hosts": str(folder / "known_hosts"),
                    "backoff_initial": 0.0,
                    "backoff_max": 0.01,
                    "probe_interval": 0,
                    "forward": [
                        {
                            "name": "echo",
                            "listen": f"127.0.0.1:{listen}",
                            "target": f"127.0.0.1:{echo.sockets[0].getsockname()[1]}",
                        }
                    ],
                }
            ],
        }
        supervisor = Supervisor(config.from_dict(raw, folder / "tk.toml"))
        shutdown = Shutdown()
        running = asyncio.create_task(supervisor.run(shutdown))

        def tunnel() -> Any:
            return supervisor.snapshot().tunnels[0] if supervisor.snapshot().tunnels else None

        async def cycle(n: int) -> None:
            target = n + 1
            await wait(
                lambda: (
                    (t := tunnel()) is not None
                    and t.connects >= target
                    and t.forwards[0].state == "up"
                ),
                10,
                f"connection #{target}",
            )
            if n % 10 == 0:
                reader, writer = await asyncio.open_connection("127.0.0.1", listen)
                writer.write(b"ping %d\n" % n)
                assert await asyncio.wait_for(reader.readline(), 5) == b"ping %d\n" % n
                writer.close()
                await writer.wait_closed()
            relay.drop_all()

        for n in range(WARMUP):
            await cycle(n)
        await asyncio.sleep(0.2)
        rss0, fds0, tasks0 = _usage()
        t0 = time.monotonic()
        for n in range(WARMUP, WARMUP + count):
            await cycle(n)
        elapsed = time.monotonic() - t0
        await wait(lambda: tunnel().forwards[0].state == "up", 10, "the last connection")
        await asyncio.sleep(0.2)
        rss1, fds1, tasks1 = _usage()
        connects = tunnel().connects
        shutdown.request()
        await asyncio.wait_for(running, 15)
    return {
        "reconnects": count,
        "connects": connects,
        "seconds": round(elapsed, 1),
        "per_reconnect_ms": round(elapsed / count * 1000, 1),
        "rss_growth_kb": rss1 - rss0,
        "fds": (fds0, fds1),
        "tasks": (tasks0, tasks1),
    }


def _check(result: dict[str, Any], rss_budget_kb: int) -> None:
    assert result["connects"] == WARMUP + result["reconnects"] + 1
    assert result["fds"][1] <= result["fds"][0], result
    assert result["tasks"][1] <= result["tasks"][0], result
    assert result["rss_growth_kb"] < rss_budget_kb, result


@pytest.fixture
def quiet(caplog: pytest.LogCaptureFixture) -> None:
    """pytest keeps every captured record, and a record keeps its exception argument with the
    traceback's frames alive: that would be the test's growth, not tunnelkeeper's."""
    caplog.set_level(logging.CRITICAL)
    caplog.set_level(logging.CRITICAL, logger="tunnelkeeper")


@pytest.mark.timeout(120)
@pytest.mark.usefixtures("quiet")
async def test_100_forced_reconnects_leak_nothing(fdir: Path, outcome: dict[str, Any]) -> None:
    result = await forced_reconnects(100, fdir)
    outcome.update(result)
    _check(result, 5 * 1024)


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.usefixtures("quiet")
async def test_1000_forced_reconnects_leak_nothing(fdir: Path, outcome: dict[str, Any]) -> None:
    result = await forced_reconnects(1000, fdir)
    outcome.update(result)
    _check(result, 5 * 1024)
