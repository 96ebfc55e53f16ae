"""ETRN's conversation and its rate limit, against scripted SMTP servers on 127.0.0.1 for the
answers a real relay may give but the test rigs' sendmail does not (458 for the "@" form, a
relay without ETRN, one that never answers); the clock and sleep injected. The real
sendmail relay is in tests/faults/test_etrn.py."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest

from tunnelkeeper.checks import etrn
from tunnelkeeper.config import Endpoint, Forward
from tunnelkeeper.errors import ChannelDenied
from tunnelkeeper.ssh import StreamPair

pytestmark = pytest.mark.timeout(20)

Answer = Callable[[str], str]


@asynccontextmanager
async def smtp_server(
    answer: Answer, greeting: str = "220 relay ESMTP"
) -> AsyncIterator[tuple[Endpoint, list[str]]]:
    """A scripted SMTP server; `answer(command line)` gives each reply. Records every line."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        current = asyncio.current_task()
        assert current is not None
        served.append(current)
        writer.write(greeting.encode() + b"\r\n")
        for _ in range(20):
            line = (await reader.readline()).decode().rstrip("\r\n")
            if not line:
                break
            heard.append(line)
            reply = answer(line)
            if reply:
                writer.write(reply.encode() + b"\r\n")
            if line == "QUIT":
                break
        writer.close()

    heard: list[str] = []
    served: list[asyncio.Task[None]] = []
    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield Endpoint(host="127.0.0.1", port=port), heard
        if served:  # every conversation to its end (the client closed), so `heard` is whole
            await asyncio.wait(served, timeout=5)
    finally:
        server.close()
        await server.wait_closed()


async def open_stream(dest: Endpoint, timeout: float) -> StreamPair:
    reader, writer = await asyncio.wait_for(asyncio.open_connection(dest.host, dest.port), timeout)
    return StreamPair(reader, writer, f"connection to {dest}")


def sendmail_like(line: str) -> str:
    if line.startswith("EHLO"):
        return "250-relay.example.net Hello\r\n250 ETRN"
    if line.startswith("ETRN "):
        return f"250 2.0.0 Queuing for node {line[5:]} started"
    return "221 2.0.0 closing" if line == "QUIT" else "500 5.5.1 Command unrecognized"


def forward(**kw: object) -> Forward:
    base = {
        "name": "smtp",
        "service": "smtp",
        "listen": "127.0.0.1:2525",
        "target": "127.0.0.1:25",
        "domains": ["example.org", "example.com"],
    }
    return Forward.model_validate(base | kw)


def test_subdomains_use_the_at_form_else_the_domain_alone() -> None:
    assert etrn.arguments(forward()) == [
        ("example.org", "@example.org"),
        ("example.com", "@example.com"),
    ]
    assert etrn.arguments(forward(subdomains=False)) == [
        ("example.org", "example.org"),
        ("example.com", "example.com"),
    ]


async def test_one_etrn_per_domain_after_ehlo_then_quit() -> None:
    async with smtp_server(sendmail_like) as (mta, heard):
        answers = await etrn.flush(open_stream, mta, etrn.arguments(forward()))
    assert heard == [
        "EHLO tunnelkeeper.flush",
        "ETRN @example.org",
        "ETRN @example.com",
        "QUIT",
    ]
    assert [a.outcome for a in answers] == ["accepted", "accepted"]
    summary = etrn.summary(answers)
    assert summary.ok
    assert summary.reply == (
        "example.org: 250 2.0.0 Queuing for node @example.org started; "
        "example.com: 250 2.0.0 Queuing for node @example.com started"
    )


async def test_a_relay_that_refuses_the_at_form_is_asked_for_the_domain() -> None:
    """A relay that does not take the "@" form (458 here; Postfix skips the "@" itself) is
    asked for the domain alone."""

    def postfix_like(line: str) -> str:
        if line.startswith("ETRN @"):
            return f"458 Unable to queue messages for {line[5:]}"
        return sendmail_like(line)

    async with smtp_server(postfix_like) as (mta, heard):
        (answer,) = await etrn.flush(open_stream, mta, [("example.org", "@example.org")])
    assert answer.ok and answer.command == "ETRN example.org"
    assert heard[1:3] == ["ETRN @example.org", "ETRN example.org"]


