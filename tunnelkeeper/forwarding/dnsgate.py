"""The gate of a dns forward: only queries for the forward's zones reach the target; anything
else is answered REFUSED here, and bytes that are not DNS over TCP end the connection.

Only the relay -> target direction is read. Replies from the target are passed on as they
come, never copied or parsed; the gate only follows their 2-byte length prefixes, so that a
REFUSED it writes is never put in the middle of one of the target's messages. A client that
pipelines may therefore get a REFUSED before the answers to queries it sent earlier: DNS over
TCP lets a server answer out of order (replies are matched by ID), and holding the refusal
back until the target has answered everything before it would mean parsing its replies (a
zone transfer is many messages to one query).

A transfer (AXFR, IXFR) passes only for a zone the forward names, never for a zone below one:
an internal-only zone delegated under a public one must not be handed over whole. Any query
for a forward zone's own name (its apex) passes. A lookup of a name strictly below it passes
only when the target says the name lies in that very zone (see zonecut): a name of an
internal child zone on the same server is refused. While that is asked, the query and
everything sent after it wait (the channel is not read), so frames reach the target in the
order they were sent. A connection that draws more than MAX_REFUSALS refusals is closed: the
relay's secondary never draws one, and each costs a parse.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Sequence
from dataclasses import dataclass

import dns.exception
import dns.message
import dns.name
import dns.opcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from ..peertext import peer_text
from .dnswire import describe, frame_size, parse, question_wire, unusual_counts
from .notdns import NotDns, TooManyRefusals
from .ratelog import RateLog
from .zonecut import Owner, ZoneCuts

log = logging.getLogger(__name__)

MAX_REFUSALS = 100  # refusals one connection may draw before it is closed

_HEADER = struct.Struct("!HHHHHH")
_QR, _OPCODE, _RD, _REFUSED = 0x8000, 0x7800, 0x0100, 5
# Query types that are not record types but are asked for: transfers, and ANY.
_TRANSFERS = frozenset({dns.rdatatype.AXFR, dns.rdatatype.IXFR})
_ASKABLE_META = _TRANSFERS | {dns.rdatatype.ANY}


@dataclass(frozen=True, slots=True)
class CutCheck:
    """A lookup below a zone's apex, waiting for the target to say which zone its name is in."""

    name: dns.name.Name
    zone: dns.name.Name  # the forward's zone it must lie in
    wire: bytes  # the query
    message: dns.message.Message
    question: dns.rrset.RRset


