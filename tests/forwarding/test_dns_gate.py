"""The gate of a dns forward, byte by byte: what reaches the target, what is answered REFUSED,
what closes the connection, and a fuzzed stream that never lets a foreign query through."""

from __future__ import annotations

import asyncio
import logging
import struct
import zlib
from collections.abc import Callable
from typing import TypeVar

import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import dns.update
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.dnswire import ZONES, Channel, framed, parse_refusal, query, sort
from tunnelkeeper.forwarding import dnsgate, ratelog
from tunnelkeeper.forwarding.dnsgate import DnsGate, ZonePolicy
from tunnelkeeper.forwarding.notdns import NotDns
from tunnelkeeper.forwarding.zonecut import Owner, ZoneCuts

T = TypeVar("T")


def run(body: Callable[[], T]) -> T:
    """Call `body` inside a running event loop (refusals are logged on loop time)."""

    async def inside() -> T:
        return body()

    return asyncio.run(inside())


def frames(stream: bytes) -> list[bytes]:
    """The messages of a DNS-over-TCP byte stream (which must be whole frames)."""
    out, i = [], 0
    while i < len(stream):
        (size,) = struct.unpack_from("!H", stream, i)
        out.append(stream[i + 2 : i + 2 + size])
        assert len(out[-1]) == size, "a frame cut short reached the target"
        i += 2 + size
    return out


async def never_asked(name: dns.name.Name) -> dns.message.Message:
    raise AssertionError(f"the target was asked about {name}: the test decides itself")


def policy(cuts: ZoneCuts | None = None) -> ZonePolicy:
    return ZonePolicy("dns", ZONES, cuts or ZoneCuts(never_asked))


def gate() -> DnsGate:
    return policy().gate()


@pytest.mark.parametrize(
    ("name", "rdtype"),
    [
        ("example.org", "SOA"),
        ("example.org", "AXFR"),
        ("EXAMPLE.org", "IXFR"),
        ("www.Example.Org", "A"),
        ("deep.mail.example.net", "MX"),
        ("example.net", "ANY"),
    ],
)
def test_a_query_for_the_zones_passes_untouched(name: str, rdtype: str) -> None:
    wire = query(name, rdtype)
    g = gate()
    passed, replies = run(lambda: sort(g, framed(wire)))
    assert passed == framed(wire)
    assert replies == []


def test_pipelined_allowed_queries_pass_as_the_same_object() -> None:
    stream = b"".join(
        framed(query("example.org", t, ident=i)) for i, t in enumerate(["A", "MX", "NS"])
    )
    g = gate()
    passed, _ = run(lambda: g.from_client(stream))
    assert passed == [stream] and passed[0] is stream  # no copy when all of it may go


@pytest.mark.parametrize(
    ("name", "rdtype", "why"),
    [
        ("payroll.corp.example.com", "A", "another zone"),
        ("org", "SOA", "the parent of a zone"),
        ("notexample.org", "A", "a name that only ends like a zone"),
        ("example.org", "TKEY", "a meta type that is no lookup"),
        ("corp.example.org", "AXFR", "a transfer of a zone below a zone it carries"),
        ("corp.EXAMPLE.net", "IXFR", "the same, as IXFR"),
    ],
)
def test_a_query_for_another_name_is_refused_here(name: str, rdtype: str, why: str) -> None:
    wire = query(name, rdtype, ident=0xBEEF)
    g = gate()
    passed, replies = run(lambda: sort(g, framed(wire)))
    assert passed == b"", why
    assert len(replies) == 1
    raw = replies[0][2:]
    ident, flags, qd, an, ns, ar = struct.unpack_from("!6H", raw)
    assert ident == 0xBEEF
    assert flags == 0x8000 | 0x0100 | 5  # QR, RD copied from the query, opcode QUERY, REFUSED
    assert (qd, an, ns, ar) == (1, 0, 0, 0)
    reply = parse_refusal(replies[0])
    assert reply.question[0].name == dns.name.from_text(name)
    assert reply.question[0].rdtype == dns.rdatatype.from_text(rdtype)
    assert raw[12:] == bytes(dns.name.from_text(name).to_wire() or b"") + struct.pack(
        "!HH", dns.rdatatype.from_text(rdtype), dns.rdataclass.IN
    )


