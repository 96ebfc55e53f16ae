"""`tunnelkeeper run` against a real sshd with history and metrics_textfile on: the relay goes
away and comes back; the outage lands in the database, in `status` and in the textfile."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import SmtpSink
from tests.support.configs import write_config
from tests.support.procs import SupervisorProcess, history_json
from tests.support.sshd import free_port, wait_until

pytestmark = pytest.mark.timeout(90)


def textfile_samples(path: Path) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for f in text_string_to_metric_families(path.read_text())
        for s in f.samples
    }


def test_a_relay_outage_is_recorded_shown_and_exported(
    make_sshd: Any, smtp_sink: SmtpSink, tmp_path: Path
) -> None:
    listen = free_port()
    sshd = make_sshd(permitlisten=[f"127.0.0.1:{listen}"])
    prom = tmp_path / "collector" / "tunnelkeeper.prom"
    prom.parent.mkdir()
    cfg = write_config(
        tmp_path / "tk.toml",
        sshd,
        [{"name": "smtp", "service": "smtp", "listen": listen, "target": smtp_sink.port}],
        supervisor={"history_path": "state/history.db", "metrics_textfile": str(prom)},
        probe_interval=2,
        backoff_initial=0.2,
        backoff_max=0.5,
    )
    sup = SupervisorProcess(cfg)
    try:
        first = sup.wait_status(
            lambda s: s.forwards[0].availability_24h == 100.0, 15, "100.00 at first"
        )
        wait_until(prom.exists, 10, what="the textfile")
        m = textfile_samples(prom)  # written at start, then every 15 s
        assert m[("tunnelkeeper_start_time_seconds", frozenset())] == first.started.timestamp()
        assert ("tunnelkeeper_tunnel_up", frozenset({("tunnel", "relay1")})) in m
        assert prom.stat().st_mode & 0o777 == 0o644
        # Stop the relay just after a probe, so none is in flight when the connection drops.
        probed = sup.status_now().forwards[0].probe
        sup.wait_status(lambda s: s.forwards[0].probe != probed, 5, "a fresh probe")
        sshd.stop()
        sup.wait_status(lambda s: s.tunnels[0].state != "up", 10, "the tunnel down")
        time.sleep(1.0)
        sshd.start()
        began = time.monotonic()
        st = sup.wait_status(
            lambda s: (
                s.forwards[0].availability_24h is not None and s.forwards[0].availability_24h < 100
            ),
            15,
            "availability below 100 after the outage",
        )
        assert st.forwards[0].availability_24h is not None
        doc = history_json(cfg)
        [outage] = doc["outages"]
        assert outage["error_kind"] in ("disconnected", "connect-refused")
        assert outage["reason"]
        wait_until(lambda: history_json(cfg)["outages"][0]["end"] is not None, 10, what="its end")
        outage = history_json(cfg)["outages"][0]
        # Down from sshd.stop() until a probe passed after the restart (probes every 2 s).
        assert 1.0 <= outage["duration_s"] <= 1.5 + (time.monotonic() - began) + 3.0
        [row] = history_json(cfg, "--tunnel", "relay1")["availability"]
        assert 0 < row["24h"] < 100 and row["recorded_s"]["24h"] > 0
    finally:
        assert sup.stop() == 0
    assert not prom.exists()  # a stopped supervisor removes its textfile
    after = history_json(cfg)
    assert after["outages"][0]["end"] is not None
    assert "history: recording state changes in" in sup.log()
