"""A real OpenSSH relay failing under load: sessions killed, restarted, refused, mute, full."""

from __future__ import annotations

import signal
import socket
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.faults import (
    MailLoop,
    fill_startups,
    reconcile,
    relay_config,
    send,
    smtp_forward,
)
from tests.support.procs import SupervisorProcess
from tests.support.sshd import free_port, wait_until

pytestmark = pytest.mark.timeout(120)


def _mail_through(loop: MailLoop, at_least: int, timeout: float) -> None:
    goal = len(loop.accepted) + at_least
    wait_until(lambda: len(loop.accepted) >= goal, timeout, 0.05, f"{at_least} more messages")


@pytest.mark.parametrize(
    ("fault", "rounds"),
    [
        ("kill-sessions", 6),
        ("restart-sshd", 2),
        pytest.param("kill-sessions", 60, marks=[pytest.mark.slow, pytest.mark.timeout(900)]),
    ],
)
def test_relay_breaks_while_mail_flows(
    fault: str, rounds: int, make_relay, smtp_sink, fdir: Path, outcome: dict[str, Any]
) -> None:
    """Every message the sender saw accepted (250 after DATA) arrives byte for byte."""
    listen = free_port()
    sshd = make_relay(permitlisten=[f"127.0.0.1:{listen}"])
    cfg = relay_config(
        fdir / "tk.toml",
        sshd,
        [smtp_forward(listen, smtp_sink.port)],
        backoff_initial=0.1,
        backoff_max=0.5,
    )
    sup = SupervisorProcess(cfg)
    loop = MailLoop(listen)
    recover: list[float] = []
    try:
        sup.wait_forward("up", 15)
        loop.start()
        for n in range(rounds):
            _mail_through(loop, 2, 20)
            t0 = time.monotonic()
            if fault == "kill-sessions":
                assert sshd.signal_sessions(signal.SIGKILL), "no sshd session to kill"
            else:
                sshd.restart()
            sup.wait_status(
                lambda s, n=n: s.tunnels[0].connects >= n + 2 and s.forwards[0].state == "up",
                20,
                f"reconnect #{n + 1}",
            )
            recover.append(time.monotonic() - t0)
        _mail_through(loop, 2, 20)
    finally:
        loop.stop()
        code = sup.stop()
    wait_until(
        lambda: reconcile(loop, smtp_sink.raw).lost == [], 10, 0.1, "accepted mail at the sink"
    )
    ledger = reconcile(loop, smtp_sink.raw)
    outcome.update(
        fault=fault,
        rounds=rounds,
        recover_s_max=round(max(recover), 2),
        recover_s_mean=round(sum(recover) / len(recover), 2),
        sent=loop.sent,
        acknowledged=ledger.accepted,
        lost=len(ledger.lost),
        altered=len(ledger.altered),
        refused=ledger.refused,
        refused_but_delivered=ledger.refused_but_delivered,
        refusals=loop.refusal_kinds(),
    )
    assert code == 0
    assert ledger.lost == [] and ledger.altered == []
    assert ledger.accepted >= 2 * rounds + 2
    assert max(recover) < 5.0


def test_connection_refused_then_relay_appears(
    make_relay, smtp_sink, fdir: Path, outcome: dict[str, Any]
) -> None:
    listen = free_port()
    sshd = make_relay(permitlisten=[f"127.0.0.1:{listen}"], start=False)
    cfg = relay_config(
        fdir / "tk.toml", sshd, [smtp_forward(listen, smtp_sink.port)], backoff_max=1.0
    )
    sup = SupervisorProcess(cfg)
    try:
        t0 = time.monotonic()
        st = sup.wait_status(
            lambda s: s.tunnels[0].error_kind == "connect-refused", 10, "connect-refused"
        )
        reported = time.monotonic() - t0
        assert st.tunnels[0].state in ("backoff", "connecting")
        assert "refused" in (st.tunnels[0].last_error or "")
        assert st.forwards[0].state == "down"
        sshd.start()
        t1 = time.monotonic()
        sup.wait_forward("up", 10)
        back = time.monotonic() - t1
        send(listen, b"Subject: hello\r\n\r\nafter refusal\r\n")
        wait_until(lambda: smtp_sink.raw, 10, what="mail after the relay appeared")
    finally:
        assert sup.stop() == 0
    outcome.update(reported_s=round(reported, 2), up_after_sshd_start_s=round(back, 2))
    assert back <= 1.0 * 1.25 + 1.5  # backoff_max with jitter, plus a connect


