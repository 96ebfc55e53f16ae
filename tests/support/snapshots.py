"""Synthetic status snapshots with a fixed clock, shared by the observability tests and helpers."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from tunnelkeeper.state import ForwardStatus, ProbeResult, SupervisorStatus, TunnelStatus

NOW = datetime(2026, 11, 24, 20, 3, 7, tzinfo=UTC)
STARTED = datetime(2026, 11, 24, 18, 0, 0, tzinfo=UTC)
CONFIG = "/etc/tunnelkeeper/tunnelkeeper.toml"


def _at(hh: int, mm: int, ss: int) -> datetime:
    return datetime(2026, 11, 24, hh, mm, ss, tzinfo=UTC)


SMTP_OK = ForwardStatus(
    name="smtp",
    service="smtp",
    listen="127.0.0.1:2525",
    target="127.0.0.1:25",
    state="up",
    connections_active=1,
    connections_total=37,
    bytes_in=1_234_567,
    bytes_out=45_678,
    probe=ProbeResult(
        ok=True, latency_ms=4.21, at=_at(20, 2, 40), detail="220 mail.example.org ESMTP"
    ),
    since=_at(19, 12, 0),
)

DNS_OK = ForwardStatus(
    name="dns",
    service="dns",
    listen="127.0.0.1:5353",
    target="127.0.0.1:53",
    state="up",
    connections_active=0,
    connections_total=12,
    bytes_in=3_456,
    bytes_out=98_765,
    probe=ProbeResult(ok=True, latency_ms=2.5, at=_at(20, 2, 50), detail="serial 2026112401"),
    since=_at(19, 12, 0),
)

# Up on the relay, but the probe (which fell back to the local target) gets no answer.
DNS_FAILING = replace(
    DNS_OK,
    probe=ProbeResult(
        ok=False,
        latency_ms=10_000.0,
        at=_at(20, 2, 50),
        detail="no answer from 127.0.0.1:53 within 10 s",
        via="local",
    ),
)

SUBMISSION_REFUSED = ForwardStatus(
    name="submission",
    service="tcp",
    listen="127.0.0.1:5870",
    target="127.0.0.1:587",
    state="refused",
    error="relay refused listen on 127.0.0.1:5870 (held by a stale session?); retrying every 2 s",
)

RELAY1_UP = TunnelStatus(
    name="relay1",
    relay="tunnel@relay.example.net:22",
    state="up",
    since=_at(19, 11, 58),
    connects=3,
    cipher="aes256-gcm@openssh.com",
    standby="ready",
    forwards=(SMTP_OK, DNS_OK),
)

RELAY2_BACKOFF = TunnelStatus(
    name="relay2",
    relay="tunnel@mx2.example.com:2222",
    state="backoff",
    connects=0,
    next_retry_at=NOW + timedelta(seconds=12.3),
    error_kind="connect-refused",
    last_error="connect to mx2.example.com:2222: Connection refused",
    forwards=(
        ForwardStatus(
            name="smtp",
            service="smtp",
            listen="127.0.0.1:2525",
            target="127.0.0.1:25",
            state="pending",
        ),
    ),
)


def healthy() -> SupervisorStatus:
    """Every forward up and probed: exit code 0."""
    return SupervisorStatus(pid=4242, started=STARTED, config=CONFIG, tunnels=(RELAY1_UP,))


def mixed() -> SupervisorStatus:
    """Some forwards healthy, one failing its probe, one refused, a tunnel in backoff: exit 1."""
    relay1 = replace(RELAY1_UP, forwards=(SMTP_OK, DNS_FAILING, SUBMISSION_REFUSED))
    return SupervisorStatus(
        pid=4242, started=STARTED, config=CONFIG, tunnels=(relay1, RELAY2_BACKOFF)
    )


def down() -> SupervisorStatus:
    """No forward healthy: exit code 2."""
    return SupervisorStatus(pid=4242, started=STARTED, config=CONFIG, tunnels=(RELAY2_BACKOFF,))


def smtp_failing() -> SupervisorStatus:
    """The internal SMTP server stopped: the tunnel is up, the smtp probe fails. Exit 1."""
    smtp = replace(
        SMTP_OK,
        probe=ProbeResult(
            ok=False,
            latency_ms=None,
            at=_at(20, 3, 0),
            detail="connection to 127.0.0.1:25 refused behind the relay",
        ),
    )
    relay1 = replace(RELAY1_UP, forwards=(smtp, DNS_OK))
    return SupervisorStatus(pid=4242, started=STARTED, config=CONFIG, tunnels=(relay1,))


def with_history() -> SupervisorStatus:
    """mixed(), with each forward's availability over 24 h from the history database."""
    status = mixed()
    values = iter((100.0, 99.42, 97.1, 88.0))
    return replace(
        status,
        tunnels=tuple(
            replace(
                t, forwards=tuple(replace(f, availability_24h=next(values)) for f in t.forwards)
            )
            for t in status.tunnels
        ),
    )


SNAPSHOTS = {
    "healthy": healthy,
    "mixed": mixed,
    "down": down,
    "smtp_failing": smtp_failing,
    "with_history": with_history,
}


def with_probe(fwd: ForwardStatus, **changes: Any) -> ForwardStatus:
    """`fwd` with these fields of its probe changed."""
    assert fwd.probe is not None
    return replace(fwd, probe=replace(fwd.probe, **changes))


def _run_at(t: datetime) -> SupervisorStatus:
    """mixed()'s tunnels at `t` during the hour before NOW: relay1 down 19:20-19:24:30 and
    broken for a moment at 19:55:10 (a reconnect between two snapshots), relay1/dns failing
    its probe 19:40-19:47, relay1/submission refused from 19:50, relay2 in backoff from 19:30."""
    if t >= NOW:
        return mixed()
    k = int((t - STARTED).total_seconds())
    latency = 3.0 + (k * 7919 % 13)  # deterministic, uneven: something for the sparkline
    smtp = with_probe(SMTP_OK, latency_ms=latency, at=t)
    dns = with_probe(DNS_OK, latency_ms=latency / 2, at=t)
    if _at(19, 40, 0) <= t < _at(19, 47, 0):
        dns = with_probe(DNS_FAILING, at=t)
    submission = SUBMISSION_REFUSED if t >= _at(19, 50, 0) else replace(smtp, name="submission")
    relay1 = replace(RELAY1_UP, forwards=(smtp, dns, submission), connects=1)
    if t >= _at(19, 24, 30):
        relay1 = replace(relay1, connects=2 if t < _at(19, 55, 10) else 3)
    if _at(19, 20, 0) <= t < _at(19, 24, 30):
        down = tuple(replace(f, state="down", probe=None) for f in relay1.forwards)
        relay1 = replace(RELAY2_BACKOFF, name="relay1", relay=RELAY1_UP.relay, forwards=down)
    relay2 = RELAY2_BACKOFF
    if t < _at(19, 30, 0):
        relay2 = replace(
            RELAY1_UP, name="relay2", relay=RELAY2_BACKOFF.relay, forwards=(smtp,), standby="off"
        )
    return SupervisorStatus(pid=4242, started=STARTED, config=CONFIG, tunnels=(relay1, relay2))


def outage_run() -> list[tuple[datetime, SupervisorStatus]]:
    """A snapshot every 30 s over the hour before NOW (ending with mixed()), with outages."""
    return [(t, _run_at(t)) for t in (NOW - timedelta(seconds=3600 - 30 * k) for k in range(121))]