def test_refused_keeps_the_opcode_and_a_clear_rd() -> None:
    update = dns.update.UpdateMessage("example.org", id=7)
    update.add("www", 300, "A", "192.0.2.1")
    notify = dns.message.make_query("example.org", "SOA")
    notify.set_opcode(dns.opcode.NOTIFY)
    notify.flags = dns.flags.AA | (dns.opcode.to_flags(dns.opcode.NOTIFY))
    notify.id = 8
    g = gate()
    passed, replies = run(lambda: sort(g, framed(update.to_wire()) + framed(notify.to_wire())))
    assert passed == b""
    first, second = (parse_refusal(r) for r in replies)
    assert (first.id, first.opcode(), first.rcode()) == (7, dns.opcode.UPDATE, dns.rcode.REFUSED)
    assert (second.id, second.opcode(), second.rcode()) == (8, dns.opcode.NOTIFY, dns.rcode.REFUSED)
    assert not second.flags & dns.flags.RD and second.flags & dns.flags.QR
    assert not second.flags & dns.flags.AA  # not an authoritative answer: we are no server


def test_no_question_or_two_questions_and_unknown_opcodes_are_refused() -> None:
    empty = struct.pack("!6H", 1, 0x0100, 0, 0, 0, 0)
    two = dns.message.make_query("example.org", "SOA")
    two.question.append(dns.message.make_query("www.example.org", "A").question[0])
    two.id = 2
    unknown = bytearray(query("example.org", "SOA", ident=3))
    unknown[2] = (unknown[2] & 0x87) | (9 << 3)  # opcode 9: unassigned
    g = gate()
    passed, replies = run(
        lambda: sort(g, framed(empty), framed(two.to_wire()), framed(bytes(unknown)))
    )
    assert passed == b""
    heads = [struct.unpack_from("!6H", r, 2) for r in replies]
    assert heads[0] == (1, 0x8000 | 0x0100 | 5, 0, 0, 0, 0)
    assert heads[1] == (2, 0x8000 | 0x0100 | 5, 0, 0, 0, 0)  # two questions: none echoed
    assert heads[2][:3] == (3, 0x8000 | (9 << 11) | 0x0100 | 5, 1)
    assert g.policy.refused == 3


def test_a_response_sent_towards_the_target_is_refused() -> None:
    reply = dns.message.make_response(dns.message.make_query("example.org", "SOA"))
    g = gate()
    passed, replies = run(lambda: sort(g, framed(reply.to_wire())))
    assert passed == b"" and len(replies) == 1


@pytest.mark.parametrize(
    ("stream", "what"),
    [
        (b"\x00\x00", "a zero length"),
        (framed(b"\x01\x02\x03"), "a message shorter than a header"),
        (framed(query("example.org") + b"junk"), "trailing bytes after a query"),
        (b"GET / HTTP/1.1\r\nHost: example.org\r\n\r\n", "another protocol"),
    ],
)
def test_bytes_that_are_not_dns_close_the_connection(stream: bytes, what: str) -> None:
    g = gate()

    def feed_then_end() -> None:
        sort(g, stream)
        g.client_eof()  # another protocol announces a long "frame" and ends before it

    with pytest.raises(NotDns):
        run(feed_then_end)


def test_a_frame_cut_short_at_eof_closes_and_is_never_passed() -> None:
    wire = framed(query("example.org", "SOA"))
    g = gate()
    passed, _ = run(lambda: sort(g, wire[:1], wire[1:5], wire[5:-1]))
    assert passed == b""
    with pytest.raises(NotDns):
        g.client_eof()
    announced = gate()
    assert run(lambda: sort(announced, b"\xff\xff")) == (b"", [])
    with pytest.raises(NotDns):
        announced.client_eof()


def test_a_frame_split_anywhere_passes_whole_and_once() -> None:
    first, second = framed(query("a.example.org", ident=1)), framed(query("b.example.org", ident=2))
    stream = first + second
    for cut in range(1, len(stream)):
        g = gate()
        passed, replies = sort(g, stream[:cut], stream[cut:])  # nothing refused: no loop needed
        assert passed == stream and replies == []
        g.client_eof()


def test_a_largest_frame_fed_a_byte_at_a_time_passes_whole() -> None:
    import dns.edns

    padding = dns.edns.GenericOption(dns.edns.OptionType.PADDING, b"\0" * 64_000)
    big = framed(query("example.org", "SOA", use_edns=0, payload=65535, options=[padding]))
    assert len(big) > 64_000
    g = gate()
    passed: list[bytes] = []
    for i in range(len(big)):  # the frame is grown in place: linear, not quadratic
        out, replies = g.from_client(big[i : i + 1])
        passed += out
        assert replies == []
    assert passed == [big]
    g.client_eof()


