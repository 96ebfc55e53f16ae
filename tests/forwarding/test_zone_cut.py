"""The zone-cut check of a dns forward's gate: which zone the target puts a name in, the cache
of those verdicts, and, in the splice, a query that waits for one (and what waits behind it)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rrset
import pytest

from tests.support.dnswire import ZONES, Channel, framed, parse_refusal, query, sort
from tunnelkeeper.config import Endpoint
from tunnelkeeper.forwarding import dnsgate
from tunnelkeeper.forwarding.dnsgate import ZonePolicy
from tunnelkeeper.forwarding.splice import Splice
from tunnelkeeper.forwarding.traffic import ForwardTraffic
from tunnelkeeper.forwarding.zonecut import Ask, Owner, ZoneCuts, soa_owner

pytestmark = pytest.mark.timeout(30)

ORG = dns.name.from_text("example.org")
CORP = dns.name.from_text("corp.example.org")


def soa(owner: str, ttl: int = 300, minimum: int = 30) -> dns.rrset.RRset:
    return dns.rrset.from_text(
        dns.name.from_text(owner),
        ttl,
        "IN",
        "SOA",
        f"ns1.example.org. hostmaster.example.org. 1 3600 600 86400 {minimum}",
    )


def response(
    qname: str,
    rcode: dns.rcode.Rcode = dns.rcode.NOERROR,
    *,
    aa: bool = True,
    answer: tuple[dns.rrset.RRset, ...] = (),
    authority: tuple[dns.rrset.RRset, ...] = (),
) -> dns.message.Message:
    made = dns.message.make_response(dns.message.make_query(qname, "SOA", flags=0))
    made.flags |= dns.flags.AA if aa else 0
    made.set_rcode(rcode)
    made.answer.extend(answer)
    made.authority.extend(authority)
    return made


NS = dns.rrset.from_text("corp.example.org.", 300, "IN", "NS", "ns.corp.example.org.")
CNAME = dns.rrset.from_text("alias.example.org.", 120, "IN", "CNAME", "payroll.corp.example.org.")


@pytest.mark.parametrize(
    ("qname", "reply", "owner", "ttl"),
    [
        (
            "corp.example.org",
            response("corp.example.org", answer=(soa("corp.example.org"),)),
            CORP,
            30,
        ),
        ("www.example.org", response("www.example.org", authority=(soa("example.org"),)), ORG, 30),
        (
            "payroll.corp.example.org",
            response("payroll.corp.example.org", authority=(soa("corp.example.org", 20),)),
            CORP,
            20,
        ),
        (
            "nosuch.example.org",
            response("nosuch.example.org", dns.rcode.NXDOMAIN, authority=(soa("example.org"),)),
            ORG,
            30,
        ),
        (  # BIND's NXDOMAIN to a SOA query: the SOA with TTL 0, the zone's minimum still holds
            "nosuch.example.org",
            response("nosuch.example.org", dns.rcode.NXDOMAIN, authority=(soa("example.org", 0),)),
            ORG,
            30,
        ),
        (
            "www.example.org",
            response("www.example.org", authority=(soa("example.org", 9999, 9999),)),
            ORG,
            60,
        ),
        ("alias.example.org", response("alias.example.org", answer=(CNAME,)), None, 60),
        (
            "x.corp.example.org",
            response("x.corp.example.org", aa=False, authority=(NS,)),
            "authoritative",
            5,
        ),
        ("x.corp.example.org", response("x.corp.example.org", authority=(NS,)), "a referral", 5),
        ("www.example.org", response("www.example.org", dns.rcode.REFUSED), "REFUSED", 5),
        (
            "www.example.org",
            response("www.example.org", authority=(soa("example.net"),)),
            "not above",
            5,
        ),
    ],
)
def test_the_zone_is_the_soa_owner_in_the_answer_or_the_authority(
    qname: str, reply: dns.message.Message, owner: Owner | None, ttl: float
) -> None:
    found, valid = soa_owner(reply, dns.name.from_text(qname))
    if isinstance(owner, str):
        assert isinstance(found, str) and owner in found
    else:
        assert found == owner
    assert valid == ttl


class Target:
    """A stubbed primary: answers by name from `answers`, counting the questions."""

    def __init__(self, answers: dict[str, dns.message.Message]) -> None:
        self.answers = answers
        self.asked: list[str] = []

    async def __call__(self, name: dns.name.Name) -> dns.message.Message:
        self.asked.append(name.to_text(omit_final_dot=True))
        await asyncio.sleep(0)
        return self.answers[name.to_text(omit_final_dot=True)]


async def test_a_verdict_is_kept_as_long_as_the_soa_says_and_at_most_a_minute() -> None:
    now = [1000.0]
    target = Target(
        {
            "www.example.org": response(
                "www.example.org", authority=(soa("example.org", 300, 30),)
            ),
            "mail.example.org": response(
                "mail.example.org", authority=(soa("example.org", 9999, 9999),)
            ),
        }
    )
    cuts = ZoneCuts(target, clock=lambda: now[0])
    www = dns.name.from_text("www.example.org")
    assert cuts.cached(www) is None
    assert await cuts.owner(www) == ORG
    assert (
        cuts.cached(www) == ORG and await cuts.owner(dns.name.from_text("WWW.example.org")) == ORG
    )
    assert await cuts.owner(dns.name.from_text("mail.example.org")) == ORG
    now[0] += 29.9
    assert cuts.cached(www) == ORG
    now[0] += 0.2  # past the SOA's minimum (30 s)
    assert cuts.cached(www) is None
    assert cuts.cached(dns.name.from_text("mail.example.org")) == ORG
    now[0] += 30  # past a minute, although its SOA says hours
    assert cuts.cached(dns.name.from_text("mail.example.org")) is None
    assert target.asked == ["www.example.org", "mail.example.org"]  # once each, case aside


async def test_the_cache_is_bounded_oldest_out_first() -> None:
    cuts = ZoneCuts(Target({}), entries=3)
    names = [dns.name.from_text(f"n{i}.example.org") for i in range(5)]
    for name in names:
        cuts._remember(name, ORG, 30)
    assert [cuts.cached(name) for name in names] == [None, None, ORG, ORG, ORG]


async def test_a_cname_walks_up_until_the_target_says_where_the_cut_is() -> None:
    target = Target(
        {
            "alias.example.org": response("alias.example.org", answer=(CNAME,)),
            "example.org": response("example.org", answer=(soa("example.org"),)),
        }
    )
    cuts = ZoneCuts(target)
    assert await cuts.owner(dns.name.from_text("alias.example.org")) == ORG
    assert target.asked == ["alias.example.org", "example.org"]


async def test_checks_of_one_name_at_once_ask_once_and_the_last_to_leave_cancels() -> None:
    started, release = asyncio.Event(), asyncio.Event()
    cancelled: list[str] = []

    async def slow(name: dns.name.Name) -> dns.message.Message:
        started.set()
        try:
            await release.wait()
        except asyncio.CancelledError:
            cancelled.append(name.to_text())
            raise
        return response(name.to_text(), authority=(soa("example.org"),))

    cuts = ZoneCuts(slow)
    www = dns.name.from_text("www.example.org")
    first, second = (asyncio.ensure_future(cuts.owner(www)) for _ in range(2))
    await asyncio.wait_for(started.wait(), 5)
    first.cancel()  # one caller gone: the other still gets the answer
    release.set()
    assert await asyncio.wait_for(second, 5) == ORG
    assert cuts.asked == 1 and cancelled == []

    started.clear()
    release.clear()
    lone = asyncio.ensure_future(cuts.owner(dns.name.from_text("mail.example.org")))
    await asyncio.wait_for(started.wait(), 5)
    lone.cancel()
    for _ in range(10):
        await asyncio.sleep(0)
    assert cancelled == ["mail.example.org."]


async def test_a_target_that_does_not_answer_in_time_is_a_refusal() -> None:
    async def silent(name: dns.name.Name) -> dns.message.Message:
        await asyncio.sleep(60)
        raise AssertionError("not reached")

    async def broken(name: dns.name.Name) -> dns.message.Message:
        raise ConnectionRefusedError(111, "Connection refused")

    slow = await ZoneCuts(silent, timeout=0.05).owner(dns.name.from_text("www.example.org"))
    assert slow == "no answer from the target in 0.05 s"
    down = await ZoneCuts(broken).owner(dns.name.from_text("www.example.org"))
    assert down == "the target could not be asked (ConnectionRefusedError)"


def test_pipelined_frames_keep_their_order_around_a_pending_check() -> None:
    g = ZonePolicy("dns", ZONES, ZoneCuts(Target({}))).gate()
    apex, below, ns = (
        framed(query("example.org", "SOA", ident=1)),
        framed(query("www.example.org", ident=2)),
        framed(query("example.org", "NS", ident=3)),
    )
    foreign, other = framed(query("corp.lan", ident=4)), framed(query("mail.example.org", ident=5))
    later = framed(query("example.net", "SOA", ident=6))

    async def body() -> None:
        assert g.from_client(apex + below + ns + foreign + other) == ([apex], [])
        assert g.check is not None and g.check.name == dns.name.from_text("www.example.org")
        assert g.from_client(later) == ([], [])  # sent meanwhile: waits behind the check
        passed, refused = g.decide(ORG)  # in its zone: it goes, and what waited up to the next
        assert passed == [below, ns] and [parse_refusal(r).id for r in refused] == [4]
        assert g.check is not None and g.check.name == dns.name.from_text("mail.example.org")
        passed, refused = g.decide(CORP)  # another zone: refused; the rest goes on
        assert passed == [later] and [parse_refusal(r).id for r in refused] == [5]
        assert g.check is None
        g.client_eof()

    asyncio.run(body())
    assert g.policy.refused == 2


def test_a_cached_verdict_decides_without_a_check() -> None:
    cuts = ZoneCuts(Target({}))
    cuts._remember(dns.name.from_text("payroll.corp.example.org"), CORP, 30)
    cuts._remember(dns.name.from_text("www.example.org"), ORG, 30)
    g = ZonePolicy("dns", ZONES, cuts).gate()

    def never(check: Any) -> Owner:
        raise AssertionError("checked again")

    wanted = framed(query("www.example.org", ident=1))
    passed, refused = asyncio.run(
        _inside(
            lambda: sort(
                g, wanted + framed(query("payroll.corp.example.org", ident=2)), owner=never
            )
        )
    )
    assert passed == wanted and [parse_refusal(r).id for r in refused] == [2]


async def _inside(body: Callable[[], Any]) -> Any:
    return body()


# -- in the splice, against a real local target ------------------------------------------------


@asynccontextmanager
async def spliced(
    ask: Ask, counters: ForwardTraffic | None = None, **cuts: Any
) -> AsyncIterator[tuple[Splice, Channel, bytearray, ForwardTraffic]]:
    """A splice of a dns forward (`counters`, else a new one) to a local target that records
    what reaches it."""
    received = bytearray()

    async def target(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            received.extend(data)
        writer.close()

    server = await asyncio.start_server(target, "127.0.0.1", 0)
    if counters is None:
        counters = ForwardTraffic()
        counters.dns = ZonePolicy("dns", ZONES, ZoneCuts(ask, **cuts))
    splice = Splice(counters)
    chan = Channel()
    try:
        await splice.connect_target(
            Endpoint(host="127.0.0.1", port=server.sockets[0].getsockname()[1]), None, 5
        )
        splice.connection_made(chan)
        yield splice, chan, received, counters
    finally:
        splice.abort()
        server.close()
        await server.wait_closed()


async def until(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(5):
        while not condition():
            await asyncio.sleep(0.005)


async def test_in_the_splice_frames_wait_for_the_check_in_order_and_the_eof_after_them() -> None:
    answer: asyncio.Future[dns.message.Message] = asyncio.get_running_loop().create_future()
    asked: list[dns.name.Name] = []

    async def primary(name: dns.name.Name) -> dns.message.Message:
        asked.append(name)
        return await answer

    apex, below, ns = (
        framed(query("example.org", "SOA", ident=1)),
        framed(query("www.example.org", ident=2)),
        framed(query("example.org", "NS", ident=3)),
    )
    async with spliced(primary) as (splice, chan, received, counters):
        splice.data_received(apex + below, None)
        await until(lambda: bytes(received) == apex)
        assert not chan.reading and asked == [dns.name.from_text("www.example.org")]
        splice.data_received(ns, None)  # what asyncssh still hands over waits too
        assert splice.eof_received() is True  # the end waits behind them
        await asyncio.sleep(0.05)
        assert bytes(received) == apex and not chan.reading
        answer.set_result(response("www.example.org", authority=(soa("example.org"),)))
        await until(lambda: bytes(received) == apex + below + ns)
        # Then the EOF: the target ends in turn, and with both directions done, the splice.
        await until(lambda: counters.active == 0)
        assert chan.written == bytearray()
        assert counters.bytes_in == len(apex + below + ns)


async def test_in_the_splice_no_answer_in_time_is_refused_and_reading_resumes() -> None:
    async def silent(name: dns.name.Name) -> dns.message.Message:
        await asyncio.sleep(60)
        raise AssertionError("not reached")

    below, apex = (
        framed(query("www.example.org", ident=7)),
        framed(query("example.org", "SOA", ident=8)),
    )
    async with spliced(silent, timeout=0.1) as (splice, chan, received, counters):
        splice.data_received(below + apex, None)
        assert not chan.reading
        await until(lambda: bool(chan.written) and bytes(received) == apex)
        refusal = parse_refusal(bytes(chan.written))
        assert (refusal.id, refusal.rcode()) == (7, dns.rcode.REFUSED)
        assert chan.reading and counters.dns is not None and counters.dns.refused == 1


async def test_in_the_splice_closing_while_a_check_runs_cancels_it() -> None:
    started = asyncio.Event()
    cancelled = asyncio.Event()

    async def hanging(name: dns.name.Name) -> dns.message.Message:
        started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        raise AssertionError("not reached")

    async with spliced(hanging) as (splice, _chan, received, counters):
        splice.data_received(framed(query("www.example.org")), None)
        await asyncio.wait_for(started.wait(), 5)
        splice.connection_lost(None)  # the relay side went away
        await asyncio.wait_for(cancelled.wait(), 5)
        assert counters.active == 0 and received == bytearray()


async def test_in_the_splice_a_connection_past_100_refusals_is_closed_and_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger=dnsgate.__name__)
    first = b"".join(framed(query(f"n{i}.corp.lan", ident=i)) for i in range(100))
    wanted = framed(query("example.org", "SOA", ident=1000))
    forward = ForwardTraffic()
    forward.dns = ZonePolicy("dns", ZONES, ZoneCuts(Target({})))
    for _ in range(3):  # three connections of one forward
        async with spliced(Target({}), forward) as (splice, chan, received, _):
            splice.data_received(first + wanted, None)  # 100 refused: still open
            assert not chan.closed and chan.written.count(b"corp\x03lan") == 100
            await until(lambda: bytes(received) == wanted)
            splice.data_received(framed(query("one.more.corp.lan")), None)
            assert chan.closed and chan.written.count(b"corp\x03lan") == 100
            await asyncio.sleep(0.02)
            assert bytes(received) == wanted
    assert forward.dns.refused == 303
    closings = [r.getMessage() for r in caplog.records if "was closed" in r.getMessage()]
    assert closings == [
        "forward dns: a connection drew more than 100 refused queries and was closed; "
        "further closings are summed up at most once a minute"
    ]


async def test_in_the_splice_reading_waits_for_the_check_and_the_held_replies() -> None:
    answer: asyncio.Future[dns.message.Message] = asyncio.get_running_loop().create_future()

    async def primary(name: dns.name.Name) -> dns.message.Message:
        return await answer

    long_foreign = ".".join(["x" * 60, "y" * 60, "z" * 60, "corp", "lan"])
    below = framed(query("www.example.org", ident=99))
    async with spliced(primary) as (splice, chan, received, _):
        splice.pause_writing()  # the relay side reads none of its answers
        splice.data_received(framed(query(long_foreign)) * 30 + below, None)
        assert not chan.reading and chan.written == bytearray()
        splice.resume_writing()  # the held refusals go, but the check still runs
        assert chan.written.count(b"corp\x03lan") == 30 and not chan.reading
        answer.set_result(response("www.example.org", authority=(soa("example.org"),)))
        await until(lambda: bytes(received) == below)
        assert chan.reading
