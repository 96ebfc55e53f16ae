"""`check`'s proof of the boundary: through the relay, the internal MTA must not relay for the
tunnel, and the internal primary must let the tunnel transfer its zones.

Each conversation travels the probe's path (a direct-tcpip channel to the forward's listen
address on the relay), so it reaches the internal server exactly as a relay user would, from the
forward's `source`. No message is ever sent: the smtp test stops after RCPT TO.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from ..config import Endpoint, Forward, Tunnel
from ..errors import ChannelDenied, ProbeError, StreamLost, TargetUnavailable, TunnelError
from ..peertext import peer_text
from ..ssh import Stream
from .probes import read_smtp_reply

Opener = Callable[[Endpoint, float], Awaitable[Stream]]

TEST_DOMAIN = "tunnelkeeper-relay-test.invalid"
TEST_RECIPIENT = f"postmaster@{TEST_DOMAIN}"
OPEN_RELAY = "the internal mail server relays for anyone on the relay"
NO_TRANSFER = "the primary refuses zone transfers from the tunnel"
KIT = "`tunnelkeeper internal-kit --out DIR` writes these lines"
_FAILURES = (ProbeError, StreamLost, TargetUnavailable, TunnelError, ChannelDenied)


@dataclass(frozen=True)
class ZoneTransfer:
    """One zone's transfer through the tunnel: ok, refused (False) or not tried (None)."""

    zone: str
    ok: bool | None
    detail: str

    def to_json(self) -> dict[str, Any]:
        return {"zone": self.zone, "transfer_ok": self.ok, "detail": self.detail}


@dataclass(frozen=True)
class Boundary:
    """What `check` learnt of one forward's boundary. smtp: `open_relay` (None: not tried);
    dns: one ZoneTransfer per zone. `detail` says it in words, with what to change."""

    tunnel: str
    forward: str
    service: str
    open_relay: bool | None = None
    transfers: tuple[ZoneTransfer, ...] = ()
    detail: str = ""

    @property
    def failed(self) -> bool:
        return self.open_relay is True or any(t.ok is False for t in self.transfers)

    def to_json(self) -> dict[str, Any]:
        """The keys `check --json` adds to the forward's object."""
        if self.service == "smtp":
            return {"open_relay": self.open_relay, "boundary": self.detail}
        return {"transfers": [t.to_json() for t in self.transfers], "boundary": self.detail}


def applies(forward: Forward) -> bool:
    return forward.service in ("smtp", "dns")


def not_tried(tunnel: Tunnel, forward: Forward, why: str) -> Boundary:
    transfers = tuple(ZoneTransfer(z, None, why) for z in forward.zones)
    return Boundary(
        tunnel.name, forward.name, forward.service, None, transfers, f"not tried: {why}"
    )


async def prove(tunnel: Tunnel, forward: Forward, open_relay: Opener) -> Boundary:
    """The boundary conversation(s) for one smtp or dns forward, through the relay.

    Never raises for what the servers answer or for a broken path: the result says it.
    """
    timeout = tunnel.probe_timeout
    if forward.service == "smtp":
        relays, detail = await _attempt(timeout, _relay_test(tunnel, forward, open_relay, timeout))
        return Boundary(tunnel.name, forward.name, "smtp", open_relay=relays, detail=detail)
    transfers = []
    for zone in forward.zones:
        ok, why = await _attempt(timeout, _transfer_test(forward, zone, open_relay, timeout))
        transfers.append(ZoneTransfer(zone, ok, why))
    refused = [t for t in transfers if t.ok is False]
    if refused:
        detail = _transfer_advice(forward, [t.zone for t in refused])
    else:
        detail = "; ".join(f"{t.zone}: {t.detail}" for t in transfers)
    return Boundary(tunnel.name, forward.name, "dns", transfers=tuple(transfers), detail=detail)


async def _attempt(
    timeout: float, conversation: Awaitable[tuple[bool | None, str]]
) -> tuple[bool | None, str]:
    """A conversation's verdict, or None and why it could not be had."""
    try:
        # Two round trips' worth per step at most; the whole is bounded here.
        async with asyncio.timeout(timeout * 2):
            return await conversation
    except TimeoutError:
        return None, f"not tried: no answer within {timeout * 2:g}s"
    except _FAILURES as exc:
        return None, f"not tried: {exc}"


def _source_words(forward: Forward) -> str:
    source = forward.source_address
    if source is None:
        return f"this host's own address toward {forward.target} (the kernel's choice)"
    return source


# -- smtp: would the internal MTA relay for the tunnel? -------------------------------------


async def _relay_test(
    tunnel: Tunnel, forward: Forward, open_relay: Opener, timeout: float
) -> tuple[bool | None, str]:
    stream = await open_relay(forward.listen, timeout)
    try:
        return await _ask_to_relay(stream, tunnel, forward)
    finally:
        stream.close()


async def _command(stream: Stream, line: str, what: str) -> tuple[int, str]:
    stream.write(line.encode("ascii") + b"\r\n")
    await stream.drain()
    return await read_smtp_reply(stream, what)