class ZonePolicy:
    """Which queries a dns forward carries, and its tally of the ones it refused."""

    def __init__(self, forward: str, zones: Sequence[str], cuts: ZoneCuts) -> None:
        self.forward = forward
        self.zones = tuple(dns.name.from_text(zone) for zone in zones)
        self.cuts = cuts
        self.refused = 0
        # The last refused query, for the summary line: opcode, question, why.
        self._last: tuple[int, dns.rrset.RRset | None, str] = (0, None, "")
        self._refusals = RateLog(log)
        self._closings = RateLog(log)

    def gate(self) -> DnsGate:
        return DnsGate(self)

    def judge(self, wire: bytes) -> bytes | CutCheck | None:
        """None when the message `wire` may go to the target; a CutCheck when that depends on
        the zone the target puts its name in; else the REFUSED reply (without its length
        prefix): the query's ID, QR set, its opcode and RD, its question when it has exactly
        one. Raises NotDns when `wire` is not a DNS message."""
        # Judged on its header first: a query has one question, no answers, at most the SOA an
        # IXFR carries and an OPT and a TSIG. Anything else is refused after reading only its
        # questions, so a frame stuffed with records costs no more than a plain one to refuse.
        if len(wire) >= 12 and unusual_counts(wire):
            message = parse(wire, question_only=True)
            question = message.question[0] if len(message.question) == 1 else None
            return self._refuse(wire, message, question, "records a query does not carry")
        message = parse(wire)
        question = message.question[0] if len(message.question) == 1 else None
        why = self._refusal(message, question)
        if why is None:
            assert question is not None
            zone = self._below(question)
            if zone is None:
                return None
            owner = self.cuts.cached(question.name)
            check = CutCheck(question.name, zone, wire, message, question)
            return check if owner is None else self.settle(check, owner)
        return self._refuse(wire, message, question, why)

    def settle(self, check: CutCheck, owner: Owner) -> bytes | None:
        """None when the target put the name in the zone it must lie in, else the REFUSED."""
        if owner == check.zone:
            return None
        if isinstance(owner, dns.name.Name):
            why = f"in the target's zone {peer_text(owner.to_text(), 120)}"
        else:
            why = owner
        return self._refuse(check.wire, check.message, check.question, why)

    def _refusal(
        self, message: dns.message.Message, question: dns.rrset.RRset | None
    ) -> str | None:
        """Why the message may not go to the target; None when it may."""
        if message.flags & _QR:
            return "a response, not a query"
        if message.opcode() != dns.opcode.QUERY:
            return "not a QUERY"
        if question is None:
            return f"{len(message.question)} questions"
        if question.rdclass != dns.rdataclass.IN:
            return "not class IN"
        if question.rdtype not in _ASKABLE_META and dns.rdatatype.is_metatype(question.rdtype):
            return "not a lookup or a transfer"
        if question.rdtype in _TRANSFERS:
            if question.name not in self.zones:
                return "a transfer of a zone it does not carry"
        elif not any(question.name.is_subdomain(zone) for zone in self.zones):
            return "not for its zones"
        return None

    def _below(self, question: dns.rrset.RRset) -> dns.name.Name | None:
        """The forward zone a lookup is strictly below (the longest that matches), None for
        one at a zone's apex, where every query passes."""
        name = question.name
        if name in self.zones:
            return None
        return max((zone for zone in self.zones if name.is_subdomain(zone)), key=lambda z: len(z))

    def _refuse(
        self,
        wire: bytes,
        message: dns.message.Message,
        question: dns.rrset.RRset | None,
        why: str,
    ) -> bytes:
        """Count a refusal, log it at a bounded rate, and make its reply."""
        self.refused += 1
        # Put in words only when logged: a flood of refusals must cost as little as it can.
        self._last = (message.opcode(), question, why)
        self._refusals.note(self._first_line, self._summary_line)
        ident, flags = struct.unpack_from("!HH", wire)
        echoed = b"" if question is None else question_wire(question)
        reply_flags = _QR | (flags & (_OPCODE | _RD)) | _REFUSED
        return _HEADER.pack(ident, reply_flags, 1 if echoed else 0, 0, 0, 0) + echoed

    def _first_line(self) -> str:
        return (
            f"forward {self.forward}: refused {describe(*self._last)}; it carries "
            + ", ".join(zone.to_text(omit_final_dot=True) for zone in self.zones)
            + " only; further refusals are summed up at most once a minute"
        )

    def _summary_line(self, count: int) -> str:
        return (
            f"forward {self.forward}: refused {count} more queries (last: {describe(*self._last)})"
        )

    def flooded(self) -> None:
        """A connection was closed for drawing more than MAX_REFUSALS refusals."""
        self._closings.note(
            lambda: (
                f"forward {self.forward}: a connection drew more than {MAX_REFUSALS} refused "
                "queries and was closed; further closings are summed up at most once a minute"
            ),
            lambda count: (
                f"forward {self.forward}: closed {count} more connections that drew "
                f"more than {MAX_REFUSALS} refused queries"
            ),
        )


