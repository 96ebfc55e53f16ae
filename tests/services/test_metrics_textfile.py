"""metrics_textfile for node_exporter's textfile collector, and the public metrics_listen guard."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.polling import until as wait_for
from tests.support.snapshots import mixed, with_history
from tunnelkeeper import config
from tunnelkeeper.cli import main
from tunnelkeeper.errors import ConfigError, TunnelkeeperError
from tunnelkeeper.services.metrics import write_textfile
from tunnelkeeper.state import SupervisorStatus


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def test_textfile_holds_the_snapshot_and_is_replaced_whole(tmp_path: Path) -> None:
    path = tmp_path / "tunnelkeeper.prom"
    status: SupervisorStatus = with_history()
    old_umask = os.umask(0o077)  # 0644 whatever the supervisor's umask
    task = asyncio.create_task(write_textfile(path, lambda: status, period=0.01))
    try:
        await wait_for(path.exists)
        assert path.stat().st_mode & 0o777 == 0o644
        m = samples(path.read_text())
        for tunnel in status.tunnels:
            up = m[("tunnelkeeper_tunnel_up", frozenset({("tunnel", tunnel.name)}))]
            assert up == (1.0 if tunnel.state == "up" else 0.0)
            for fwd in tunnel.forwards:
                labels = frozenset(
                    {"tunnel": tunnel.name, "forward": fwd.name, "service": fwd.service}.items()
                )
                assert m[("tunnelkeeper_forward_bytes_in_total", labels)] == fwd.bytes_in
                assert m[("tunnelkeeper_forward_up", labels)] == (1.0 if fwd.healthy else 0.0)
                avail = ("tunnelkeeper_forward_availability_24h_percent", labels)
                assert m[avail] == fwd.availability_24h
        # Readers racing the rewrites always see a whole file, and never the temporary one.
        inodes: set[int] = set()
        torn: list[str] = []
        stop = threading.Event()

        def read() -> None:
            while not stop.is_set():
                text = path.read_text()
                inodes.add(path.stat().st_ino)
                if not text.endswith("\n") or "tunnelkeeper_snapshot_timestamp_seconds" not in text:
                    torn.append(text)

        reader = threading.Thread(target=read)
        reader.start()
        status = mixed()  # the file follows the snapshot
        await asyncio.sleep(0.5)
        stop.set()
        await asyncio.to_thread(reader.join, 5)
        assert not torn and inodes
        # Each rewrite is a new file renamed into place: one held open keeps its whole text.
        with path.open() as held:
            before = os.fstat(held.fileno()).st_ino
            await wait_for(lambda: path.stat().st_ino != before)
            assert samples(held.read())
        assert "tunnelkeeper_forward_availability_24h_percent{" not in path.read_text()
        names = set(os.listdir(tmp_path)) - {f".tunnelkeeper.prom.{os.getpid()}.tmp"}
        assert names == {"tunnelkeeper.prom"}  # the temporary file is not *.prom
    finally:
        os.umask(old_umask)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert not path.exists()  # a stopped supervisor's numbers must not look current


async def test_textfile_errors(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(TunnelkeeperError, match="cannot write"):
        await write_textfile(tmp_path / "missing" / "t.prom", mixed, period=0.01)
    folder = tmp_path / "collector"
    folder.mkdir()
    path = folder / "t.prom"
    task = asyncio.create_task(write_textfile(path, mixed, period=0.01))
    try:
        await wait_for(path.exists)
        path.unlink()
        folder.rmdir()  # node_exporter's folder went away: logged, and the writer carries on
        with caplog.at_level(logging.WARNING, logger="tunnelkeeper.services.metrics"):
            await wait_for(lambda: "cannot write" in caplog.text)
        folder.mkdir()
        await wait_for(path.exists)
        assert caplog.text.count("cannot write") == 1  # once until the error changes
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_textfile_needs_the_metrics_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # as if not installed
    with pytest.raises(ConfigError, match=r"supervisor\.metrics_textfile.*tunnelkeeper\[metrics\]"):
        await write_textfile(tmp_path / "t.prom", mixed)


BODY = """
[[tunnel]]
name = "relay1"
host = "relay.example.net"
user = "t"
  [[tunnel.forward]]
  name = "smtp"
  listen = 2525
  target = 25
"""


@pytest.mark.parametrize(
    "listen", ["0.0.0.0:9469", "192.0.2.7:9469", "[::]:9469", "9469.example:1"]
)
def test_a_public_metrics_listen_is_refused_without_allow_public_metrics(
    tmp_path: Path, listen: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "tunnelkeeper.toml"
    path.write_text(f'[supervisor]\nmetrics_listen = "{listen}"\n{BODY}')
    with pytest.raises(ConfigError) as caught:
        config.load(path)
    assert caught.value.key == "supervisor.metrics_listen"
    assert "allow_public_metrics = true" in str(caught.value)
    assert main(["run", "-c", str(path)]) == 2  # nothing starts
    assert "allow_public_metrics" in capsys.readouterr().err
    path.write_text(
        f'[supervisor]\nallow_public_metrics = true\nmetrics_listen = "{listen}"\n{BODY}'
    )
    assert config.load(path).supervisor.metrics_listen is not None


@pytest.mark.parametrize("listen", ["127.0.0.1:9469", "[::1]:9469", "localhost:9469", "9469"])
def test_a_loopback_metrics_listen_needs_nothing(tmp_path: Path, listen: str) -> None:
    path = tmp_path / "tunnelkeeper.toml"
    path.write_text(f'[supervisor]\nmetrics_listen = "{listen}"\n{BODY}')
    assert config.load(path).supervisor.metrics_listen is not None


def test_relative_history_and_textfile_paths_are_beside_the_config(tmp_path: Path) -> None:
    path = tmp_path / "tunnelkeeper.toml"
    path.write_text(
        f'[supervisor]\nhistory_path = "state/h.db"\nmetrics_textfile = "t.prom"\n'
        f"history_days = 7\n{BODY}"
    )
    sup = config.load(path).supervisor
    assert sup.history_file == tmp_path.resolve() / "state" / "h.db"
    assert sup.metrics_textfile == tmp_path.resolve() / "t.prom"
    assert sup.history and sup.history_days == 7
    path.write_text(f"[supervisor]\nhistory_days = 0\n{BODY}")
    with pytest.raises(ConfigError, match="history_days"):
        config.load(path)
