"""DNS over TCP for the tests of a dns forward's gate: framed queries, a refusal read back, a
gate fed chunk by chunk, and the relay side of a splice (the SSH channel)."""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

import dns.message

from tunnelkeeper.forwarding.dnsgate import CutCheck, DnsGate
from tunnelkeeper.forwarding.zonecut import Owner

ZONES = ("example.org", "Example.NET")


def framed(wire: bytes) -> bytes:
    return struct.pack("!H", len(wire)) + wire


def query(name: str, rdtype: str = "A", ident: int = 4242, **kw: Any) -> bytes:
    message = dns.message.make_query(name, rdtype, **kw)
    message.id = ident
    return message.to_wire()


def in_its_zone(check: CutCheck) -> Owner:
    """The target's word when every name is in the forward zone it is below."""
    return check.zone


def sort(
    g: DnsGate, *chunks: bytes, owner: Callable[[CutCheck], Owner] = in_its_zone
) -> tuple[bytes, list[bytes]]:
    """Feed `chunks`, each zone-cut check answered by `owner` at once."""
    to_target: list[bytes] = []
    replies: list[bytes] = []
    for chunk in chunks:
        passed, refused = g.from_client(chunk)
        to_target += passed
        replies += refused
        while g.check is not None:
            passed, refused = g.decide(owner(g.check))
            to_target += passed
            replies += refused
    return b"".join(to_target), replies


def parse_refusal(reply: bytes) -> dns.message.Message:
    (size,) = struct.unpack_from("!H", reply)
    assert size == len(reply) - 2
    return dns.message.from_wire(reply[2:])


class Channel:
    """The seam: what the relay side of a splice sees (the SSH channel)."""

    def __init__(self) -> None:
        self.written = bytearray()
        self.reading = True
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written += data

    def write_eof(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True
