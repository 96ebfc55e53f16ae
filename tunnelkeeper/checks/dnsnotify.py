"""DNS NOTIFY over the tunnel: read the internal primary's SOA serials through the relay, and
tell the relay's secondary named of a change at once instead of at its refresh timer."""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import Awaitable, Callable, Sequence

from ..config import Endpoint, Forward
from ..errors import ProbeError, TunnelkeeperError
from ..peertext import peer_text
from ..ssh import Stream

log = logging.getLogger(__name__)

Opener = Callable[[Endpoint, float], Awaitable[Stream]]


async def _exchange(stream: Stream, wire: bytes) -> bytes:
    stream.write(struct.pack("!H", len(wire)) + wire)
    await stream.drain()
    (length,) = struct.unpack("!H", await stream.readexactly(2))
    return await stream.readexactly(length)


async def zone_serials(
    open_relay: Opener, listen: Endpoint, zones: Sequence[str], timeout: float
) -> dict[str, int]:
    """Each zone's SOA serial as the relay's secondary would see it: asked over one TCP
    connection to the forward's listen address on the relay. Raises ProbeError, StreamLost,
    TargetUnavailable or a TunnelError."""
    import dns.exception
    import dns.message
    import dns.rcode
    import dns.rdatatype

    serials: dict[str, int] = {}
    stream = await open_relay(listen, timeout)
    try:
        for zone in zones:
            query = dns.message.make_query(zone, dns.rdatatype.SOA)
            try:
                reply = dns.message.from_wire(await _exchange(stream, query.to_wire()))
            except (dns.exception.DNSException, ValueError, IndexError, struct.error) as exc:
                raise ProbeError(f"unreadable DNS reply: {peer_text(str(exc))}") from exc
            if reply.id != query.id or reply.rcode() != dns.rcode.NOERROR:
                raise ProbeError(f"SOA {zone}: {dns.rcode.to_text(reply.rcode())}")
            for rrset in reply.answer:
                if rrset.rdtype == dns.rdatatype.SOA:
                    serials[zone] = int(rrset[0].serial)
    finally:
        stream.close()
    return serials


async def send_notify(
    open_relay: Opener, named: Endpoint, zone: str, serial: int, timeout: float
) -> str:
    """Send a NOTIFY for `zone` to the relay's named (as the relay sees it) over a direct-tcpip
    channel, and return its answer in words. Raises ProbeError when it refuses."""
    import dns.exception
    import dns.flags
    import dns.message
    import dns.opcode
    import dns.rcode
    import dns.rdatatype

    message = dns.message.make_query(zone, dns.rdatatype.SOA)
    message.set_opcode(dns.opcode.NOTIFY)
    message.flags |= dns.flags.AA
    message.flags &= ~dns.flags.RD
    stream = await open_relay(named, timeout)
    try:
        wire = await _exchange(stream, message.to_wire())
    finally:
        stream.close()
    try:
        reply = dns.message.from_wire(wire)
    except (dns.exception.DNSException, ValueError, IndexError, struct.error) as exc:
        raise ProbeError(f"unreadable NOTIFY reply: {peer_text(str(exc))}") from exc
    rcode = dns.rcode.to_text(reply.rcode())
    if reply.rcode() != dns.rcode.NOERROR:
        raise ProbeError(f"the relay's named answered NOTIFY for {zone} with {rcode}")
    return f"NOTIFY {zone} serial {serial} to {named}: {rcode}"


async def notify_changes(
    open_relay: Opener, forward: Forward, notified: dict[str, int], timeout: float, tunnel: str
) -> None:
    """NOTIFY the relay's named of every zone whose serial is not the one in `notified` (so
    all of them on the first probe); `notified` is updated for each the named accepted, and
    one that failed is tried again next time. Failures are logged, never raised."""
    assert forward.notify is not None
    try:
        async with asyncio.timeout(timeout):  # a mute primary must not stall the probes
            serials = await zone_serials(open_relay, forward.listen, forward.zones, timeout)
    except TimeoutError:
        log.warning("tunnel %s: %s: no SOA answers within %gs", tunnel, forward.name, timeout)
        return
    except TunnelkeeperError as exc:
        log.warning("tunnel %s: %s: cannot read the zones' serials: %s", tunnel, forward.name, exc)
        return
    for zone, serial in serials.items():
        if notified.get(zone) == serial:
            continue
        try:
            async with asyncio.timeout(timeout):
                said = await send_notify(open_relay, forward.notify, zone, serial, timeout)
        except TimeoutError:
            log.warning("tunnel %s: NOTIFY %s: no answer within %gs", tunnel, zone, timeout)
            continue
        except TunnelkeeperError as exc:
            log.warning("tunnel %s: NOTIFY %s failed: %s", tunnel, zone, exc)
            continue
        notified[zone] = serial
        log.info("tunnel %s: %s", tunnel, said)
