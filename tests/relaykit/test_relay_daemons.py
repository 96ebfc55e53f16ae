"""`tunnelkeeper run` through a relay set up from the kit: real Dropbear and real OpenSSH sshd.

Each relay gets exactly what the kit tells its admin to install: Dropbear the Dropbear
authorized_keys file and the flags of its README, sshd the OpenSSH line and the Match block.
The tests time the first forward and the recovery after the relay's session process is
killed, so the two daemons can be compared (printed as MEASURED lines; run with -s).
"""

from __future__ import annotations

import json
import signal
import smtplib
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.configs import write_config
from tests.support.procs import SupervisorProcess
from tests.support.sshd import free_port, keygen, wait_until
from tunnelkeeper.config import load
from tunnelkeeper.relaykit import dropbear, openssh

pytestmark = pytest.mark.timeout(120)

# A connection up this long counts as stable, so the reconnect after a kill is immediate; each
# kill waits for it, or the numbers would measure the backoff instead of the relay.
STABLE_AFTER = 1.0


def send_mail(port: int, subject: str) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
        smtp.sendmail(
            "alice@example.net", ["bob@example.org"], f"Subject: {subject}\r\n\r\n{subject}\r\n"
        )


def relay_config(
    kind: str, make_sshd: Any, make_dropbear: Any, sink_port: int, folder: Path
) -> tuple[Any, Path, int]:
    """A started relay of `kind` set up from the generated files, and a config for it."""
    listen = free_port()
    relay = make_dropbear() if kind == "dropbear" else make_sshd(start=False)
    forward = {
        "name": "smtp",
        "service": "smtp",
        "listen": f"127.0.0.1:{listen}",
        "target": f"127.0.0.1:{sink_port}",
        "domains": ["example.org"],
    }
    cfg = write_config(
        folder / "tk.toml",
        relay,
        [forward],
        probe_interval=1,
        probe_timeout=3,
        stable_after=STABLE_AFTER,
    )
    # The generators read <identity>.pub; both fixtures keep it beside the private key.
    config = load(cfg)
    if kind == "dropbear":
        relay.flags = tuple(dropbear.flags(config.tunnel[0]))
        relay.set_authorized(dropbear.authorized_keys(config))
    else:
        relay.authorized_keys.write_text(openssh.authorized_keys(config))
        relay.extra_config = openssh.sshd_config(config)
    relay.start()
    return relay, cfg, listen


def status_json(cfg: Path) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "tunnelkeeper", "status", "--json", "-c", str(cfg)],
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout
    return json.loads(out)


def run_through(kind: str, rounds: int, relay: Any, cfg: Path, listen: int, sink: Any) -> None:
    sup = SupervisorProcess(cfg)
    recoveries: list[float] = []
    try:
        t0 = time.monotonic()
        sup.wait_forward("up", 15)
        first = time.monotonic() - t0
        send_mail(listen, "first")
        wait_until(lambda: len(sink.raw) == 1, 10, what="mail at the sink")
        st = sup.wait_status(
            lambda s: s.forwards[0].probe is not None and s.forwards[0].probe.ok,
            10,
            "a good probe",
        )
        probe = st.forwards[0].probe
        assert probe is not None and probe.via == "relay" and "220" in probe.detail
        up_at = time.monotonic()
        for n in range(rounds):
            time.sleep(max(0.0, up_at + STABLE_AFTER + 0.3 - time.monotonic()))
            killed = relay.signal_sessions(signal.SIGKILL)
            assert killed, f"no {kind} session process to kill"
            t1 = time.monotonic()
            sup.wait_status(
                lambda s, n=n: s.tunnels[0].connects >= n + 2 and s.forwards[0].state == "up",
                20,
                "the forward back after the kill",
            )
            up_at = time.monotonic()
            recoveries.append(up_at - t1)
            send_mail(listen, f"after kill {n}")
            wait_until(lambda n=n: len(sink.raw) == n + 2, 10, what="mail after recovery")
    finally:
        assert sup.stop() == 0
    spread = f" (min {min(recoveries):.2f}, max {max(recoveries):.2f})" if rounds > 1 else ""
    print(
        f"\nMEASURED {kind}: first forward {first:.2f}s, recovery after kill -9 "
        f"{statistics.median(recoveries):.2f}s median of {rounds}{spread}"
    )


@pytest.mark.parametrize("kind", ["dropbear", "openssh"])
def test_tunnel_through_the_relay(
    kind: str, make_sshd: Any, make_dropbear: Any, smtp_sink: Any, tmp_path: Path
) -> None:
    relay, cfg, listen = relay_config(kind, make_sshd, make_dropbear, smtp_sink.port, tmp_path)
    run_through(kind, 1, relay, cfg, listen, smtp_sink)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["dropbear", "openssh"])