def test_a_refusal_waits_for_the_end_of_the_targets_message() -> None:
    g = gate()
    allowed, foreign = framed(query("example.org", "AXFR", ident=1)), framed(query("corp.lan"))
    reply = framed(b"\x00\x01" + b"x" * 998)  # a 1000-byte message of the target
    run(lambda: g.from_client(allowed))
    assert g.split_reply(reply[:300]) is None  # mid-message, nothing held
    passed, refusals = run(lambda: g.from_client(foreign))
    assert passed == [] and refusals == []  # held: the target is inside a message
    split = g.split_reply(reply[300:] + reply[:10])  # the end of it, then the next one starts
    assert split is not None
    at, held = split
    assert at == len(reply) - 300 and len(held) == 1 and held[0][2:4] == struct.pack("!H", 4242)
    assert g.held_bytes == 0


def test_a_full_channel_holds_refusals_until_it_drains() -> None:
    g = gate()
    g.channel_full = True
    _, refusals = run(lambda: g.from_client(framed(query("corp.lan"))))
    assert refusals == [] and g.held_bytes > 0
    g.channel_full = False
    assert len(g.take_held()) == 1 and g.held_bytes == 0


def test_refusals_are_logged_once_then_summed_up(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ratelog, "SUMMARY_PERIOD", 0.2)
    evil = "evil\x1b[2J.example.com"

    async def burst() -> list[str]:
        g = gate()
        for i in range(50):
            g.from_client(framed(query(evil, ident=i)))
        assert g.policy.refused == 50
        at_once = [r.getMessage() for r in caplog.records]
        await asyncio.sleep(0.4)  # the summary comes by itself, without another refusal
        return at_once

    caplog.set_level(logging.WARNING, logger=dnsgate.__name__)
    at_once = asyncio.run(burst())
    lines = [r.getMessage() for r in caplog.records]
    assert len(at_once) == 1 and len(lines) == 2
    assert "refused QUERY evil\\027[2J.example.com. A (not for its zones)" in lines[0]
    assert "refused 49 more queries" in lines[1]
    assert not any("\x1b" in line for line in lines)


# -- fuzz ------------------------------------------------------------------------------------

FUZZ = settings(
    max_examples=400,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)

labels = st.text(alphabet="abcXYZ09-", min_size=1, max_size=8)
inside = st.builds(
    lambda parts, zone: ".".join([*parts, zone]),
    st.lists(labels, max_size=3),
    st.sampled_from(["example.org", "EXAMPLE.net"]),
)
outside = st.builds(
    lambda parts, tld: ".".join([*parts, tld]),
    st.lists(labels, min_size=1, max_size=3),
    st.sampled_from(["corp.lan", "example.com", "org", "net"]),
)
types = st.sampled_from(["A", "AAAA", "MX", "SOA", "AXFR", "IXFR", "TXT", "TKEY", "ANY"])
opcodes = st.sampled_from(
    [
        dns.opcode.QUERY,
        dns.opcode.QUERY,
        dns.opcode.NOTIFY,
        dns.opcode.UPDATE,
        dns.opcode.STATUS,
        9,
        15,
    ]
)


@st.composite
def messages(draw: st.DrawFn) -> bytes:
    name = draw(st.one_of(inside, outside))
    message = dns.message.make_query(name, draw(types), use_edns=draw(st.booleans()))
    message.id = draw(st.integers(0, 0xFFFF))
    wire = bytearray(message.to_wire())
    opcode = draw(opcodes)
    wire[2] = (wire[2] & 0x87) | (opcode << 3)
    if draw(st.integers(0, 9)) == 0:
        wire[2] |= 0x80  # QR: a response
    return bytes(wire)


pieces = st.one_of(
    messages().map(framed),
    messages().map(framed),
    st.binary(max_size=40),  # noise
    messages().flatmap(lambda m: st.integers(0, len(m) + 1).map(lambda n: framed(m)[:n])),
    st.builds(
        lambda n, tail: struct.pack("!H", n) + tail, st.integers(0, 0xFFFF), st.binary(max_size=20)
    ),
)


def stub_owner(name: dns.name.Name, zone: dns.name.Name) -> Owner:
    """The target's word on a name, stubbed and deterministic: in the forward's zone, in a
    child zone of it, or no usable answer."""
    pick = zlib.crc32(name.to_text().lower().encode()) % 3
    if pick == 0:
        return zone
    return dns.name.from_text("corp", zone) if pick == 1 else "no answer from the target in 2 s"


