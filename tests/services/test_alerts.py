"""The alert hook fires once after `alert_after`, clears on recovery, and never blocks."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path

import pytest

from tests.support.polling import until
from tests.support.snapshots import down, healthy, smtp_failing
from tunnelkeeper.config import SupervisorSettings
from tunnelkeeper.services.alerts import Alert, Alerts, watch
from tunnelkeeper.state import SupervisorStatus

# Appends the hook's view (event, names, error) as one JSON line to the file it is given.
RECORD = (
    "import json, os, sys; "
    "keys = ['EVENT', 'TUNNEL', 'FORWARD', 'SERVICE', 'ERROR', 'ERROR_KIND']; "
    "env = {k: os.environ.get('TUNNELKEEPER_' + k) for k in keys}; "
    "env['NOTIFY_SOCKET'] = os.environ.get('NOTIFY_SOCKET'); "
    "open(sys.argv[1], 'a').write(json.dumps(env) + '\\n')"
)


def hook(out: Path) -> tuple[str, ...]:
    return (sys.executable, "-c", RECORD, str(out))


def events(out: Path) -> list[dict[str, str | None]]:
    if not out.exists():
        return []
    lines = out.read_text().splitlines(keepends=True)
    return [json.loads(line) for line in lines if line.endswith("\n")]  # whole lines only


async def test_fires_once_and_clears(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", "/run/systemd/notify")  # must not reach the hook
    out = tmp_path / "events"
    settings = SupervisorSettings(on_down=hook(out), on_up=hook(out), alert_after=0.2)
    status: SupervisorStatus = healthy()
    task = asyncio.create_task(watch(settings, lambda: status, poll=0.02))
    try:
        status = smtp_failing()
        failed_at = time.monotonic()
        await until(lambda: len(events(out)) == 1)
        assert time.monotonic() - failed_at >= 0.2
        assert events(out)[0] == {
            "EVENT": "down",
            "TUNNEL": "relay1",
            "FORWARD": "smtp",
            "SERVICE": "smtp",
            "ERROR": "connection to 127.0.0.1:25 refused behind the relay",
            "ERROR_KIND": "probe-failed",
            "NOTIFY_SOCKET": None,
        }
        status = healthy()
        await until(lambda: len(events(out)) == 2)
        down_, up = events(out)
        assert down_["EVENT"] == "down"  # one down, however many polls saw it still down
        assert (up["EVENT"], up["TUNNEL"], up["FORWARD"]) == ("up", "relay1", "smtp")
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


def said(alerts: list[Alert]) -> list[tuple[str, str, str]]:
    return [(event, tunnel.name, fwd.name) for event, tunnel, fwd in alerts]


def test_a_short_blip_does_not_alert() -> None:
    """Failing for less than alert_after, then healthy: nothing, then or ever after. The
    clock is given, so "ever after" is an hour without waiting one."""
    alerts = Alerts(alert_after=0.5)
    assert alerts.observe(smtp_failing(), now=0.0) == []
    assert alerts.observe(smtp_failing(), now=0.49) == []
    assert alerts.observe(healthy(), now=0.5) == []
    assert alerts.observe(healthy(), now=3600.0) == []


def test_down_once_however_long_it_stays_down_then_up_once() -> None:
    alerts = Alerts(alert_after=60.0)
    assert alerts.observe(smtp_failing(), now=0.0) == []
    assert said(alerts.observe(smtp_failing(), now=60.0)) == [("down", "relay1", "smtp")]
    assert all(alerts.observe(smtp_failing(), now=60.0 + m * 60) == [] for m in range(1, 60))
    assert said(alerts.observe(healthy(), now=4000.0)) == [("up", "relay1", "smtp")]
    assert alerts.observe(healthy(), now=8000.0) == []


async def test_tunnel_down_names_its_error_kind(tmp_path: Path) -> None:
    out = tmp_path / "events"
    settings = SupervisorSettings(on_down=hook(out), alert_after=0)
    task = asyncio.create_task(watch(settings, down, poll=0.02))
    try:
        await until(lambda: len(events(out)) == 1)
        event = events(out)[0]
        assert event["ERROR_KIND"] == "connect-refused"
        assert event["ERROR"] == "connect to mx2.example.com:2222: Connection refused"
        assert (event["TUNNEL"], event["FORWARD"]) == ("relay2", "smtp")
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_slow_and_broken_hooks_are_logged_not_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    slow = (sys.executable, "-c", "import time; time.sleep(30)")
    settings = SupervisorSettings(on_down=slow, on_up=(str(tmp_path / "missing"),), alert_after=0)
    status: SupervisorStatus = smtp_failing()
    ticks = 0

    def get_status() -> SupervisorStatus:
        nonlocal ticks
        ticks += 1
        return status

    task = asyncio.create_task(watch(settings, get_status, poll=0.02, hook_timeout=0.3))
    try:
        await until(lambda: "took over 0.3 s; killed" in caplog.text)
        assert ticks > 5  # the loop kept polling while the hook ran
        status = healthy()
        await until(lambda: "could not start" in caplog.text)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_no_hooks_returns_at_once() -> None:
    async with asyncio.timeout(1):
        await watch(SupervisorSettings(), healthy)


async def test_hooks_in_flight_die_with_the_watch(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    slow = (
        sys.executable,
        "-c",
        f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(30)",
    )
    settings = SupervisorSettings(on_down=slow, alert_after=0)
    task = asyncio.create_task(watch(settings, down, poll=0.02))
    await until(lambda: pid_file.exists() and pid_file.read_text() != "")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    with pytest.raises(ProcessLookupError):
        os.kill(int(pid_file.read_text()), 0)
