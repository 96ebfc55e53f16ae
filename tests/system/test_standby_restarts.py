"""The standby connection through many sshd restarts: each restart kills the live and the
standby session at once, and the tunnel must come back every time.

This catches a cancelled standby task that carries on: on Python 3.11, asyncio.wait_for (inside
asyncssh.connect) turns a cancellation that lands just as the connect fails into that failure,
and a task that then retries forever hangs the tunnel's restart."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import SmtpSink
from tests.support.faults import relay_config, smtp_forward
from tests.support.procs import SupervisorProcess
from tests.support.sshd import free_port

RESTARTS = 15
BACKOFF_MAX = 0.5
FORWARD_RETRY = 0.2
# Back within backoff_max, plus a refused listen's retry, plus a second for the handshake.
BOUND = BACKOFF_MAX + FORWARD_RETRY + 1.0


@pytest.mark.timeout(120)
def test_standby_through_sshd_restarts(
    make_relay, smtp_sink: SmtpSink, fdir: Path, outcome: dict[str, Any]
) -> None:
    listen = free_port()
    sshd = make_relay(permitlisten=[f"127.0.0.1:{listen}"])
    cfg = relay_config(
        fdir / "tk.toml",
        sshd,
        [smtp_forward(listen, smtp_sink.port)],
        standby=True,
        backoff_initial=0.05,
        backoff_max=BACKOFF_MAX,
        forward_retry=FORWARD_RETRY,
        supervisor={"log_level": "info"},
    )
    sup = SupervisorProcess(cfg)
    backs: list[float] = []
    try:
        sup.wait_status(lambda s: s.tunnels[0].standby == "ready", 15, "standby ready")
        for n in range(RESTARTS):
            connects = sup.status_now().tunnels[0].connects
            sshd.restart()
            t0 = time.monotonic()
            sup.wait_status(
                lambda s, c=connects: s.tunnels[0].connects > c and s.forwards[0].state == "up",
                15,
                f"the forward up again after restart #{n + 1}",
            )
            backs.append(time.monotonic() - t0)
            if n % 2:  # half the time the standby is ready again first: a takeover
                sup.wait_status(lambda s: s.tunnels[0].standby == "ready", 15, "standby")
    finally:
        code = sup.stop()
    outcome.update(restarts=len(backs), worst_back_s=round(max(backs, default=0), 2))
    assert code == 0
    assert len(backs) == RESTARTS
    assert max(backs) < BOUND, outcome
