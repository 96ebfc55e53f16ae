"""End-to-end probes: smtp, dns and tcp checks sent through the relay and back.

A probe opens a direct-tcpip channel on the tunnel's own connection to the forward's relay-side
listen address; the relay connects to its own listener, which loops back through the reverse
forward to the local target. So a probe that passes proves the whole path a sender would use.
"""

from __future__ import annotations

import asyncio
import struct
import time
from collections.abc import Awaitable, Callable
from typing import Literal

from ..config import Endpoint, Forward, Local
from ..errors import ChannelDenied, ProbeError, StreamLost, TargetUnavailable, TunnelError
from ..forwarding.dial import dial
from ..forwarding.proxyheader import proxy_header
from ..peertext import peer_text
from ..ssh import Stream, StreamPair
from ..state import ProbeResult, utcnow

Opener = Callable[[Endpoint, float], Awaitable[Stream]]
TCP_SETTLE = 0.3  # seconds a tcp probe waits to see the connection really held
PROBE_DIAL = 10.0  # the probe's own timeout ends it sooner


async def run_probe(
    forward: Forward | Local, open_relay: Opener, timeout: float, via_local: bool = False
) -> ProbeResult:
    """Probe a forward through the relay (or straight at its target when `via_local`), or a
    local forward's target as the relay reaches it.

    Never raises for a failed probe: the result says what went wrong. Raises ChannelDenied
    when the relay forbids the probe channel, so the caller can fall back to local probes.
    """
    started = time.monotonic()
    via: Literal["relay", "local"] = "local" if via_local else "relay"
    inbound = isinstance(forward, Forward)
    dest = forward.listen if inbound else forward.target
    # A local forward names no zone to ask for: a dns one is checked like tcp.
    check = _CHECKS[forward.service] if inbound or forward.service != "dns" else _check_tcp
    try:
        async with asyncio.timeout(timeout):
            stream = await (_open_local(forward) if via_local else open_relay(dest, timeout))
            try:
                detail = await check(stream, forward)
            finally:
                stream.close()
    except ChannelDenied:
        raise
    except TimeoutError:
        return ProbeResult(False, None, utcnow(), f"no answer within {timeout:g}s", via)
    except (ProbeError, TargetUnavailable, TunnelError, StreamLost) as exc:
        return ProbeResult(False, None, utcnow(), str(exc), via)
    latency = (time.monotonic() - started) * 1000
    return ProbeResult(True, latency, utcnow(), detail, via)


async def probe_with_fallback(
    forward: Forward | Local, open_relay: Opener, timeout: float, via_local: bool = False
) -> tuple[ProbeResult, ChannelDenied | None]:
    """run_probe, and when the relay forbids the probe channel (AllowTcpForwarding remote),
    a forward's target probed straight instead; the denial is returned so the caller can
    stay local. A local forward has nothing to fall back to: its probe simply fails."""
    try:
        return await run_probe(forward, open_relay, timeout, via_local), None
    except ChannelDenied as denied:
        if not isinstance(forward, Forward):
            return ProbeResult(False, None, utcnow(), str(denied)), denied
        return await run_probe(forward, open_relay, timeout, via_local=True), denied


async def _check_tcp(stream: Stream, forward: Forward | Local) -> str:
    # Through the relay the channel opens even when the target is down: the relay accepts,
    # and only then is the connection handed back to us and refused. So a connection that
    # is closed at once, with nothing said, means the far end is not there.
    try:
        async with asyncio.timeout(TCP_SETTLE):
            data = await stream.read(1)
    except TimeoutError:
        return "connected"
    if not data:
        raise ProbeError("connection closed at once: nothing accepts it behind the tunnel")
    return "connected, target spoke first"


async def read_smtp_reply(stream: Stream, what: str) -> tuple[int, str]:
    """One SMTP reply, possibly multi-line, escaped; returns (code, first line). Raises
    ProbeError for a closed connection or what is not SMTP (naming `what` was answered)."""
    first = ""
    for _ in range(100):
        raw = await stream.readline()
        if not raw:
            if first:
                raise ProbeError(f'connection closed inside the {what} reply "{first}"')
            if what == "greeting":
                raise ProbeError(
                    "connection closed before the SMTP greeting: is the mail server "
                    "behind the tunnel running?"
                )
            raise ProbeError(f"connection closed before the {what} reply")
        line = peer_text(raw.rstrip(b"\r\n"))
        first = first or line
        if len(line) < 3 or not line[:3].isdigit():
            raise ProbeError(f'not an SMTP reply: "{line[:80]}"')
        if len(line) == 3 or line[3] == " ":
            return int(line[:3]), first
    raise ProbeError("SMTP reply longer than 100 lines")


async def _check_smtp(stream: Stream, forward: Forward | Local) -> str:
    code, greeting = await read_smtp_reply(stream, "greeting")
    if code != 220:
        raise ProbeError(f'greeting was "{greeting}", not 220')
    stream.write(b"EHLO tunnelkeeper.probe\r\n")
    await stream.drain()
    code, line = await read_smtp_reply(stream, "EHLO")
    if code != 250:
        raise ProbeError(f'EHLO answered "{line}"')
    stream.write(b"QUIT\r\n")
    await stream.drain()
    await read_smtp_reply(stream, "QUIT")
    return greeting


async def _check_dns(stream: Stream, forward: Forward | Local) -> str:
    assert isinstance(forward, Forward)  # run_probe checks a local dns forward like tcp
    # Imported here: a supervisor without dns forwards never pays for dnspython (1.6 MB RSS).
    import dns.exception
    import dns.message
    import dns.rcode
    import dns.rdatatype

    zone = forward.zones[0]
    query = dns.message.make_query(zone, dns.rdatatype.SOA)
    wire = query.to_wire()
    stream.write(struct.pack("!H", len(wire)) + wire)
    await stream.drain()
    (length,) = struct.unpack("!H", await stream.readexactly(2))
    try:
        reply = dns.message.from_wire(await stream.readexactly(length))
    except (dns.exception.DNSException, ValueError, IndexError, struct.error) as exc:
        raise ProbeError(f"unreadable DNS reply: {peer_text(str(exc))}") from exc
    if reply.id != query.id:
        raise ProbeError("DNS reply does not match the query")
    rcode = reply.rcode()
    if rcode != dns.rcode.NOERROR:
        raise ProbeError(f"SOA {zone}: {dns.rcode.to_text(rcode)}")
    for rrset in reply.answer:
        if rrset.rdtype == dns.rdatatype.SOA:
            return f"{zone} SOA serial {rrset[0].serial}"
    raise ProbeError(f"SOA {zone}: no SOA in the answer (not authoritative?)")


_CHECKS: dict[str, Callable[[Stream, Forward | Local], Awaitable[str]]] = {
    "tcp": _check_tcp,
    "smtp": _check_smtp,
    "dns": _check_dns,
}


async def _open_local(forward: Forward | Local) -> Stream:
    """The forward's target, straight from this host: from the forward's `source`, as its
    forwarded connections come."""
    source, header = None, b""
    if isinstance(forward, Forward):
        source = forward.source_address
        if forward.proxy_protocol is not None:  # a target that reads it waits for one
            header = proxy_header(forward.proxy_protocol, None, None)  # v1 UNKNOWN, v2 LOCAL
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(loop=loop)
    transport, protocol = await dial(
        lambda: asyncio.StreamReaderProtocol(reader, loop=loop),
        forward.target,
        source,
        PROBE_DIAL,
        header,
    )
    writer = asyncio.StreamWriter(transport, protocol, reader, loop)
    return StreamPair(reader, writer, f"connection to {forward.target}")
