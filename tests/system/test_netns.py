"""The relay behind a veth pair in its own network namespace: silent drops, loss, delay, DNS."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.faults import (
    DelayProxy,
    MailLoop,
    Netns,
    NetnsSupervisor,
    NxdomainServer,
    reconcile,
    relay_config,
    smtp_forward,
)
from tests.support.procs import SupervisorProcess
from tests.support.sshd import free_port, wait_until

pytestmark = [pytest.mark.netns, pytest.mark.timeout(120)]

# The relay frees a dead client's listener quickly, as `tunnelkeeper sshd-config` advises.
RELAY_ALIVE = {"ClientAliveInterval": "1", "ClientAliveCountMax": "2"}


def test_silent_drop_noticed_within_keepalive_budget(
    netns: Netns, make_relay, smtp_sink, fdir: Path, outcome: dict[str, Any]
) -> None:
    """Every packet on the link vanishes (no RST, no ICMP): keepalives notice, then recovery."""
    listen = free_port()
    sshd = make_relay(netns=netns, permitlisten=[f"127.0.0.1:{listen}"], overrides=RELAY_ALIVE)
    interval, count = 1.0, 2
    cfg = relay_config(
        fdir / "tk.toml",
        sshd,
        [smtp_forward(listen, smtp_sink.port)],
        keepalive_interval=interval,
        keepalive_count_max=count,
        connect_timeout=2.0,
        backoff_initial=0.2,
        backoff_max=1.0,
    )
    sup = SupervisorProcess(cfg)
    loop = MailLoop(listen, netns=netns)
    try:
        sup.wait_forward("up", 15)
        loop.start()
        wait_until(lambda: len(loop.accepted) >= 3, 20, what="mail before the drop")
        netns.drop()
        t0 = time.monotonic()
        sup.wait_status(lambda s: s.tunnels[0].state != "up", 10, "the drop noticed")
        noticed = time.monotonic() - t0
        time.sleep(3.0)  # stay dark: attempts now time out
        dark = sup.status()
        assert dark is not None and dark.tunnels[0].state != "up"
        kinds = {
            line.rsplit("[", 1)[-1].split("]")[0]
            for line in sup.log().splitlines()
            if "] ; retry" in line or "]; retry" in line
        }
        netns.restore()
        t1 = time.monotonic()
        sup.wait_forward("up", 15)
        back = time.monotonic() - t1
        before = len(loop.accepted)
        wait_until(lambda: len(loop.accepted) >= before + 3, 20, what="mail after restore")
    finally:
        netns.restore()
        loop.stop()
        code = sup.stop()
    wait_until(lambda: not reconcile(loop, smtp_sink.raw).lost, 10, what="accepted mail arrived")
    ledger = reconcile(loop, smtp_sink.raw)
    budget = interval * count + interval
    outcome.update(
        noticed_s=round(noticed, 2),
        budget_s=budget,
        error_kinds=sorted(kinds),
        back_after_restore_s=round(back, 2),
        acknowledged=ledger.accepted,
        lost=len(ledger.lost),
        altered=len(ledger.altered),
        refused=ledger.refused,
        refusals=loop.refusal_kinds(),
    )
    assert code == 0
    assert "keepalive-timeout" in kinds, sup.log()[-3000:]
    assert noticed <= budget + 0.75, noticed  # + the status poll and publish period
    assert ledger.lost == [] and ledger.altered == []
    assert back < 1.0 * 1.25 + 2.0 + 3.0  # a backoff, a connect, the relay freeing the port


def test_delay_and_loss_mail_still_delivered(
    netns: Netns, make_relay, smtp_sink, fdir: Path, outcome: dict[str, Any]
) -> None:
    """150 ms each way and 5 % packet loss: mail and probes still get through."""
    delay_ms, loss = 150, 5
    listen = free_port()
    sshd = make_relay(netns=netns, permitlisten=[f"127.0.0.1:{listen}"], overrides=RELAY_ALIVE)
    with DelayProxy((sshd.address, sshd.port)) as proxy:
        cfg = relay_config(
            fdir / "tk.toml",
            sshd,
            [smtp_forward(listen, smtp_sink.port)],
            via=("127.0.0.1", proxy.port),
            keepalive_interval=2.0,
            keepalive_count_max=3,
            connect_timeout=10.0,
            probe_interval=1.0,
            probe_timeout=10.0,
        )
        sup = SupervisorProcess(cfg)
        loop = MailLoop(listen, netns=netns, pause=0.2, timeout=30.0)
        try:
            sup.wait_forward("up", 15)
            if netns.try_netem(delay_ms, loss):
                method = "netem"
            else:  # no sch_netem in this kernel: a delay line, and nftables for the loss
                method = "delay-proxy+nft-numgen"
                proxy.delay = delay_ms / 1000
                netns.lose(loss)
            t0 = time.monotonic()
            loop.start()
            wait_until(lambda: len(loop.accepted) >= 5, 90, 0.1, "5 messages through")
            loop.stop()
            elapsed = time.monotonic() - t0
            st = sup.wait_status(
                lambda s: (
                    s.forwards[0].probe is not None
                    and s.forwards[0].probe.ok
                    and (s.forwards[0].probe.latency_ms or 0) > 2 * delay_ms
                ),
                30,
                "a probe through the slow link",
            )
            probe = st.forwards[0].probe
            connects = st.tunnels[0].connects
        finally:
            netns.restore()
            loop.stop()
            code = sup.stop()
    wait_until(lambda: not reconcile(loop, smtp_sink.raw).lost, 10, what="accepted mail arrived")
    ledger = reconcile(loop, smtp_sink.raw)
    outcome.update(
        method=method,
        delay_ms_each_way=delay_ms,
        loss_pct=loss,
        acknowledged=ledger.accepted,
        lost=len(ledger.lost),
        altered=len(ledger.altered),
        refused=ledger.refused,
        seconds_for_5=round(elapsed, 1),
        probe_latency_ms=probe.latency_ms if probe else None,
        connects=connects,
    )
    assert code == 0
    assert ledger.lost == [] and ledger.altered == []
    assert ledger.refused <= 2, loop.refused


def test_syn_dropped_is_a_connect_timeout(
    netns: Netns, make_relay, fdir: Path, outcome: dict[str, Any]
) -> None:
    sshd = make_relay(netns=netns)
    netns.drop()
    cfg = relay_config(
        fdir / "tk.toml",
        sshd,
        [smtp_forward(free_port(), 25)],
        connect_timeout=1.5,
        backoff_initial=0.2,
        backoff_max=0.5,
    )
    sup = SupervisorProcess(cfg)
    try:
        t0 = time.monotonic()
        st = sup.wait_status(lambda s: s.tunnels[0].error_kind == "timeout", 10, "timeout")
        reported = time.monotonic() - t0
        assert "no answer within 1.5s" in (st.tunnels[0].last_error or "")
        netns.restore()
        t1 = time.monotonic()
        sup.wait_status(lambda s: s.tunnels[0].state == "up", 10, "up after restore")
        back = time.monotonic() - t1
    finally:
        code = sup.stop()
    outcome.update(
        connect_timeout_s=1.5, reported_after_s=round(reported, 2), back_s=round(back, 2)
    )
    assert code == 0
    assert reported < 1.5 + 2.5
    assert back < 1.5 + 0.5 * 1.25 + 1.5


def test_name_that_does_not_resolve(
    netns: Netns, make_relay, fdir: Path, outcome: dict[str, Any]
) -> None:
    """`relay.invalid` gets NXDOMAIN from a resolver inside the namespace (no query leaves)."""
    sshd = make_relay(start=False)
    cfg = relay_config(
        fdir / "tk.toml",
        sshd,
        [smtp_forward(free_port(), 25)],
        backoff_initial=0.2,
        backoff_max=0.5,
    )
    cfg.write_text(cfg.read_text().replace('host = "127.0.0.1"', 'host = "relay.invalid"'))
    with NxdomainServer(netns) as dns_server:
        sup = NetnsSupervisor(cfg, netns)
        try:
            t0 = time.monotonic()
            st = sup.wait_status(lambda s: s.tunnels[0].error_kind == "dns", 10, "dns error")
            reported = time.monotonic() - t0
            error = st.tunnels[0].last_error or ""
            assert "relay.invalid" in error and "does not resolve" in error, error
            assert st.tunnels[0].state in ("backoff", "connecting")
            wait_until(lambda: sup.log().count("[dns]") >= 2, 5, what="a second attempt")
        finally:
            assert sup.stop() == 0
        check = subprocess.run(
            netns.exec_args(sys.executable, "-m", "tunnelkeeper", "check", "-c", str(cfg)),
            capture_output=True,
            text=True,
            timeout=30,
        )
        queried = sorted(set(dns_server.queries))
    outcome.update(
        reported_after_s=round(reported, 2), check_exit=check.returncode, queries=queried
    )
    assert any(q.startswith("relay.invalid") for q in queried)
    assert check.returncode == 2, check.stdout + check.stderr
    assert "[dns]" in check.stdout and "Traceback" not in check.stderr