async def _ask_to_relay(
    stream: Stream, tunnel: Tunnel, forward: Forward
) -> tuple[bool | None, str]:
    code, greeting = await read_smtp_reply(stream, "greeting")
    if code != 220:
        return None, f'not tried: the greeting was "{greeting}"'
    code, line = await _command(stream, "EHLO tunnelkeeper.check", "EHLO")
    if code != 250:
        return None, f'not tried: EHLO answered "{line}"'
    # A sender in the organisation's own domain: one a real MTA has no reason to refuse.
    sender_domain = forward.domains[0] if forward.domains else tunnel.host
    code, line = await _command(stream, f"MAIL FROM:<tunnelkeeper-test@{sender_domain}>", "MAIL")
    if code // 100 != 2:
        await _goodbye(stream)
        return None, f'not tried: MAIL FROM answered "{line}"'
    code, line = await _command(stream, f"RCPT TO:<{TEST_RECIPIENT}>", "RCPT")
    await _goodbye(stream)
    if code // 100 == 2:
        return True, _relay_advice(forward, line)
    return False, f'RCPT TO:<{TEST_RECIPIENT}> refused from the tunnel ("{line}"): no relaying'


async def _goodbye(stream: Stream) -> None:
    """RSET and QUIT: never DATA. The answers are read so the server logs a clean end."""
    try:
        await _command(stream, "RSET", "RSET")
        await _command(stream, "QUIT", "QUIT")
    except (ProbeError, StreamLost):
        pass  # the verdict is in; a server that hangs up early changes nothing


def _relay_advice(forward: Forward, reply: str) -> str:
    source = _source_words(forward)
    address = forward.source_address or "ADDRESS"
    words = [
        f'{OPEN_RELAY}: it accepted RCPT TO:<{TEST_RECIPIENT}> ("{reply}") from {source}, so '
        "anyone on the relay can send mail anywhere through it."
    ]
    if forward.source_address is None and ":" in forward.target.host and forward.source is None:
        words.append(
            "Linux has one IPv6 loopback address, so connections to an IPv6 target come from "
            "::1, the internal host's own: use a 127.x target (reached from 127.0.0.2) or "
            "proxy_protocol."
        )
    elif forward.source_address is None:
        words.append(
            "Give the forward a `source` of its own (127.0.0.2 for a loopback target): the "
            "kernel's choice is an address the internal host trusts as its own."
        )
    words.append(
        f"sendmail: let no access-map line give {address} RELAY (after a `Connect:127 RELAY`, "
        f"add `Connect:{address} OK`). Postfix: keep {address} out of mynetworks (mynetworks = "
        "127.0.0.1/32 [::1]/128), or set proxy_protocol on the forward and "
        f"smtpd_upstream_proxy_protocol = haproxy on that smtpd. {KIT}."
    )
    return " ".join(words)


# -- dns: may the tunnel transfer each zone? ------------------------------------------------


async def _transfer_test(
    forward: Forward, zone: str, open_relay: Opener, timeout: float
) -> tuple[bool | None, str]:
    # Imported here, as the dns probe does: only a dns forward's check pays for dnspython.
    import dns.message
    import dns.name
    import dns.rcode
    import dns.rdatatype
    import dns.rrset

    stream = await open_relay(forward.listen, timeout)
    try:
        answer = await _exchange(stream, dns.message.make_query(zone, dns.rdatatype.SOA))
        if answer is None:
            return None, f"not tried: the connection closed at the SOA query for {zone}"
        rcode = answer.rcode()
        soa = [r for r in answer.answer if r.rdtype == dns.rdatatype.SOA]
        if rcode != dns.rcode.NOERROR or not soa:
            said = dns.rcode.to_text(rcode) if rcode != dns.rcode.NOERROR else "no SOA"
            return None, f"not tried: the SOA query for {zone} answered {said}"
        serial = soa[0][0].serial
        # An IXFR at the serial just read: an up-to-date secondary's question, answered
        # with the SOA alone. The primary applies allow-transfer to it as to an AXFR.
        query = dns.message.make_query(zone, dns.rdatatype.IXFR)
        query.authority.append(
            dns.rrset.from_text(dns.name.from_text(zone), 0, "IN", "SOA", f". . {serial} 0 0 0 0")
        )
        reply = await _exchange(stream, query)
    finally:
        stream.close()
    if reply is None:
        return False, f"the primary closed the connection at an IXFR of {zone}"
    rcode = reply.rcode()
    if rcode == dns.rcode.NOERROR and reply.answer:
        return True, f"IXFR of {zone} at serial {serial} answered"
    return False, f"IXFR of {zone} answered {dns.rcode.to_text(rcode)}"


async def _exchange(stream: Stream, query: Any) -> Any:
    """Send one DNS message over TCP and read the reply to it; None when the peer closed."""
    import dns.exception
    import dns.message

    wire = query.to_wire()
    stream.write(struct.pack("!H", len(wire)) + wire)
    await stream.drain()
    try:
        (length,) = struct.unpack("!H", await stream.readexactly(2))
        data = await stream.readexactly(length)
    except StreamLost:
        return None
    try:
        reply = dns.message.from_wire(data, one_rr_per_rrset=True)
    except (dns.exception.DNSException, ValueError, IndexError, struct.error) as exc:
        raise ProbeError(f"unreadable DNS reply: {peer_text(str(exc))}") from exc
    if reply.id != query.id:
        raise ProbeError("DNS reply does not match the query")
    return reply


def _transfer_advice(forward: Forward, zones: list[str]) -> str:
    source = _source_words(forward)
    allow = forward.source_address or "ADDRESS"
    names = ", ".join(zones)
    return (
        f"{NO_TRANSFER}: {names} refused a transfer from {source}, so the relay's secondary "
        f"cannot refresh and serves stale data until the zone expires. On the internal primary "
        f"allow it in each zone the relay serves: `allow-transfer {{ {allow}; }};` (beside "
        "any address already there), or the `tunnelkeeper` ACL: `allow-transfer { tunnelkeeper; "
        f"}};`. {KIT}."
    )