async def test_refusals_and_silence_are_outcomes_not_errors() -> None:
    def no_etrn(line: str) -> str:
        return (
            "502 5.7.0 Sorry, we do not allow this operation"
            if line.startswith("ETRN")
            else sendmail_like(line)
        )

    async with smtp_server(no_etrn) as (mta, _):
        (refused,) = await etrn.flush(open_stream, mta, [("example.org", "example.org")])
    assert refused.outcome == "refused" and refused.reply.startswith("502 5.7.0")

    async with smtp_server(lambda line: "", greeting="220 x") as (mute, _):
        (silent,) = await etrn.flush(open_stream, mute, [("example.org", "example.org")], 0.5)
    assert silent.outcome == "unreachable" and "within 0.5s" in silent.reply

    async def denied(dest: Endpoint, timeout: float) -> StreamPair:
        raise ChannelDenied(f'relay forbids channels to {dest} (it said "prohibited")')

    (forbidden,) = await etrn.flush(
        denied, Endpoint(host="127.0.0.1", port=25), [("a.org", "a.org")]
    )
    assert forbidden.outcome == "unreachable" and "permitopen" in forbidden.reply

    closed = Endpoint(host="127.0.0.1", port=1)
    (nobody,) = await etrn.flush(open_stream, closed, [("example.org", "example.org")], 2)
    assert nobody.outcome == "unreachable"

    async with smtp_server(sendmail_like, greeting="554 5.3.2 go away\x1b[31m") as (busy, _):
        (turned,) = await etrn.flush(open_stream, busy, [("example.org", "example.org")])
    assert turned.outcome == "refused" and "\x1b" not in turned.reply  # escaped


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


async def test_at_most_one_etrn_per_ten_seconds_per_domain_the_later_one_waits(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    flusher = etrn.Flusher("relay1", forward(domains=["example.org"]), clock, clock.sleep)
    async with smtp_server(sendmail_like) as (mta, heard):
        await flusher.whole(open_stream, mta, "at start")
        clock.now += 3
        await flusher.whole(open_stream, mta, "probe recovered")  # waits the 7 s left
        assert clock.slept == [pytest.approx(7.0)]
        clock.now += etrn.MIN_INTERVAL
        await flusher.whole(open_stream, mta, "reconnected")  # due: no wait
        assert len(clock.slept) == 1
    assert [line for line in heard if line.startswith("ETRN")] == ["ETRN @example.org"] * 3
    assert flusher.counts == {"accepted": 3, "refused": 0, "unreachable": 0}
    assert flusher.last is not None and flusher.last.ok


async def test_asks_while_one_waits_are_served_by_it() -> None:
    gate = asyncio.Event()
    clock = Clock()

    async def held_sleep(seconds: float) -> None:
        await gate.wait()
        clock.now += seconds

    flusher = etrn.Flusher("relay1", forward(domains=["example.org"]), clock, held_sleep)
    async with smtp_server(sendmail_like) as (mta, _):
        await flusher.whole(open_stream, mta, "at start")
        waiting = asyncio.create_task(flusher.whole(open_stream, mta, "probe recovered"))
        await asyncio.sleep(0.05)
        await flusher.whole(open_stream, mta, "probe recovered")  # returns at once
        gate.set()
        await waiting
    assert flusher.counts["accepted"] == 2


def test_whole_again_only_on_the_change() -> None:
    flusher = etrn.Flusher("relay1", forward())
    assert flusher.whole_again(True)
    assert not flusher.whole_again(True)
    assert not flusher.whole_again(False)
    assert flusher.whole_again(True)


def test_a_refusal_is_logged_once_per_change_with_the_hint(
    caplog: pytest.LogCaptureFixture,
) -> None:
    flusher = etrn.Flusher("relay1", forward(domains=["example.org"]))
    refused = etrn.DomainFlush("example.org", "ETRN @example.org", "refused", "502 5.7.0 no")
    accepted = etrn.DomainFlush("example.org", "ETRN @example.org", "accepted", "250 ok")
    caplog.set_level(logging.DEBUG, logger="tunnelkeeper.checks.etrn")
    for answer in (refused, refused, refused, accepted, refused):
        flusher.record([answer], "at start")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2, warnings
    assert "502 5.7.0 no" in warnings[0] and "noetrn" in warnings[0]
    assert "fast_flush_domains" in warnings[0]
    assert flusher.counts == {"accepted": 1, "refused": 4, "unreachable": 0}
