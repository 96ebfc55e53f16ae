"""The asyncssh border: every call that touches the wire returns data or raises a tunnelkeeper
error, even through a connection the relay has just dropped."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from typing import Any

import pytest

from tests.support.embedded import World, forward, wait_for
from tunnelkeeper import ssh
from tunnelkeeper.config import Endpoint
from tunnelkeeper.errors import ProbeError, StreamLost, TunnelError, TunnelkeeperError
from tunnelkeeper.forwarding.splice import Splice
from tunnelkeeper.supervisor import Shutdown, Supervisor

pytestmark = pytest.mark.timeout(60)


async def _mute(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A target that accepts and never speaks (a wedged MTA)."""
    await reader.read()
    writer.close()


async def _attempt(outcomes: dict[str, str], name: str, call: Callable[[], Any]) -> Any:
    try:
        result = call()
        if inspect.isawaitable(result):
            result = await asyncio.wait_for(result, 5)
    except TunnelkeeperError as exc:
        outcomes[name] = type(exc).__name__
        return exc
    except BaseException as exc:  # anything else got past the border
        outcomes[name] = f"ESCAPED {type(exc).__module__}.{type(exc).__name__}: {exc}"
        return None
    outcomes[name] = "returned"
    return result


async def test_every_wire_call_through_a_dropped_connection(
    world: World, outcome: dict[str, Any]
) -> None:
    target = await asyncio.start_server(_mute, "127.0.0.1", 0)
    port = target.sockets[0].getsockname()[1]
    async with target:
        cfg = world.config(world.tunnel("border", [forward("f", port)])).tunnel[0]
        conn = await ssh.connect(cfg)
        assert conn.relay_version is not None and conn.relay_version.startswith("SSH-2.0-")
        dest = Endpoint(host="127.0.0.1", port=port)
        stream = await conn.open_stream(dest, 5)
        second = await conn.open_stream(dest, 5)

        async def accept(_host: str, _port: int) -> Splice:
            raise AssertionError("nothing connects here")

        listener = await conn.listen(cfg.forward[0].listen, accept)
        waiting = asyncio.create_task(stream.readline())  # a probe waiting for a greeting
        await asyncio.sleep(0.2)
        world.relay.drop_all()
        outcomes: dict[str, str] = {}
        got = await _attempt(outcomes, "readline (waiting)", lambda: waiting)
        assert got in (b"",) or isinstance(got, StreamLost), got
        await _attempt(outcomes, "read", lambda: second.read(10))
        await _attempt(outcomes, "readline", second.readline)
        await _attempt(outcomes, "readexactly", lambda: second.readexactly(5))
        for _ in range(3):  # a write may be buffered once before the loss is seen
            await _attempt(outcomes, "write", lambda: second.write(b"EHLO x\r\n"))
            await _attempt(outcomes, "drain", second.drain)
        await _attempt(outcomes, "stream close", second.close)
        await _attempt(outcomes, "stream close again", stream.close)
        reason = await _attempt(outcomes, "wait_lost", conn.wait_lost)
        assert isinstance(reason, TunnelError)
        await _attempt(outcomes, "listen", lambda: conn.listen(cfg.forward[0].listen, accept))
        await _attempt(outcomes, "open_stream", lambda: conn.open_stream(dest, 2))
        await _attempt(outcomes, "listener close", listener.close)
        await _attempt(outcomes, "listener wait_closed", listener.wait_closed)
        await _attempt(outcomes, "connection close", conn.close)
        await _attempt(outcomes, "connection wait_closed", conn.wait_closed)
    outcome.update(outcomes)
    escaped = {k: v for k, v in outcomes.items() if v.startswith("ESCAPED")}
    assert not escaped, escaped
    # The calls that need the connection say it is gone, as tunnelkeeper errors.
    assert outcomes["listen"] == outcomes["open_stream"] == "Disconnected"


async def test_a_line_without_end_is_refused_not_buffered() -> None:
    async def flood(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220-" + b"x" * 100_000)
        await writer.drain()
        await reader.read()

    server = await asyncio.start_server(flood, "127.0.0.1", 0)
    async with server:
        reader, writer = await asyncio.open_connection(*server.sockets[0].getsockname()[:2])
        stream = ssh.StreamPair(reader, writer)
        with pytest.raises(ProbeError, match="longer than"):
            await asyncio.wait_for(stream.readline(), 5)
        stream.close()


async def test_relay_drop_while_a_probe_waits_for_a_slow_greeting(
    world: World, outcome: dict[str, Any]
) -> None:
    """The MTA greets late (greet_pause, postscreen); the relay dies meanwhile."""
    greeted = asyncio.Event()

    async def slow_mta(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await asyncio.sleep(1.5)
            writer.write(b"220 mail.example.org ESMTP\r\n")
            await writer.drain()
            greeted.set()
            while line := await reader.readline():
                writer.write(b"221 bye\r\n" if line.startswith(b"QUIT") else b"250 ok\r\n")
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()

    mta = await asyncio.start_server(slow_mta, "127.0.0.1", 0)
    async with mta:
        port = mta.sockets[0].getsockname()[1]
        cfg = world.config(
            world.tunnel("slow", [forward("smtp", port, "smtp")], probe_interval=0.2),
        )
        supervisor = Supervisor(cfg)
        shutdown = Shutdown()
        running = asyncio.create_task(supervisor.run(shutdown))
        try:
            await wait_for(
                lambda: [f.state for f in supervisor.snapshot().forwards] == ["up"], 10, "up"
            )
            await asyncio.sleep(PROBE_WAIT := 1.0)  # the first probe is waiting for its 220
            drops = world.relay.drop_all()
            await wait_for(
                lambda: (
                    supervisor.snapshot().tunnels[0].connects >= 2
                    and supervisor.snapshot().forwards[0].state == "up"
                ),
                10,
                "reconnected",
            )
            await wait_for(
                lambda: (p := supervisor.snapshot().forwards[0].probe) is not None and p.ok,
                15,
                "a probe that passes",
            )
            assert not running.done()
            tunnel = supervisor.snapshot().tunnels[0]
        finally:
            shutdown.request()
            await asyncio.wait_for(running, 15)
    outcome.update(dropped=drops, waited_s=PROBE_WAIT, connects=tunnel.connects)
    assert drops == 1
    assert tunnel.internal_errors == 0  # a relay's failure is no bug of ours