def test_relay_that_never_speaks_times_out(fdir: Path, make_relay, outcome: dict[str, Any]) -> None:
    """A port that accepts TCP and never sends an SSH banner: `timeout`, retried, no hang."""
    sshd = make_relay(start=False)  # only for its keys and known_hosts
    with socket.socket() as mute:
        mute.bind(("127.0.0.1", 0))
        mute.listen(64)  # the kernel completes handshakes; nobody ever answers
        port = mute.getsockname()[1]
        cfg = relay_config(
            fdir / "tk.toml",
            sshd,
            [smtp_forward(free_port(), 25)],
            via=("127.0.0.1", port),
            connect_timeout=1.0,
            backoff_initial=0.2,
            backoff_max=0.5,
        )
        sup = SupervisorProcess(cfg)
        try:
            t0 = time.monotonic()
            st = sup.wait_status(lambda s: s.tunnels[0].error_kind == "timeout", 10, "timeout")
            first = time.monotonic() - t0
            assert "1s" in (st.tunnels[0].last_error or ""), st.tunnels[0].last_error
            time.sleep(2.0)
            assert sup.log().count("[timeout]") >= 2  # it keeps trying
        finally:
            assert sup.stop() == 0
    outcome.update(connect_timeout_s=1.0, reported_after_s=round(first, 2))
    assert first < 1.0 + 2.5  # the timeout plus process start-up


def test_relay_maxstartups_exhausted(
    make_relay, smtp_sink, fdir: Path, outcome: dict[str, Any]
) -> None:
    """sshd drops connections past MaxStartups; the tunnel retries and gets in once freed."""
    listen = free_port()
    sshd = make_relay(
        permitlisten=[f"127.0.0.1:{listen}"],
        overrides={"MaxStartups": "3", "LoginGraceTime": "30"},
    )
    hogs = fill_startups("127.0.0.1", sshd.port)
    try:
        # sshd turned the next one away: it is full. (A slot freed late by the start-up probe
        # of the port can leave room for one hog fewer on a loaded machine.)
        assert 1 <= len(hogs) <= 3
        cfg = relay_config(
            fdir / "tk.toml",
            sshd,
            [smtp_forward(listen, smtp_sink.port)],
            backoff_initial=0.2,
            backoff_max=1.0,
        )
        sup = SupervisorProcess(cfg)
        try:
            st = sup.wait_status(
                lambda s: s.tunnels[0].error_kind is not None and s.tunnels[0].state != "up",
                10,
                "a refused attempt",
            )
            kind, error = st.tunnels[0].error_kind, st.tunnels[0].last_error
            time.sleep(1.5)
            assert sup.status_now().tunnels[0].state != "up"
            wait_until(lambda: "MaxStartups" in sshd.log_text(), 5, what="sshd's MaxStartups log")
            for hog in hogs:
                hog.close()
            t0 = time.monotonic()
            sup.wait_forward("up", 10)
            back = time.monotonic() - t0
            send(listen, b"Subject: hello\r\n\r\nafter MaxStartups\r\n")
            wait_until(lambda: smtp_sink.raw, 10, what="mail after MaxStartups")
        finally:
            assert sup.stop() == 0
    finally:
        for hog in hogs:
            hog.close()
    outcome.update(error_kind=kind, last_error=error, up_after_release_s=round(back, 2))
    assert kind == "disconnected" and "MaxStartups" in (error or ""), (kind, error)
    assert back <= 1.0 * 1.25 + 1.5
