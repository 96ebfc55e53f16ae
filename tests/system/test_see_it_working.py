"""Issue 3's "done when", end to end: a real sshd, `run`, probes, and `status` exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.configs import write_config
from tests.support.procs import SupervisorProcess
from tests.support.sshd import free_port

pytestmark = pytest.mark.timeout(90)


def status(cfg: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tunnelkeeper", "status", "-c", str(cfg), *args],
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_stopped_smtp_server_turns_the_forward_red_within_one_probe(
    make_sshd, smtp_sink, tmp_path: Path
) -> None:
    smtp, web = free_port(), free_port()
    sshd = make_sshd(permitlisten=[f"127.0.0.1:{smtp}", f"127.0.0.1:{web}"])
    sink2 = smtp_sink.__class__().start()  # a second internal service for the tcp forward
    cfg = write_config(
        tmp_path / "tk.toml",
        sshd,
        [
            {
                "name": "smtp",
                "service": "smtp",
                "listen": f"127.0.0.1:{smtp}",
                "target": f"127.0.0.1:{smtp_sink.port}",
                "domains": ["example.org"],
            },
            {
                "name": "other",
                "service": "tcp",
                "listen": f"127.0.0.1:{web}",
                "target": f"127.0.0.1:{sink2.port}",
            },
        ],
        probe_interval=1.0,
        probe_timeout=2.0,
    )
    sup = SupervisorProcess(cfg)
    try:
        sup.wait_status(
            lambda s: all(f.probe is not None and f.probe.ok for f in s.forwards),
            15,
            "both probes ok",
        )
        assert status(cfg).returncode == 0
        smtp_sink.stop()
        t0 = time.monotonic()
        st = sup.wait_status(
            lambda s: s.forwards[0].probe is not None and not s.forwards[0].probe.ok,
            10,
            "smtp probe failing",
        )
        went_red = time.monotonic() - t0
        assert went_red <= 1.0 + 2.0 + 0.5  # one probe interval plus the probe's own timeout
        assert st.tunnels[0].state == "up"  # the tunnel itself stays up
        result = status(cfg)
        assert result.returncode == 1, result.stdout + result.stderr
        assert "smtp" in result.stdout
        data = json.loads(status(cfg, "--json").stdout)
        probe = data["tunnels"][0]["forwards"][0]["probe"]
        assert probe["ok"] is False and probe["detail"]
        sink2.stop()
        sup.wait_status(
            lambda s: s.forwards[1].probe is not None and not s.forwards[1].probe.ok,
            10,
            "tcp probe failing",
        )
        assert status(cfg).returncode == 2  # none up
        smtp_sink.start()
        sup.wait_status(
            lambda s: s.forwards[0].probe is not None and s.forwards[0].probe.ok,
            10,
            "smtp probe back",
        )
        assert status(cfg).returncode == 1
        print(f"smtp forward went red {went_red:.2f}s after the SMTP server stopped")
    finally:
        assert sup.stop() == 0
        sink2.stop()
    assert status(cfg).returncode == 3  # no supervisor reachable


def test_relay_forbidding_probe_channels_falls_back_to_local_probes(
    make_sshd, smtp_sink, tmp_path: Path
) -> None:
    listen = free_port()
    sshd = make_sshd(start=False, permitlisten=[f"127.0.0.1:{listen}"])
    sshd.override_config = "AllowTcpForwarding remote\n"
    sshd.start()
    cfg = write_config(
        tmp_path / "tk.toml",
        sshd,
        [
            {
                "name": "smtp",
                "service": "smtp",
                "listen": f"127.0.0.1:{listen}",
                "target": f"127.0.0.1:{smtp_sink.port}",
                "domains": ["example.org"],
            }
        ],
        probe_interval=1.0,
    )
    sup = SupervisorProcess(cfg)
    try:
        st = sup.wait_status(lambda s: s.forwards[0].probe is not None, 15, "a probe")
        probe = st.forwards[0].probe
        assert probe is not None and probe.ok and probe.via == "local"
        assert "probing smtp's target directly" in sup.log()
        assert sup.log().count("relay forbids channels") == 1  # said once, not every probe
    finally:
        assert sup.stop() == 0
