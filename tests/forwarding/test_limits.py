"""Per-forward max_connections and the descriptor budget: extra channels are refused with one
log line per burst, and the forward accepts again once below its limit."""

from __future__ import annotations

import asyncio
import logging
import resource
from typing import Any

import pytest

from tests.support.embedded import World, forward, wait_for
from tunnelkeeper.errors import ForwardFull
from tunnelkeeper.forwarding import limits
from tunnelkeeper.forwarding.admission import Admission
from tunnelkeeper.forwarding.traffic import ForwardTraffic
from tunnelkeeper.supervisor import Shutdown, Supervisor

pytestmark = pytest.mark.timeout(60)


async def _closed_quickly(port: int) -> bool:
    """Connect to the relay-side port; True when the relay hangs up on us within 2 s."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        return await asyncio.wait_for(reader.read(1), 2) == b""
    except TimeoutError:
        return False
    finally:
        writer.close()


async def test_max_connections_refuses_the_extra_ones(
    world: World, caplog: pytest.LogCaptureFixture, outcome: dict[str, Any]
) -> None:
    held: list[asyncio.StreamWriter] = []

    async def mute(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)
        await reader.read()
        writer.close()

    target = await asyncio.start_server(mute, "127.0.0.1", 0)
    fwd = forward("smtp", target.sockets[0].getsockname()[1], max_connections=3)
    port = int(fwd["listen"].rsplit(":", 1)[1])
    sup = Supervisor(world.config(world.tunnel("t", [fwd])))
    shutdown = Shutdown()
    caplog.set_level(logging.INFO, logger="tunnelkeeper")
    async with target:
        running = asyncio.create_task(sup.run(shutdown))
        try:
            await wait_for(lambda: [f.state for f in sup.snapshot().forwards] == ["up"], 10, "up")
            clients = [await asyncio.open_connection("127.0.0.1", port) for _ in range(3)]
            await wait_for(lambda: len(held) == 3, 5, "three connections at the target")
            extra = [await _closed_quickly(port) for _ in range(4)]
            status = sup.snapshot().forwards[0]
            for _, writer in clients:
                writer.close()
            await wait_for(lambda: sup.snapshot().forwards[0].connections_active == 0, 5, "idle")
            _, again = await asyncio.open_connection("127.0.0.1", port)
            await wait_for(lambda: len(held) == 4, 5, "a new connection accepted")
            again.close()
            assert not running.done()
        finally:
            shutdown.request()
            await asyncio.wait_for(running, 15)
    warnings = [r for r in caplog.records if "refusing new connections" in r.getMessage()]
    outcome.update(extra_closed=extra, refused=status.connections_refused)
    assert extra == [True] * 4 and status.connections_refused == 4
    assert status.connections_active == 3
    assert len(warnings) == 1  # one line for the whole burst
    assert any("accepting again after refusing 4" in r.getMessage() for r in caplog.records)


def test_descriptor_budget_keeps_a_reserve() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    budget = limits.DescriptorBudget()
    assert budget.allows(10**9)  # no ceiling known yet
    budget.set_limit(256, in_use=20)
    assert budget.limit == 256 - 20 - limits.RESERVE
    assert budget.allows(budget.limit - 1) and not budget.allows(budget.limit)
    raised, _ = limits.raise_nofile()
    assert raised >= soft and (hard == resource.RLIM_INFINITY or raised <= hard)
    assert limits.BUDGET.limit is not None and limits.BUDGET.limit < raised


def test_a_refusal_names_its_real_cause_for_forwards_and_locals(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Both directions share one door: the descriptor reserve is blamed when it refused, not
    max_connections, and a burst is one warning plus one line when it ends."""
    caplog.set_level(logging.INFO, logger="tunnelkeeper")
    monkeypatch.setattr(limits.BUDGET, "limit", 0)
    traffic = ForwardTraffic()
    door = Admission("local out", max_connections=10)
    for _ in range(3):
        with pytest.raises(ForwardFull, match="local out: the process is short of file desc"):
            door.admit(traffic)
    monkeypatch.setattr(limits.BUDGET, "limit", None)
    door.admit(traffic)
    traffic.active = 10
    with pytest.raises(ForwardFull, match=r"10 connections open \(max_connections = 10\)"):
        door.admit(traffic)
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "local out: refusing new connections: the process is short of file descriptors",
        "local out: accepting again after refusing 3 connection(s)",
        "local out: refusing new connections: 10 connections open (max_connections = 10)",
    ]
    assert traffic.refused == 4
