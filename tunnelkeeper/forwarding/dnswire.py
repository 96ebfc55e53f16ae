"""DNS over TCP as the gate reads it: frame sizes, header counts, parsing, a query in words."""

from __future__ import annotations

import struct

import dns.exception
import dns.message
import dns.opcode
import dns.rdatatype
import dns.rrset

from ..peertext import peer_text
from .notdns import NotDns

_COUNTS = struct.Struct("!HHHH")  # at offset 4: questions, answers, authority, additional


def unusual_counts(wire: bytes) -> bool:
    """Whether a message carries what no query does: one question, no answers, at most the SOA
    an IXFR carries, an OPT and a TSIG (`wire` has at least a header)."""
    questions, answers, authority, additional = _COUNTS.unpack_from(wire, 4)
    return bool(questions != 1 or answers != 0 or authority > 1 or additional > 2)


def parse(wire: bytes, question_only: bool = False) -> dns.message.Message:
    """Raises NotDns when `wire` is not a DNS message."""
    try:
        # keyring=False: a TSIG is passed on unverified; the target checks it.
        return dns.message.from_wire(wire, keyring=False, question_only=question_only)
    except (dns.exception.DNSException, ValueError, IndexError, struct.error) as exc:
        raise NotDns(f"not a DNS message ({type(exc).__name__})") from exc


def describe(opcode: int, question: dns.rrset.RRset | None, why: str) -> str:
    """A refused query in words, for a log line: the peer's name escaped."""
    what = dns.opcode.to_text(dns.opcode.Opcode.make(opcode))
    if question is not None:
        what += f" {peer_text(question.name.to_text(), 120)}"
        what += f" {peer_text(dns.rdatatype.to_text(question.rdtype), 20)}"
    return f"{what} ({why})"


def question_wire(question: dns.rrset.RRset) -> bytes:
    name = question.name.to_wire()  # bytes when given no file to write to
    assert name is not None
    return name + struct.pack("!HH", question.rdtype, question.rdclass)


def frame_size(high: int, low: int) -> int:
    """The length of a frame (prefix included) from its 2-byte prefix. Raises NotDns for 0."""
    size = 2 + ((high << 8) | low)
    if size == 2:
        raise NotDns("a zero-length DNS message")
    return size
