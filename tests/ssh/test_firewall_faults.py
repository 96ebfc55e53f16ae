"""What goes wrong on the way out of a restrictive network, with real peers: the proxy down,
asking for credentials, forbidding, hanging; a bastion killed; the ssh-agent gone; a user
certificate expired or for someone else. Each is classified (`check --json`, then `run`),
retried, and recovers under `run` once the world is fixed, without a restart."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import SmtpSink
from tests.support.firewall_kit import Rigs, check, mail_through, wait_error
from tests.support.firewall_routes import PROXY_USER, ROUTES, Route
from tests.support.procs import SupervisorProcess

pytestmark = pytest.mark.timeout(90)

# write_config's timings: keepalive 1 s x 2, backoff 0.2 .. 2 s, connect_timeout 5 s.
NOTICE = 1 * 2 + 1 + 1.5  # the keepalive bound plus one period, and a margin for the host
RECOVER = 2.0 + 5 + 3  # backoff_max, one connect, a margin


@pytest.fixture
def rigs(fdir: Path) -> Iterator[Rigs]:
    kit = Rigs(fdir)
    yield kit
    kit.close()


def _sup(route: Route) -> SupervisorProcess:
    return SupervisorProcess(route.cfg, env=route.env)


def _back_up(sup: SupervisorProcess, route: Route, sink: SmtpSink, tag: str) -> float:
    """Wait for the forward to be up again and prove it with a message; seconds waited."""
    t0 = time.monotonic()
    st = sup.wait_forward("up", RECOVER, "smtp")
    assert st.tunnels[0].error_kind is None, st.tunnels[0]
    mail_through(route.listen, sink, tag)
    return time.monotonic() - t0


# -- the proxy --------------------------------------------------------------------------------


def test_proxy_down_then_started(rigs: Rigs, smtp_sink: SmtpSink, outcome: dict[str, Any]) -> None:
    route = ROUTES["http"](rigs, smtp_sink)
    proxy = route.peers["proxy"]
    proxy.stop()  # nothing listens on its port now
    code, tunnel = check(route.cfg)
    assert code == 2 and tunnel["error_kind"] == "proxy", tunnel
    assert str(proxy.port) in tunnel["last_error"], tunnel  # says which proxy
    sup = _sup(route)
    try:
        err = wait_error(sup, ("proxy",), 10)
        assert err["state"] in ("backoff", "connecting"), err
        proxy.start()
        outcome["up_after_proxy_start_s"] = round(_back_up(sup, route, smtp_sink, "down"), 3)
    finally:
        assert sup.stop() == 0


def test_proxy_wants_credentials_407(
    rigs: Rigs, smtp_sink: SmtpSink, outcome: dict[str, Any]
) -> None:
    """No proxy_auth_file: tinyproxy answers 407; adding the file and SIGHUP fixes it."""
    route = ROUTES["http-auth"](rigs, smtp_sink, auth_file=False)
    proxy, auth = route.peers["proxy"], route.peers["auth"]
    text = route.cfg.read_text()
    assert "proxy_auth_file" not in text
    code, tunnel = check(route.cfg)
    assert code == 2 and tunnel["error_kind"] == "proxy", tunnel
    assert "407" in tunnel["last_error"], tunnel
    sup = _sup(route)
    try:
        wait_error(sup, ("proxy",), 10)
        before = proxy.connects()
        time.sleep(2.5)  # longer than backoff_max: at least one more attempt
        assert proxy.connects() > before, "no retry reached the proxy"
        assert "407" in (sup.status_now().tunnels[0].last_error or "")
        fixed = f'proxy_auth_file = "{auth}"\n\n[[tunnel.forward]]'
        route.cfg.write_text(text.replace("[[tunnel.forward]]", fixed, 1))
        sup.signal(signal.SIGHUP)
        outcome["up_after_credentials_s"] = round(_back_up(sup, route, smtp_sink, "407"), 3)
    finally:
        assert sup.stop() == 0
    assert PROXY_USER[1] not in sup.log(), "the proxy password reached the log"


def test_proxy_forbids_the_relay_port_403(
    rigs: Rigs, smtp_sink: SmtpSink, outcome: dict[str, Any]
) -> None:
    """tinyproxy's own 403 (CONNECT to a port it does not allow); the proxy admin adds the
    port and restarts it on the same address."""
    route = ROUTES["http"](rigs, smtp_sink)
    proxy = route.peers["proxy"]
    proxy.stop()
    proxy.connect_ports = (443,)
    proxy.start()
    code, tunnel = check(route.cfg)
    assert code == 2 and tunnel["error_kind"] == "proxy", tunnel
    assert "403" in tunnel["last_error"], tunnel
    sup = _sup(route)
    try:
        wait_error(sup, ("proxy",), 10)
        proxy.stop()
        proxy.connect_ports = (route.relay.port,)
        proxy.start()
        outcome["up_after_proxy_fixed_s"] = round(_back_up(sup, route, smtp_sink, "403"), 3)
    finally:
        assert sup.stop() == 0


def test_proxy_that_never_answers_times_out(
    rigs: Rigs, smtp_sink: SmtpSink, outcome: dict[str, Any]
) -> None:
    """A proxy that accepts and says nothing: `proxy`, a timeout, within connect_timeout;
    then the real proxy back on that port."""
    route = ROUTES["http"](rigs, smtp_sink, connect_timeout=2)
    proxy = route.peers["proxy"]
    proxy.stop()
    hanging = rigs.hanging_proxy(proxy.port)
    t0 = time.monotonic()
    code, tunnel = check(route.cfg)
    took = time.monotonic() - t0
    assert code == 2 and tunnel["error_kind"] == "proxy", tunnel
    assert "timed out" in tunnel["last_error"] or "timeout" in tunnel["last_error"], tunnel
    assert took < 2 + 5, took  # connect_timeout bounds it (plus the interpreter's start)
    sup = _sup(route)
    try:
        wait_error(sup, ("proxy",), 10)
        hanging.stop()
        proxy.start()
        outcome["check_gave_up_s"] = round(took, 3)
        outcome["up_after_proxy_fixed_s"] = round(_back_up(sup, route, smtp_sink, "hang"), 3)
    finally:
        assert sup.stop() == 0
    assert hanging.accepted >= 2  # check's attempt and run's


@pytest.mark.parametrize("name", ["http", "socks5"])
def test_relay_unreachable_behind_the_proxy(name: str, rigs: Rigs, smtp_sink: SmtpSink) -> None:
    """The proxy is fine but cannot reach the relay: tinyproxy says 500, ssh -D closes the
    request. Either way it is the proxy that failed us, and last_error says how."""
    route = ROUTES[name](rigs, smtp_sink)
    route.relay.stop()
    code, tunnel = check(route.cfg)
    assert code == 2 and tunnel["error_kind"] == "proxy", tunnel
    assert tunnel["last_error"], tunnel
    if name == "http":
        assert "500" in tunnel["last_error"], tunnel


# -- the bastion ------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["killed", "frozen"])
def test_bastion_lost_is_noticed_and_left_behind(
    how: str, rigs: Rigs, smtp_sink: SmtpSink, outcome: dict[str, Any]
) -> None:
    """Killed (listener and sessions gone: the hop closes) or frozen (SIGSTOP, listener too:
    nothing answers, keepalives go unanswered, new connections get no banner): noticed within
    the keepalive bound, back when the bastion is."""
    route = ROUTES["jump"](rigs, smtp_sink)
    bastion = route.peers["bastion"]
    sup = _sup(route)
    try:
        sup.wait_forward("up", 20)
        t0 = time.monotonic()
        if how == "killed":
            bastion.stop()
            kinds: tuple[str, ...] = ("disconnected", "keepalive-timeout", "connect-refused")
        else:
            frozen = [bastion.proc.pid, *bastion.signal_sessions(signal.SIGSTOP)]
            os.kill(frozen[0], signal.SIGSTOP)
            kinds = ("keepalive-timeout", "timeout")
        err = wait_error(sup, kinds, NOTICE + 5, "the lost bastion noticed")
        noticed = time.monotonic() - t0
        assert noticed <= NOTICE, (noticed, err)
        if how == "killed":
            bastion.start()
        else:
            for pid in frozen:
                os.kill(pid, signal.SIGCONT)
        back = _back_up(sup, route, smtp_sink, f"bastion-{how}")
    finally:
        assert sup.stop() == 0
    outcome.update(noticed_s=round(noticed, 3), kind=err["error_kind"], back_s=round(back, 3))


# -- the agent --------------------------------------------------------------------------------


def test_agent_gone_then_a_new_one_at_the_same_socket(
    rigs: Rigs, smtp_sink: SmtpSink, outcome: dict[str, Any]
) -> None:
    """The agent dies while the tunnel is up: the tunnel stays up (it signed at login). The
    relay's session is killed: the reconnect has nothing to sign with (auth-failed, saying
    it is the agent). A new agent at the same path, with the key: back."""
    route = ROUTES["agent"](rigs, smtp_sink)
    agent = route.peers["agent"]
    sup = _sup(route)
    try:
        sup.wait_forward("up", 20)
        agent.kill()
        mail_through(route.listen, smtp_sink, "agent-dead-tunnel-up")
        assert route.relay.signal_sessions(signal.SIGKILL)
        err = wait_error(sup, ("auth-failed",), 10)
        assert "agent" in err["last_error"] and str(agent.socket) in err["last_error"], err
        gone = err["last_error"]
        agent.start()  # an empty agent: reachable now, but still nothing to sign with
        st = sup.wait_status(
            lambda s: s.tunnels[0].error_kind == "auth-failed" and s.tunnels[0].last_error != gone,
            10,
            "the next attempt against the empty agent",
        )
        empty = st.tunnels[0].last_error or ""
        assert "agent" in empty and "key" in empty, empty
        agent.add(route.relay.client_key)  # the same key, from the admin's copy
        outcome["back_after_key_added_s"] = round(_back_up(sup, route, smtp_sink, "agent"), 3)
    finally:
        assert sup.stop() == 0


# -- certificates -----------------------------------------------------------------------------


@pytest.mark.parametrize("fault", ["expired", "wrong-principal"])
def test_certificate_refused_then_renewed_in_place(
    fault: str, rigs: Rigs, smtp_sink: SmtpSink, outcome: dict[str, Any]
) -> None:
    """Expired: auth-failed whose reason says "expired" (said by check, and by run at start).
    For another principal: auth-failed (only the relay knows it refused). Either way a new
    certificate written over the old one is picked up on the next attempt: no restart."""
    validity = "20200101:20200102" if fault == "expired" else "-5m:+1h"
    principal = "somebody-else" if fault == "wrong-principal" else None
    route = ROUTES["certificate"](rigs, smtp_sink, validity=validity, principal=principal)
    ca, cert = route.peers["ca"], route.peers["cert"]
    code, tunnel = check(route.cfg)
    assert code == 2 and tunnel["error_kind"] == "auth-failed", tunnel
    if fault == "expired":
        assert "expired" in tunnel["last_error"], tunnel
    sup = _sup(route)
    try:
        err = wait_error(sup, ("auth-failed",), 10)
        if fault == "expired":
            assert "expired" in err["last_error"], err
            assert "expired" in sup.log()
        ca.sign(route.relay.client_key, route.relay.user, "-5m:+1h", out=cert)
        outcome["up_after_renewal_s"] = round(_back_up(sup, route, smtp_sink, fault), 3)
    finally:
        assert sup.stop() == 0
