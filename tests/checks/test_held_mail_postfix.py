"""ETRN on return against a real Postfix relay: Debian's postfix package, unpacked (as the
relay-kit tests unpack it), run as a whole mail system (`postfix start`: master, smtpd, qmgr,
flush, smtp) from a folder of its own, with the retry timers it ships with (queue_run_delay and
minimal_backoff_time 300 s). Held mail must reach the internal server within 10 s of the
forward being up, by way of Postfix's fast flush service."""

from __future__ import annotations

import smtplib
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.mailbox_mta import ListenWatch, MailboxMta
from tests.support.postfix_relay import PostfixRelay
from tests.support.procs import SupervisorProcess
from tests.support.sshd import wait_until

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def postfix_relay(
    make_sshd: Any,
    internal_mta: MailboxMta,
    tmp_path: Path,
) -> Iterator[Callable[..., PostfixRelay]]:
    made: list[PostfixRelay] = []

    def make(main_cf: str = "") -> PostfixRelay:
        made.append(PostfixRelay(make_sshd(), internal_mta.port, tmp_path, main_cf))
        return made[-1].start()

    try:
        yield make
    finally:
        for relay in made:
            relay.stop()


def test_mail_held_by_postfix_goes_out_when_tunnelkeeper_starts(
    postfix_relay: Callable[..., PostfixRelay],
    internal_mta: MailboxMta,
    outcome: dict[str, Any],
) -> None:
    relay = postfix_relay()
    subjects = [f"held by postfix {i}" for i in range(3)]
    with smtplib.SMTP("127.0.0.1", relay.mta, timeout=30) as client:
        for subject in subjects:
            body = f"Subject: {subject}\r\n\r\nheld\r\n".encode()
            client.sendmail("sender@example.net", ["postmaster@example.org"], body)
    wait_until(lambda: relay.deferred() >= 3, 20, what="postfix to defer the 3 messages")
    launched = time.monotonic()
    watch = ListenWatch(relay.listen)
    supervisor = SupervisorProcess(relay.config)
    try:
        supervisor.wait_forward("up", 20)
        up = watch.up()
        wait_until(lambda: internal_mta.has(subjects), 10, 0.01, "the held mail in the mailbox")
        status = supervisor.wait_status(
            lambda st: st.tunnels[0].forwards[0].last_flush is not None, 5, "last_flush"
        )
    finally:
        assert supervisor.stop() == 0
    last = max(internal_mta.seen.values())
    took = last - up
    flush = status.tunnels[0].forwards[0].last_flush
    assert flush is not None and flush.ok, flush
    outcome.update(
        held=len(subjects),
        seconds_from_forward_up=round(took, 2),
        seconds_from_launch=round(last - launched, 2),
        reply=flush.reply,
    )
    assert took <= 10
    assert flush.reply.startswith("250 "), flush.reply
    assert "ETRN @example.org (at start): relay answered" in supervisor.log()
    assert "status=sent" in relay.log()


def test_a_postfix_relay_that_refuses_etrn_keeps_the_tunnel_up_and_says_why_once(
    postfix_relay: Callable[..., PostfixRelay], outcome: dict[str, Any]
) -> None:
    """smtpd_etrn_restrictions = reject: Postfix's words reach the log once, with the hint,
    and last_flush; the tunnel and the forward stay up."""
    relay = postfix_relay("smtpd_etrn_restrictions = reject\n")
    supervisor = SupervisorProcess(relay.config)
    try:
        status = supervisor.wait_status(
            lambda st: st.tunnels[0].forwards[0].last_flush is not None, 20, "a flush"
        )
    finally:
        assert supervisor.stop() == 0
    fwd = status.tunnels[0].forwards[0]
    assert status.tunnels[0].state == "up" and fwd.state == "up"
    assert fwd.last_flush is not None and not fwd.last_flush.ok
    outcome.update(reply=fwd.last_flush.reply)
    assert fwd.last_flush.reply.startswith("554 "), fwd.last_flush.reply
    refusals = [line for line in supervisor.log().splitlines() if "refused ETRN" in line]
    assert len(refusals) == 1 and "fast_flush_domains" in refusals[0], refusals