def test_tunnel_through_the_relay_ten_kills(
    kind: str, make_sshd: Any, make_dropbear: Any, smtp_sink: Any, tmp_path: Path
) -> None:
    relay, cfg, listen = relay_config(kind, make_sshd, make_dropbear, smtp_sink.port, tmp_path)
    run_through(kind, 10, relay, cfg, listen, smtp_sink)


# -- what the ssh layer reports about the relay ------------------------------------------


def test_status_shows_the_relays_version(
    make_sshd: Any, make_dropbear: Any, smtp_sink: Any, tmp_path: Path
) -> None:
    relay, cfg, _listen = relay_config(
        "dropbear", make_sshd, make_dropbear, smtp_sink.port, tmp_path
    )
    version = relay.version().split("v")[-1]  # "Dropbear v2022.83" -> "2022.83"
    sup = SupervisorProcess(cfg)
    try:
        sup.wait_forward("up", 15)
        tunnel = status_json(cfg)["tunnels"][0]
        assert tunnel.get("relay_version") == f"SSH-2.0-dropbear_{version}"
    finally:
        assert sup.stop() == 0


def test_refused_key_on_dropbear_names_the_fix(
    make_dropbear: Any, smtp_sink: Any, tmp_path: Path
) -> None:
    relay = make_dropbear()
    listen = free_port()
    forward = {"name": "smtp", "service": "smtp", "listen": listen, "target": smtp_sink.port}
    cfg = write_config(tmp_path / "tk.toml", relay, [forward])
    relay.set_authorized(openssh.authorized_keys(load(cfg)))  # the OpenSSH line: refused
    relay.start()
    sup = SupervisorProcess(cfg)
    try:
        st = sup.wait_status(lambda s: s.tunnels[0].last_error is not None, 15, "an error")
        assert "Bad public key options" in relay.log_text()
        error = st.tunnels[0].last_error or ""
        assert "Dropbear" in error and "authorized-keys --sshd dropbear" in error, error
    finally:
        assert sup.stop() == 0


def _identification(port: int) -> str:
    """The SSH identification line the server on `port` sends first."""
    data = b""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        for _ in range(64):  # the line is at most 255 bytes; sshd sends it in one segment
            chunk = sock.recv(256)
            data += chunk
            if not chunk or b"\n" in data:
                break
    return data.split(b"\n")[0].rstrip(b"\r").decode()


@pytest.mark.parametrize("kind", ["dropbear", "openssh"])
def test_a_refused_key_keeps_the_relays_version(
    kind: str, make_sshd: Any, make_dropbear: Any, tmp_path: Path
) -> None:
    """The relay said who it is before it refused our key: check --json and status --json
    show that identification, as the relay sent it, beside auth-failed."""
    relay = make_dropbear() if kind == "dropbear" else make_sshd(start=False)
    forward = {"name": "smtp", "service": "smtp", "listen": free_port(), "target": free_port()}
    cfg = write_config(tmp_path / "tk.toml", relay, [forward])
    stranger = keygen(tmp_path / "stranger_rsa")  # the only key the relay lets in
    if kind == "dropbear":
        relay.set_authorized(Path(f"{stranger}.pub").read_text())
    else:
        relay.set_authorized(options="", key=stranger)
    relay.start()
    version = _identification(relay.port)
    assert version.startswith("SSH-2.0-"), version
    check = subprocess.run(
        [sys.executable, "-m", "tunnelkeeper", "check", "--json", "-c", str(cfg)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    tunnel = json.loads(check.stdout)["tunnels"][0]
    assert (tunnel["error_kind"], tunnel["relay_version"]) == ("auth-failed", version), tunnel
    sup = SupervisorProcess(cfg)
    try:
        sup.wait_status(lambda s: s.tunnels[0].error_kind == "auth-failed", 15, "auth refused")
        tunnel = status_json(cfg)["tunnels"][0]
        assert (tunnel["error_kind"], tunnel["relay_version"]) == ("auth-failed", version), tunnel
    finally:
        assert sup.stop() == 0


def test_dropbear_keepalives_leave_a_quiet_tunnel_alone(
    make_sshd: Any, make_dropbear: Any, smtp_sink: Any, tmp_path: Path
) -> None:
    """With -K 1 Dropbear probes every second, on an open forwarded channel when there is one;
    tunnelkeeper answers, so neither an idle tunnel nor an idle mail session is dropped."""
    relay, cfg, listen = relay_config(
        "dropbear", make_sshd, make_dropbear, smtp_sink.port, tmp_path
    )
    assert relay.flags[:2] == ("-K", "1")
    sup = SupervisorProcess(cfg)
    try:
        sup.wait_forward("up", 15)
        with smtplib.SMTP("127.0.0.1", listen, timeout=10) as idle:
            time.sleep(dropbear.KEEPALIVE_LIMIT + 1.5)  # longer than a silent client gets
            assert idle.noop()[0] == 250
        st = sup.status()
        assert st is not None and st.tunnels[0].connects == 1 and st.forwards[0].state == "up"
        assert "Keepalive timeout" not in relay.log_text()
    finally:
        assert sup.stop() == 0