class DnsGate:
    """One connection's gate: frames what the relay side sends and sorts it.

    `from_client` returns what goes to the target (whole frames, in order) and the REFUSED
    replies that may go back now. A reply that would land inside one of the target's messages,
    or find the channel full, is held until `split_reply` finds the end of that message or
    `take_held` is called with the channel writable again. A lookup whose verdict needs a
    zone-cut check stops the sorting: `check` is set, the query and everything after it wait
    until `decide` is given the target's word.
    """

    def __init__(self, policy: ZonePolicy) -> None:
        self.policy = policy
        self._partial = bytearray()  # the start of a frame not yet whole (< 2 + 65535 bytes)
        self._reply_left = 0  # bytes of the target's current message still to come
        self._reply_head: int | None = None  # first byte of a length prefix split in two
        self._held: list[bytes] = []  # framed REFUSED replies waiting
        self.held_bytes = 0
        self.channel_full = False  # set by the splice: the relay side is not reading
        self.refusals = 0  # drawn by this connection
        self.check: CutCheck | None = None  # the zone-cut check the stream waits for
        self._waiting = b""  # the framed query of `check`
        # What came after it: the rest of that read, and whatever the relay side sent before
        # the splice stopped reading (at most the SSH channel's window).
        self._backlog = bytearray()

    @property
    def forward(self) -> str:
        return self.policy.forward

    @property
    def at_boundary(self) -> bool:
        """The target's reply stream is between two messages."""
        return self._reply_left == 0 and self._reply_head is None

    def from_client(self, data: bytes) -> tuple[list[bytes], list[bytes]]:
        """Sort `data` from the relay side: (frames for the target, replies for the relay
        side to have now). Allowed frames go on as slices of `data` (`data` itself when it is
        all allowed and whole). Raises NotDns."""
        passed: list[bytes] = []
        refusals: list[bytes] = []
        if self.check is not None:
            self._backlog += data
            return passed, refusals
        view = memoryview(data)
        start = 0
        if self._partial:  # a frame split across reads: grown in place, never re-copied
            start = self._complete(view)
            if start < 0:
                return passed, refusals
            frame = bytes(self._partial)
            self._partial.clear()
            if not self._sort(frame, passed, refusals):
                self._backlog += view[start:]
                return passed, refusals
        run = start  # the run of allowed frames not yet handed on: view[start:run]
        end = len(view)
        while end - run >= 2:
            size = frame_size(view[run], view[run + 1])
            if end - run < size:
                break
            verdict = self.policy.judge(bytes(view[run + 2 : run + size]))
            if verdict is None:
                run += size
                continue
            if run > start:
                passed.append(bytes(view[start:run]))
            if isinstance(verdict, CutCheck):
                self._wait(verdict, bytes(view[run : run + size]))
                self._backlog += view[run + size :]
                return passed, refusals
            self._refuse(verdict, refusals)
            start = run = run + size
        if run > start:
            passed.append(data if run - start == end else bytes(view[start:run]))
        self._partial += view[run:]
        return passed, refusals

    def decide(self, owner: Owner) -> tuple[list[bytes], list[bytes]]:
        """The target's word on the pending check's name: pass or refuse its query, then sort
        what waited behind it (which may stop at another check). Raises NotDns."""
        check, frame = self.check, self._waiting
        assert check is not None
        self.check, self._waiting = None, b""
        passed: list[bytes] = []
        refusals: list[bytes] = []
        refusal = self.policy.settle(check, owner)
        if refusal is None:
            passed.append(frame)
        else:
            self._refuse(refusal, refusals)
        if self._backlog:
            backlog = bytes(self._backlog)
            self._backlog.clear()
            more, more_refusals = self.from_client(backlog)
            passed += more
            refusals += more_refusals
        return passed, refusals

    def _wait(self, check: CutCheck, frame: bytes) -> None:
        self.check, self._waiting = check, frame

    def _complete(self, view: memoryview) -> int:
        """Add to the frame begun in an earlier read what `view` has of it; return how many
        bytes of `view` that took, or -1 while the frame is still incomplete."""
        partial, used = self._partial, 0
        if len(partial) < 2:
            used = 2 - len(partial)
            partial += view[:used]
            if len(partial) < 2:
                return -1
        need = frame_size(partial[0], partial[1]) - len(partial)
        partial += view[used : used + need]
        used += need
        return used if used <= len(view) else -1

    def _sort(self, frame: bytes, passed: list[bytes], refusals: list[bytes]) -> bool:
        """Sort one whole frame; False when it waits for a check."""
        verdict = self.policy.judge(frame[2:])
        if verdict is None:
            passed.append(frame)
        elif isinstance(verdict, CutCheck):
            self._wait(verdict, frame)
            return False
        else:
            self._refuse(verdict, refusals)
        return True

    def _refuse(self, reply: bytes, refusals: list[bytes]) -> None:
        self.refusals += 1
        if self.refusals > MAX_REFUSALS:
            raise TooManyRefusals(f"more than {MAX_REFUSALS} refused queries")
        framed = struct.pack("!H", len(reply)) + reply
        if self.at_boundary and not self._held and not self.channel_full:
            refusals.append(framed)
        else:
            self._held.append(framed)
            self.held_bytes += len(framed)

    def client_eof(self) -> None:
        """The relay side sent its last byte (call it once no check is pending). Raises NotDns
        when a frame was cut short."""
        assert self.check is None
        if self._partial:
            raise NotDns(f"the connection ended {len(self._partial)} bytes into a message")

    def split_reply(self, data: bytes) -> tuple[int, list[bytes]] | None:
        """Follow the target's `data`, about to be passed on. With replies held and the
        channel writable: (offset, replies) when they may go at that offset of `data` (the end
        of one of the target's messages), else None."""
        wants = bool(self._held) and not self.channel_full
        if wants and self.at_boundary:
            found: int | None = 0
        else:
            found = None
        i, end = 0, len(data)
        while i < end:
            if self._reply_left:
                step = min(self._reply_left, end - i)
                self._reply_left -= step
                i += step
            elif self._reply_head is not None:
                self._reply_left = (self._reply_head << 8) | data[i]
                self._reply_head = None
                i += 1
            elif end - i >= 2:
                self._reply_left = (data[i] << 8) | data[i + 1]
                i += 2
            else:
                self._reply_head = data[i]
                i += 1
            if wants and found is None and self.at_boundary:
                found = i
        if found is None:
            return None
        return found, self._release()

    def take_held(self) -> list[bytes]:
        """The held replies, when the target's stream is between messages (else none)."""
        if not self.at_boundary or self.channel_full:
            return []
        return self._release()

    def _release(self) -> list[bytes]:
        held, self._held, self.held_bytes = self._held, [], 0
        return held
