"""No secret leaves: the private key appears in no log, status, check or dashboard output."""

from __future__ import annotations

import io
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from tests.support.faults import relay_config, send, smtp_forward
from tests.support.procs import SupervisorProcess
from tests.support.sshd import free_port
from tunnelkeeper.dashboard import Dashboard

pytestmark = pytest.mark.timeout(120)


def _secret_pieces(key: Path) -> list[str]:
    """The base64 body of an OpenSSH private key, line by line and in 24-character slices."""
    body = [
        line.strip()
        for line in key.read_text().splitlines()
        if line.strip() and not line.startswith("-----")
    ]
    joined = "".join(body)
    return body + [joined[i : i + 24] for i in range(0, len(joined) - 24, 24)]


def _tk(*args: str, timeout: float = 30) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "tunnelkeeper", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return result.stdout + result.stderr


def _watch(cfg: Path, seconds: float) -> str:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tunnelkeeper", "status", "--watch", "-c", str(cfg)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    time.sleep(seconds)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=10)
    return out


def test_private_key_never_in_any_output(
    make_relay, smtp_sink, fdir: Path, outcome: dict[str, Any]
) -> None:
    """Debug logging (asyncssh's too), a flap, an auth failure, probes, every reader."""
    listen = free_port()
    sshd = make_relay(permitlisten=[f"127.0.0.1:{listen}"])
    cfg = relay_config(
        fdir / "tk.toml",
        sshd,
        [smtp_forward(listen, smtp_sink.port)],
        probe_interval=0.5,
        supervisor={"log_level": "debug"},
    )
    sup = SupervisorProcess(cfg, "--dashboard")
    outputs: dict[str, str] = {}
    try:
        sup.wait_forward("up", 15)
        send(listen, b"Subject: s\r\n\r\nsecret-free\r\n")
        authorized = sshd.authorized_keys.read_text()
        sshd.authorized_keys.write_text("")
        sshd.signal_sessions(signal.SIGKILL)
        sup.wait_status(lambda s: s.tunnels[0].error_kind == "auth-failed", 10, "auth-failed")
        outputs["status-while-failing"] = _tk("status", "-c", str(cfg))
        outputs["check-while-failing"] = _tk("check", "-c", str(cfg))
        sshd.authorized_keys.write_text(authorized)
        sup.wait_forward("up", 10)
        sup.wait_status(lambda s: bool(s.forwards[0].probe and s.forwards[0].probe.ok), 10, "ok")
        outputs["status"] = _tk("status", "-c", str(cfg))
        outputs["status-json"] = _tk("status", "--json", "-c", str(cfg))
        outputs["status-watch"] = _watch(cfg, 2.0)
        outputs["check-json"] = _tk("check", "--json", "-c", str(cfg))
        st = sup.status()
        rendered = io.StringIO()
        Console(file=rendered, width=160, force_terminal=False).print(Dashboard(st))
        outputs["dashboard-render"] = rendered.getvalue()
    finally:
        code = sup.stop()
    outputs["supervisor-log-and-dashboard"] = sup.log()
    pieces = _secret_pieces(sshd.client_key)
    leaks = {
        name: [p for p in pieces if p in text] or ("PRIVATE KEY" in text and ["PRIVATE KEY"])
        for name, text in outputs.items()
    }
    outcome.update(
        outputs_checked=sorted(outputs),
        bytes_checked=sum(len(t) for t in outputs.values()),
        secret_pieces=len(pieces),
        leaks={k: v for k, v in leaks.items() if v},
    )
    assert code == 0
    assert "auth-failed" in outputs["status-while-failing"]
    assert "DEBUG" in outputs["supervisor-log-and-dashboard"]  # asyncssh's debug was on too
    assert "forwards healthy" in outputs["supervisor-log-and-dashboard"]  # the dashboard's frame
    assert all(len(text) > 50 for text in outputs.values()), {k: len(v) for k, v in outputs.items()}
    assert not any(leaks.values()), leaks
