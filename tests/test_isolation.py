"""A bug in one task never ends the process: it is logged with its traceback, counted, and
only the tunnel it belongs to restarts (error_kind internal); the others carry on."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from tests.support.embedded import World, forward, wait_for
from tunnelkeeper import standby as standby_mod
from tunnelkeeper import supervisor as supervisor_mod
from tunnelkeeper.checks import probes
from tunnelkeeper.forwarding import inbound as inbound_mod
from tunnelkeeper.publisher import ServiceContext
from tunnelkeeper.supervisor import Shutdown, Supervisor

pytestmark = pytest.mark.timeout(60)


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(4096):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        writer.close()


async def _echo_through(port: int, text: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(text)
        await writer.drain()
        return await asyncio.wait_for(reader.readexactly(len(text)), 5)
    finally:
        writer.close()


def _inject(monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    """Make `where` fail with a RuntimeError, for tunnel `one` (forward `bad`) only."""
    if where == "probe":
        real_probe = probes.run_probe

        async def probe(fwd: Any, *args: Any, **kwargs: Any) -> Any:
            if fwd.name == "bad":
                raise RuntimeError("injected: probe")
            return await real_probe(fwd, *args, **kwargs)

        monkeypatch.setattr(probes, "run_probe", probe)
    elif where == "accept":
        real_accept = inbound_mod.ForwardRuntime.accept

        async def accept(self: Any, host: str, port: int) -> Any:
            if self.cfg.name == "bad":
                raise RuntimeError("injected: accept")
            return await real_accept(self, host, port)

        monkeypatch.setattr(inbound_mod.ForwardRuntime, "accept", accept)
    elif where == "standby":
        real_keep = standby_mod.Standby.keep

        async def keep_standby(self: Any) -> None:
            if self._cfg.name == "one":
                await asyncio.sleep(0.2)
                raise RuntimeError("injected: standby")
            await real_keep(self)

        monkeypatch.setattr(standby_mod.Standby, "keep", keep_standby)


@pytest.mark.parametrize("where", ["probe", "accept", "standby"])
async def test_a_bug_in_one_tunnels_task_restarts_only_that_tunnel(
    world: World,
    where: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    outcome: dict[str, Any],
) -> None:
    _inject(monkeypatch, where)
    echo = await asyncio.start_server(_echo, "127.0.0.1", 0)
    port = echo.sockets[0].getsockname()[1]
    bad, good = forward("bad", port), forward("good", port)
    settings = {"probe_interval": 0.3, "standby": where == "standby"}
    cfg = world.config(world.tunnel("one", [bad], **settings), world.tunnel("two", [good]))
    sup = Supervisor(cfg)
    shutdown = Shutdown()
    kinds: set[str | None] = set()
    caplog.set_level(logging.ERROR, logger="tunnelkeeper")
    async with echo:
        running = asyncio.create_task(sup.run(shutdown))
        try:

            def by_name() -> dict[str, Any]:
                return {t.name: t for t in sup.snapshot().tunnels}

            await wait_for(
                lambda: (
                    len(by_name()) == 2 and all(f.state == "up" for f in sup.snapshot().forwards)
                ),
                10,
                "both tunnels up",
            )
            if where == "accept":
                with pytest.raises((asyncio.IncompleteReadError, ConnectionError)):
                    await _echo_through(int(bad["listen"].rsplit(":", 1)[1]), b"hello")

            def restarted() -> bool:
                one = by_name()["one"]
                kinds.add(one.error_kind)
                return one.internal_errors >= 1 and "internal" in kinds

            await wait_for(restarted, 10, "tunnel one restarted on its bug")
            good_port = int(good["listen"].rsplit(":", 1)[1])
            for n in range(3):
                assert await _echo_through(good_port, b"mail %d" % n) == b"mail %d" % n
            one, two = by_name()["one"], by_name()["two"]
            assert not running.done()
        finally:
            shutdown.request()
            await asyncio.wait_for(running, 15)
    errors = [r for r in caplog.records if "internal error" in r.getMessage()]
    outcome.update(
        injected=where,
        internal_errors_one=one.internal_errors,
        kinds_seen=sorted(k or "none" for k in kinds),
        two_connects=two.connects,
    )
    assert two.connects == 1 and two.state == "up" and two.internal_errors == 0
    assert errors and all(r.exc_info is not None for r in errors)  # with the traceback
    assert f"injected: {where}" in errors[0].getMessage()


async def test_a_service_that_fails_on_a_bug_is_restarted(
    world: World, monkeypatch: pytest.MonkeyPatch, outcome: dict[str, Any]
) -> None:
    """A service (an alert watcher, the metrics server …) that raises is logged, counted in
    the supervisor's internal_errors and started again; the tunnels never notice."""
    monkeypatch.setattr(supervisor_mod, "SERVICE_RESTART", 0.1)
    runs: list[int] = []

    async def flaky(_ctx: ServiceContext) -> None:
        runs.append(len(runs))
        if len(runs) < 3:
            raise RuntimeError("injected: service")
        await asyncio.Event().wait()

    echo = await asyncio.start_server(_echo, "127.0.0.1", 0)
    port = echo.sockets[0].getsockname()[1]
    good = forward("good", port)
    sup = Supervisor(world.config(world.tunnel("two", [good])), services=[flaky])
    shutdown = Shutdown()
    async with echo:
        running = asyncio.create_task(sup.run(shutdown))
        try:
            await wait_for(lambda: len(runs) >= 3, 10, "the service running again")
            await wait_for(lambda: sup.snapshot().forwards[0].state == "up", 10, "up")
            good_port = int(good["listen"].rsplit(":", 1)[1])
            assert await _echo_through(good_port, b"still here") == b"still here"
            status = sup.snapshot()
            assert not running.done()
        finally:
            shutdown.request()
            await asyncio.wait_for(running, 15)
    outcome.update(service_runs=len(runs), internal_errors=status.internal_errors)
    assert status.internal_errors == 2
    assert status.to_json()["supervisor"]["internal_errors"] == 2
    assert status.tunnels[0].connects == 1
