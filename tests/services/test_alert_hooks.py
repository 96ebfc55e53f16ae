"""Alert hooks: a timed-out hook dies with its children, its environment is clean text, and a
hook that cannot start never stops the next alert."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import sys
import unicodedata
from pathlib import Path
from typing import Any

import pytest

from tests.support.polling import until
from tests.support.snapshots import down, healthy
from tunnelkeeper.config import SupervisorSettings
from tunnelkeeper.services import alerts
from tunnelkeeper.services.alerts import watch
from tunnelkeeper.state import SupervisorStatus

RECORD = (
    "import json, os, sys; "
    "env = {k: v for k, v in os.environ.items() if k.startswith('TUNNELKEEPER_')}; "
    "open(sys.argv[1], 'a').write(json.dumps(env) + '\\n')"
)


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie waiting for its reaper does not)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return fields[0] != "Z"


def written(out: Path) -> bool:
    """The hook has written its whole line (it opens the file before it writes)."""
    return out.exists() and out.read_text().endswith("\n")


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_timed_out_hook_takes_its_children_along(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pids = tmp_path / "pids"
    # A pager script that starts a helper and waits for it: both must go at the time limit.
    script = f"sleep 30 & echo $! > {pids}.tmp; mv {pids}.tmp {pids}; wait"
    settings = SupervisorSettings(on_down=("/bin/sh", "-c", script), alert_after=0)
    task = asyncio.create_task(watch(settings, down, poll=0.02, hook_timeout=0.5))
    try:
        await until(pids.exists)
        grandchild = int(pids.read_text())
        assert alive(grandchild)
        await until(lambda: "killed" in caplog.text)
        await until(lambda: not alive(grandchild), timeout=3)
    finally:
        await stop(task)


async def test_hooks_killed_at_shutdown_take_their_children_along(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    script = f"sleep 30 & echo $! > {pids}.tmp; mv {pids}.tmp {pids}; wait"
    settings = SupervisorSettings(on_down=("/bin/sh", "-c", script), alert_after=0)
    task = asyncio.create_task(watch(settings, down, poll=0.02))
    await until(pids.exists)
    grandchild = int(pids.read_text())
    await stop(task)
    await until(lambda: not alive(grandchild), timeout=3)


def with_error(text: str) -> SupervisorStatus:
    status = down()
    return dataclasses.replace(
        status, tunnels=(dataclasses.replace(status.tunnels[0], last_error=text),)
    )


@pytest.mark.parametrize(
    "error",
    [
        "evil\x00tail",
        "line one\nTUNNELKEEPER_EVENT=up",
        "\x1b]0;pwned\x07\x1b[2Jclear",
        "bidi \u202etxt.exe",
        "x" * 100_000,
    ],
)
async def test_hook_environment_is_clean_text(tmp_path: Path, error: str) -> None:
    out = tmp_path / "events"
    settings = SupervisorSettings(on_down=(sys.executable, "-c", RECORD, str(out)), alert_after=0)
    task = asyncio.create_task(watch(settings, lambda: with_error(error), poll=0.02))
    try:
        await until(lambda: written(out))
    finally:
        await stop(task)
    env: dict[str, str] = json.loads(out.read_text())
    value = env["TUNNELKEEPER_ERROR"]
    assert env["TUNNELKEEPER_EVENT"] == "down"
    assert not [c for c in value if unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp")]
    assert len(value) <= alerts.MAX_ENV_VALUE
    for word in re.findall(r"[A-Za-z]{3,}", error):  # the text itself is all still there
        assert word[:100] in value


@pytest.mark.parametrize("failure", [ValueError("embedded null byte"), PermissionError(13, "no")])
async def test_hook_that_cannot_start_is_logged_and_fires_next_time(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    failure: Exception,
) -> None:
    out = tmp_path / "events"
    real = asyncio.create_subprocess_exec
    calls = 0

    async def flaky(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise failure
        return await real(*args, **kwargs)

    monkeypatch.setattr(asyncio, "create_subprocess_exec", flaky)
    settings = SupervisorSettings(on_down=(sys.executable, "-c", RECORD, str(out)), alert_after=0)
    status = down()
    task = asyncio.create_task(watch(settings, lambda: status, poll=0.02))
    try:
        await until(lambda: "could not start" in caplog.text)
        assert str(failure) in caplog.text or type(failure).__name__ in caplog.text
        status = healthy()
        await asyncio.sleep(0.1)
        status = down()
        await until(lambda: written(out))
        assert json.loads(out.read_text())["TUNNELKEEPER_EVENT"] == "down"
        assert not task.done()
    finally:
        await stop(task)