def allowed(wire: bytes) -> bool:
    """Whether a message is one the gate may hand to the target: decided independently."""
    message = dns.message.from_wire(wire, keyring=False)
    if message.opcode() != dns.opcode.QUERY or message.flags & dns.flags.QR:
        return False
    if len(message.question) != 1:
        return False
    question = message.question[0]
    zones = [dns.name.from_text(z) for z in ZONES]
    if question.rdtype in (dns.rdatatype.AXFR, dns.rdatatype.IXFR):
        return question.rdclass == dns.rdataclass.IN and question.name in zones
    above = [z for z in zones if question.name.is_subdomain(z)]
    if question.rdclass != dns.rdataclass.IN or not above or question.rdtype == dns.rdatatype.TKEY:
        return False
    if question.name in zones:
        return True  # at a zone's apex: no check
    zone = max(above, key=len)
    return stub_owner(question.name, zone) == zone


@FUZZ
@given(
    st.lists(pieces, max_size=12),
    st.lists(st.integers(1, 300), max_size=20),
    st.lists(st.booleans(), max_size=20),
)
def test_a_fuzzed_stream_never_lets_a_foreign_query_through(
    parts: list[bytes], cuts: list[int], answer_late: list[bool]
) -> None:
    stream = b"".join(parts)
    chunks, i = [], 0
    for size in cuts:
        chunks.append(stream[i : i + size])
        i += size
    chunks.append(stream[i:])
    to_target: list[bytes] = []
    replies: list[bytes] = []
    closed = False
    checks: list[dns.name.Name] = []
    g = gate()

    def answer_checks() -> None:
        while g.check is not None:
            checks.append(g.check.name)
            passed, refused = g.decide(stub_owner(g.check.name, g.check.zone))
            to_target.extend(passed)
            replies.extend(refused)

    async def feed() -> None:
        nonlocal closed
        try:
            for n, chunk in enumerate(chunks):
                passed, refused = g.from_client(chunk)
                to_target.extend(passed)
                replies.extend(refused)
                # A check may be answered at once, or after more of the stream came (and
                # waited behind it).
                if n >= len(answer_late) or not answer_late[n]:
                    answer_checks()
            answer_checks()
            g.client_eof()
        except NotDns:
            closed = True

    asyncio.run(feed())
    delivered = frames(b"".join(to_target))
    for wire in delivered:
        assert allowed(wire), dns.message.from_wire(wire, keyring=False)
    for reply in replies:
        assert parse_refusal(reply).rcode() == dns.rcode.REFUSED
    for name in checks:  # a check is only for a name strictly below a zone
        assert any(name.is_subdomain(z) and name != z for z in g.policy.zones)
    if not closed:
        assert (
            len(replies) == g.policy.refused
        )  # a clean stream: every message either passed or was refused, in order
        assert stream.startswith(b"".join(framed(w) for w in delivered)) or len(replies) > 0
        assert len(delivered) + len(replies) == len(frames(stream))


# -- in the splice, against a real local target ------------------------------------------------


LONG_FOREIGN = ".".join(["x" * 60, "y" * 60, "z" * 60, "corp", "lan"])


