"""`[[tunnel.local]]` (this host listens, the relay dials out) and DNS NOTIFY over the
tunnel, against the embedded relay."""

from __future__ import annotations

import asyncio
import struct
from typing import Any

import dns.flags
import dns.message
import dns.opcode
import dns.rdatatype
import dns.rrset
import pytest

from tests.support.embedded import World, forward, wait_for
from tests.support.sshd import free_port
from tunnelkeeper.state import SupervisorStatus
from tunnelkeeper.supervisor import Shutdown, Supervisor

pytestmark = pytest.mark.timeout(60)


async def _relay_mta(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """The relay's own MTA, as far as a smarthost client sees it."""
    writer.write(b"220 relay.example.net ESMTP\r\n")
    try:
        while line := await reader.readline():
            if line.upper().startswith(b"QUIT"):
                writer.write(b"221 bye\r\n")
                break
            writer.write(b"250 relay.example.net says " + line.strip()[:40] + b"\r\n")
            await writer.drain()
    finally:
        writer.close()


async def test_a_local_forward_carries_mail_out_through_the_relay(
    world: World, outcome: dict[str, Any]
) -> None:
    mta = await asyncio.start_server(_relay_mta, "127.0.0.1", 0)
    listen = free_port()
    local = {
        "name": "smarthost",
        "service": "smtp",
        "listen": f"127.0.0.1:{listen}",
        "target": f"127.0.0.1:{mta.sockets[0].getsockname()[1]}",
    }
    cfg = world.config(world.tunnel("out", [], local=[local], probe_interval=0.3))
    sup = Supervisor(cfg)
    shutdown = Shutdown()
    async with mta:
        running = asyncio.create_task(sup.run(shutdown))
        try:

            def status() -> SupervisorStatus:
                return sup.snapshot()

            def probed() -> bool:
                forwards = status().forwards
                if not forwards or forwards[0].state != "up":
                    return False
                probe = forwards[0].probe
                return probe is not None and probe.ok

            await wait_for(
                probed,
                10,
                "the local forward up and probed",
            )
            reader, writer = await asyncio.open_connection("127.0.0.1", listen)
            greeting = await asyncio.wait_for(reader.readline(), 5)
            writer.write(b"EHLO internal.example.org\r\n")
            reply = await asyncio.wait_for(reader.readline(), 5)
            writer.write(b"QUIT\r\n")
            bye = await asyncio.wait_for(reader.readline(), 5)
            writer.close()
            await wait_for(lambda: status().forwards[0].connections_active == 0, 5, "closed")
            snap = status().to_json()["tunnels"][0]
            # While the relay connection is down, the local port refuses: clients queue.
            world.relay.drop_all()
            await wait_for(lambda: status().forwards[0].state != "up", 5, "the local down")
            refused = False
            try:
                _, w = await asyncio.open_connection("127.0.0.1", listen)
                w.close()
            except ConnectionRefusedError:
                refused = True
        finally:
            shutdown.request()
            await asyncio.wait_for(running, 15)
    outcome.update(greeting=greeting.decode().strip(), probe=snap["local"][0]["probe"]["detail"])
    assert greeting.startswith(b"220 relay.example.net") and b"says EHLO" in reply
    assert bye.startswith(b"221")
    assert snap["forwards"] == [] and [lc["name"] for lc in snap["local"]] == ["smarthost"]
    assert snap["local"][0]["connections_total"] == 1  # probes open their own channels
    assert refused


class _Dns:
    """A DNS server over TCP: answers SOA with `serial`, records NOTIFY messages."""

    def __init__(self, zone: str, serial: int) -> None:
        self.zone, self.serial = zone, serial
        self.notifies: list[tuple[str, int]] = []

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while head := await reader.readexactly(2):
                query = dns.message.from_wire(
                    await reader.readexactly(struct.unpack("!H", head)[0])
                )
                reply = dns.message.make_response(query)
                if query.opcode() == dns.opcode.NOTIFY:
                    self.notifies.append((query.question[0].name.to_text(), self.serial))
                else:
                    reply.flags |= dns.flags.AA
                    soa = f"ns.{self.zone}. hostmaster.{self.zone}. {self.serial} 3600 600 86400 60"
                    reply.answer.append(dns.rrset.from_text(f"{self.zone}.", 60, "IN", "SOA", soa))
                wire = reply.to_wire()
                writer.write(struct.pack("!H", len(wire)) + wire)
                await writer.drain()
        except (asyncio.IncompleteReadError, OSError):
            pass
        finally:
            writer.close()


async def test_notify_on_first_probe_and_on_every_serial_change(world: World) -> None:
    primary, secondary = _Dns("example.org", 2026120101), _Dns("example.org", 0)
    p_server = await asyncio.start_server(primary.serve, "127.0.0.1", 0)
    s_server = await asyncio.start_server(secondary.serve, "127.0.0.1", 0)
    fwd = forward(
        "dns",
        p_server.sockets[0].getsockname()[1],
        "dns",
        zones=["example.org"],
        notify=f"127.0.0.1:{s_server.sockets[0].getsockname()[1]}",
    )
    sup = Supervisor(world.config(world.tunnel("t", [fwd], probe_interval=0.2)))
    shutdown = Shutdown()
    async with p_server, s_server:
        running = asyncio.create_task(sup.run(shutdown))
        try:
            await wait_for(lambda: len(secondary.notifies) == 1, 10, "the first NOTIFY")
            await asyncio.sleep(0.6)  # probes go on; the serial is unchanged: no NOTIFY
            assert len(secondary.notifies) == 1
            primary.serial += 1
            await wait_for(lambda: len(secondary.notifies) == 2, 10, "a NOTIFY for the change")
        finally:
            shutdown.request()
            await asyncio.wait_for(running, 15)
    assert [name for name, _ in secondary.notifies] == ["example.org.", "example.org."]


async def test_a_mute_secondary_does_not_stall_the_probes(world: World) -> None:
    primary = _Dns("example.org", 2026120101)

    async def mute(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # takes the NOTIFY, never answers
        writer.close()

    p_server = await asyncio.start_server(primary.serve, "127.0.0.1", 0)
    s_server = await asyncio.start_server(mute, "127.0.0.1", 0)
    fwd = forward(
        "dns",
        p_server.sockets[0].getsockname()[1],
        "dns",
        zones=["example.org"],
        notify=f"127.0.0.1:{s_server.sockets[0].getsockname()[1]}",
    )
    tunnel = world.tunnel("t", [fwd], probe_interval=0.2, probe_timeout=0.5)
    sup = Supervisor(world.config(tunnel))
    shutdown = Shutdown()
    probed: list[Any] = []
    async with p_server, s_server:
        running = asyncio.create_task(sup.run(shutdown))
        try:

            def probe_times() -> bool:
                forwards = sup.snapshot().forwards
                probe = forwards[0].probe if forwards else None
                if probe is not None and (not probed or probed[-1] != probe.at):
                    probed.append(probe.at)
                return len(probed) >= 3

            await wait_for(probe_times, 15, "three probes despite a NOTIFY that hangs")
        finally:
            shutdown.request()
            await asyncio.wait_for(running, 15)
