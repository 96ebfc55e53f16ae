"""Every way out of a restrictive network, against a real relay sshd: a jump host or two, an
HTTP CONNECT proxy with and without auth, SOCKS5, an encrypted key (passphrase file, systemd
credential), ssh-agent, a user certificate. `check` says up; `run` carries mail, and comes back
after the relay's session is killed. Times are measured and reported (`-s`, or
$TK_FAULT_OUTCOMES)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import SmtpSink
from tests.support.firewall_kit import (
    Rigs,
    assert_up,
    check,
    mail_through,
    recovery_after_session_kill,
    run_until_up,
)
from tests.support.firewall_routes import ROUTES, Route

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def rigs(fdir: Path) -> Iterator[Rigs]:
    kit = Rigs(fdir)
    yield kit
    kit.close()


def _evidence(route: Route) -> None:
    """What the peers in between saw: proof the connection really took that path."""
    relay = route.relay
    if route.name in ("jump", "jump2"):
        last = route.peers.get("bastion") or route.peers["inner"]
        assert f"target 127.0.0.1 port {relay.port}" in last.log_text()
    if route.name == "jump2":
        inner = route.peers["inner"]
        assert f"target 127.0.0.1 port {inner.port}" in route.peers["outer"].log_text()
    if route.name in ("http", "http-auth"):
        host = "localhost" if route.name == "http" else "127.0.0.1"
        assert f"CONNECT {host}:{relay.port}" in route.peers["proxy"].log_text()
    if route.name == "socks5":
        assert f"localhost:{relay.port}" in route.peers["socks"].requests()
    if route.name == "agent":
        identity = route.peers["key"] / "tunnel_rsa"
        assert not identity.exists() and Path(f"{identity}.pub").exists()
    if route.name.startswith("certificate"):
        # sshd: "Accepted publickey for USER ... RSA-CERT SHA256:... ID tunnelkeeper-test"
        assert "-CERT " in relay.log_text() and "ID tunnelkeeper-test" in relay.log_text()


@pytest.mark.parametrize("name", list(ROUTES))
def test_check_reaches_the_relay(
    name: str, rigs: Rigs, smtp_sink: SmtpSink, outcome: dict[str, Any]
) -> None:
    route = ROUTES[name](rigs, smtp_sink)
    code, tunnel = check(route.cfg, route.full_env())
    assert_up(code, tunnel)
    _evidence(route)
    outcome["check_probe_ms"] = tunnel["forwards"][0]["probe"]["latency_ms"]


@pytest.mark.parametrize("name", list(ROUTES))
def test_run_carries_mail_and_recovers_from_a_killed_session(
    name: str, rigs: Rigs, smtp_sink: SmtpSink, outcome: dict[str, Any]
) -> None:
    route = ROUTES[name](rigs, smtp_sink)
    sup, first = run_until_up(route.cfg, env=route.env)
    try:
        mail1 = mail_through(route.listen, smtp_sink, f"{name}-1")
        recovery = recovery_after_session_kill(sup, route.relay, 20)
        mail2 = mail_through(route.listen, smtp_sink, f"{name}-2")
        _evidence(route)
    finally:
        assert sup.stop() == 0
    outcome.update(
        route=name,
        first_forward_s=round(first, 3),
        mail_s=round(mail1, 3),
        recovery_after_session_kill_s=round(recovery, 3),
        mail_after_recovery_s=round(mail2, 3),
    )


def test_credential_name_without_credentials_directory_is_refused(
    rigs: Rigs, smtp_sink: SmtpSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bare passphrase_file name means $CREDENTIALS_DIRECTORY/NAME: without the variable,
    check refuses to start (exit 2) and says which."""
    route = ROUTES["credential"](rigs, smtp_sink)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    proc = subprocess.run(
        [sys.executable, "-m", "tunnelkeeper", "check", "-c", str(route.cfg), "--json"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "CREDENTIALS_DIRECTORY" in proc.stderr, proc.stderr
    assert f"{route.cfg}: tunnel[0].passphrase_file:" in proc.stderr, proc.stderr


def test_two_hop_chain_pins_every_hop(rigs: Rigs, smtp_sink: SmtpSink) -> None:
    """Under strict, a chain whose known_hosts lacks the middle hop is refused at that hop:
    nothing is signed for it, the relay never hears from us."""
    route = ROUTES["jump2"](rigs, smtp_sink)
    inner, outer = route.peers["inner"], route.peers["outer"]
    known = Path(str(route.cfg.parent / "known_hosts.chain"))
    lines = [ln for ln in known.read_text().splitlines() if f"]:{inner.port} " not in ln]
    known.write_text("\n".join(lines) + "\n")
    code, tunnel = check(route.cfg)
    assert code == 2 and tunnel["error_kind"] == "host-key-unknown", tunnel
    assert str(inner.port) in (tunnel["last_error"] or ""), tunnel  # names the hop
    assert "userauth-request" not in inner.log_text()
    assert "userauth-request" not in route.relay.log_text()
    assert "Accepted publickey" in outer.log_text()


def test_accept_new_pins_every_hop_of_a_chain(rigs: Rigs, smtp_sink: SmtpSink) -> None:
    """accept-new, nothing known yet: outer hop, inner hop and relay are all pinned on first
    contact, each under its own [127.0.0.1]:PORT, with the key that host really has."""
    route = ROUTES["jump2"](rigs, smtp_sink, host_key_policy="accept-new")
    known = route.cfg.parent / "known_hosts.chain"
    known.write_text("")
    code, tunnel = check(route.cfg)
    assert_up(code, tunnel)
    pinned = known.read_text()
    for host in (route.peers["outer"], route.peers["inner"], route.relay):
        key = Path(f"{host.host_key}.pub").read_text().split()[1]
        assert f"[127.0.0.1]:{host.port} " in pinned and key in pinned, pinned
    code, tunnel = check(route.cfg)  # and now they are known: strict would do
    assert_up(code, tunnel)


@pytest.mark.parametrize("route_name", ["passphrase", "http-auth"])
def test_secret_file_readable_by_others_is_refused(
    route_name: str, rigs: Rigs, smtp_sink: SmtpSink
) -> None:
    """A passphrase or proxy-auth file that group or others can read: check refuses to
    start (exit 2) and names the file."""
    route = ROUTES[route_name](rigs, smtp_sink)
    secret: Path = route.peers["secret" if route_name == "passphrase" else "auth"]
    secret.chmod(0o644)
    proc = subprocess.run(
        [sys.executable, "-m", "tunnelkeeper", "check", "-c", str(route.cfg), "--json"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert str(secret) in proc.stderr, proc.stderr