async def test_in_the_splice_a_refusal_never_splits_the_targets_reply() -> None:
    from tunnelkeeper.config import Endpoint
    from tunnelkeeper.forwarding.splice import Splice
    from tunnelkeeper.forwarding.traffic import ForwardTraffic

    reply = framed(b"\x00\x01\x81\x80" + b"r" * 3996)  # one 4000-byte message, sent in two
    received = bytearray()
    halfway, rest = asyncio.Event(), asyncio.Event()

    async def target(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        received.extend(await reader.readexactly(len(axfr)))
        writer.write(reply[:1500])
        await writer.drain()
        halfway.set()
        await rest.wait()
        writer.write(reply[1500:])
        await writer.drain()
        received.extend(await reader.read(100))  # nothing more comes: EOF, or the test ends

    axfr = framed(query("example.org", "AXFR", ident=1))
    foreign = framed(query("payroll.corp.example.com", ident=2))
    server = await asyncio.start_server(target, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    counters = ForwardTraffic()
    counters.dns = policy()
    splice = Splice(counters)
    chan = Channel()
    try:
        await splice.connect_target(Endpoint(host="127.0.0.1", port=port), None, 5)
        splice.connection_made(chan)
        splice.data_received(axfr, None)
        await asyncio.wait_for(halfway.wait(), 5)
        async with asyncio.timeout(5):
            while len(chan.written) < 1500:
                await asyncio.sleep(0.01)
        splice.data_received(foreign, None)  # pipelined while the target is mid-message
        assert bytes(chan.written) == reply[:1500]  # the refusal waits for the message's end
        rest.set()
        async with asyncio.timeout(5):
            while len(chan.written) < len(reply) + 14:
                await asyncio.sleep(0.01)
        assert bytes(chan.written[: len(reply)]) == reply
        refusal = parse_refusal(bytes(chan.written[len(reply) :]))
        assert (refusal.id, refusal.rcode()) == (2, dns.rcode.REFUSED)
        assert counters.bytes_in == len(axfr) and counters.dns.refused == 1
        # A full channel: the next refusal waits until the relay side reads again.
        splice.pause_writing()
        splice.data_received(framed(query("corp.lan", ident=3)), None)
        before = len(chan.written)
        splice.resume_writing()
        assert parse_refusal(bytes(chan.written[before:])).id == 3
        # A relay side that sends and never reads: past 4 KiB of replies held, it is not read.
        splice.pause_writing()
        flood = framed(query(LONG_FOREIGN, ident=4)) * 30
        splice.data_received(flood, None)
        assert not chan.reading and len(chan.written) == before + 28
        splice.resume_writing()
        refusal_size = 2 + len(query(LONG_FOREIGN))  # the header and the question echoed
        assert chan.reading and len(chan.written) == before + 28 + 30 * refusal_size
        # Not DNS: the connection is closed, and nothing of it reached the target.
        splice.data_received(b"\x00\x00", None)
        assert chan.closed
        await asyncio.sleep(0.05)
        assert bytes(received) == axfr
    finally:
        splice.abort()
        server.close()
        await server.wait_closed()


async def test_in_the_splice_a_frame_cut_short_by_eof_closes_without_reaching_the_target() -> None:
    from tunnelkeeper.config import Endpoint
    from tunnelkeeper.forwarding.splice import Splice
    from tunnelkeeper.forwarding.traffic import ForwardTraffic

    received = bytearray()
    done = asyncio.Event()

    async def target(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        received.extend(await reader.read())  # until EOF or reset
        done.set()
        writer.close()

    server = await asyncio.start_server(target, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    counters = ForwardTraffic()
    counters.dns = policy()
    splice = Splice(counters)
    chan = Channel()
    try:
        await splice.connect_target(Endpoint(host="127.0.0.1", port=port), None, 5)
        splice.connection_made(chan)
        whole = framed(query("example.org", "SOA", ident=9))
        splice.data_received(whole + b"\x01\x00" + b"x" * 40, None)  # then 256 announced
        assert splice.eof_received() is False and chan.closed
        await asyncio.wait_for(done.wait(), 5)
        assert bytes(received) == whole  # the whole query went on, the torn one never did
        assert counters.active == 0
    finally:
        splice.abort()
        server.close()
        await server.wait_closed()


def test_a_query_stuffed_with_records_is_refused_without_parsing_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A relay user cannot hold the event loop with allowed queries that carry thousands of
    records: a query's counts are judged first, and the records are never parsed."""
    header = struct.pack("!HHHHHH", 7, 0, 1, 0, 0, 4000)
    question = b"\x07example\x03org\x00" + struct.pack("!HH", 6, 1)
    junk = b"".join(
        b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 0, 4) + struct.pack("!I", i) for i in range(4000)
    )
    stuffed = header + question + junk
    parsed: list[object] = []
    real = dns.message.from_wire

    def counting(wire: bytes, **kwargs: object) -> dns.message.Message:
        parsed.append(kwargs.get("question_only", False))
        return real(wire, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(dns.message, "from_wire", counting)
    g = gate()
    passed, replies = run(lambda: sort(g, framed(stuffed) * 3))
    assert passed == b"" and len(replies) == 3
    assert parsed == [True, True, True]  # only the questions were read
    refused = parse_refusal(replies[0])
    assert refused.id == 7 and refused.rcode() == dns.rcode.REFUSED
    assert refused.question[0].name == dns.name.from_text("example.org")


def test_an_ixfr_with_its_soa_and_an_opt_still_passes() -> None:
    message = dns.message.make_query("example.org", "IXFR", use_edns=0)
    message.authority.append(
        dns.rrset.from_text("example.org.", 0, "IN", "SOA", "ns. host. 5 1 1 1 1")
    )
    g = gate()
    passed, replies = run(lambda: sort(g, framed(message.to_wire())))
    assert replies == [] and passed == framed(message.to_wire())
