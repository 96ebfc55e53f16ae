"""The dashboard rendered from fixed snapshots and a fixed clock, compared with golden text."""

from __future__ import annotations

import asyncio
import io
import logging
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
from rich.console import Console

from tests.dashboard.golden_text import check_golden, render
from tests.support.polling import until, until_blocking
from tests.support.snapshots import NOW, SNAPSHOTS, mixed
from tunnelkeeper.dashboard import (
    Dashboard,
    LiveDashboard,
    LogBuffer,
    human_bytes,
    human_duration,
    logs_into,
    show,
)
from tunnelkeeper.state import SupervisorStatus


@pytest.mark.parametrize("width", [80, 100, 160])
@pytest.mark.parametrize("snapshot", sorted(SNAPSHOTS))
def test_dashboard_matches_golden(snapshot: str, width: int) -> None:
    text = render(Dashboard(SNAPSHOTS[snapshot](), now=NOW), width)
    check_golden(f"{snapshot}-{width}.txt", text)
    assert all(len(line) <= width for line in text.splitlines())


def test_dashboard_on_a_terminal_matches_golden() -> None:
    check_golden("mixed-100-terminal.txt", render(Dashboard(mixed(), now=NOW), 100, terminal=True))


def test_narrow_dashboard_keeps_what_matters() -> None:
    text = render(Dashboard(mixed(), now=NOW), 80)
    for needed in ("failing", "refused", "backoff 13s", "FAIL 10.0s via local", "→"):
        assert needed in text
    # No error column at 80: the reasons are listed under the table instead.
    assert "Last error" not in text
    assert "! relay2:" in text and "[connect-refused]" in text and "retry in 13s" in text


def test_wide_dashboard_shows_errors_inline() -> None:
    text = render(Dashboard(mixed(), now=NOW), 160)
    assert "Last error" in text
    assert "! relay2:" not in text


def test_a_local_forward_says_it_is_one() -> None:
    status = mixed()
    relay1 = status.tunnels[0]
    out = replace(
        relay1.forwards[0],
        name="out",
        listen="127.0.0.1:2587",
        target="127.0.0.1:25",
        direction="local",
    )
    status = replace(status, tunnels=(replace(relay1, forwards=(*relay1.forwards, out)),))
    text = render(Dashboard(status, now=NOW), 100)
    assert "out (local)" in text and "127.0.0.1:2587 → 127.0.0.1:25" in text
    assert "smtp (local)" not in text


def test_a_dns_forward_shows_the_queries_it_refused() -> None:
    status = mixed()
    relay1 = status.tunnels[0]
    forwards = tuple(
        replace(f, refused_queries=12) if f.service == "dns" else f for f in relay1.forwards
    )
    text = render(
        Dashboard(replace(status, tunnels=(replace(relay1, forwards=forwards),)), now=NOW), 100
    )
    (line,) = [line for line in text.splitlines() if " dns " in line]
    assert "12 REFUSED" in line
    assert "REFUSED" not in render(Dashboard(mixed(), now=NOW), 100)  # none, nothing shown


def test_not_a_terminal_has_no_control_codes() -> None:
    out = io.StringIO()
    Console(file=out, width=100, force_terminal=False).print(Dashboard(mixed(), now=NOW))
    assert "\x1b" not in out.getvalue()


def test_unreachable_supervisor_notice_without_status() -> None:
    text = render(Dashboard(None, notice="no supervisor reachable on /x"), 80)
    assert text == "no supervisor reachable on /x\n"


@pytest.mark.parametrize(
    ("count", "text"),
    [
        (0, "0 B"),
        (1023, "1023 B"),
        (1024, "1.0 KiB"),
        (1_234_567, "1.2 MiB"),
        (5 * 2**40, "5.0 TiB"),
    ],
)
def test_human_bytes(count: int, text: str) -> None:
    assert human_bytes(count) == text


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (59.9, "59s"), (61, "1m01s"), (3 * 3600 + 5 * 60, "3h05m"), (90000, "1d01h")],
)
def test_human_duration(seconds: float, text: str) -> None:
    assert human_duration(seconds) == text


def test_log_panel_shows_the_newest_lines() -> None:
    buffer = LogBuffer(capacity=50)
    buffer.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger = logging.getLogger("tko.panel")
    logger.propagate = False
    logger.addHandler(buffer)
    logger.setLevel(logging.INFO)
    for i in range(60):
        logger.info("line %d", i)
    logger.warning("two\nlines")
    assert len(buffer.lines()) == 50
    text = render(Dashboard(mixed(), now=NOW, logs=buffer, log_lines=4), 80)
    assert "| INFO line 58" in text and "| INFO line 59" in text and "| WARNING two" in text
    assert "line 57" not in text
    logger.removeHandler(buffer)


def test_log_buffer_is_safe_across_threads() -> None:
    buffer = LogBuffer(capacity=100)
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "m", None, None)
    stop = threading.Event()

    def writer() -> None:
        while not stop.is_set():
            buffer.emit(record)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        deadline = time.monotonic() + 0.3
        while time.monotonic() < deadline:
            assert len(buffer.lines(10)) <= 10
    finally:
        stop.set()
        thread.join(5)


def test_logs_into_diverts_terminal_handlers_only(tmp_path: Path) -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    logger = logging.getLogger("tko.divert")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    tty = logging.StreamHandler(Tty())
    file = logging.FileHandler(tmp_path / "log")
    logger.addHandler(tty)
    logger.addHandler(file)
    buffer = LogBuffer()
    try:
        with logs_into(buffer, logger):
            logger.info("into the panel")
            assert tty not in logger.handlers and file in logger.handlers
        logger.info("after")
        assert buffer.lines()[0][1].endswith("INFO into the panel")
        assert tty.stream.getvalue() == "after\n"
        assert "into the panel" in (tmp_path / "log").read_text()
    finally:
        logger.removeHandler(tty)
        logger.removeHandler(file)
        file.close()


def test_live_dashboard_redraws_from_snapshots() -> None:
    out = io.StringIO()
    console = Console(file=out, width=100, color_system=None, force_terminal=True)
    calls: list[str] = []

    def get_status() -> SupervisorStatus:
        calls.append(threading.current_thread().name)
        return mixed()

    with LiveDashboard(get_status, console=console, refresh_per_second=20):
        until_blocking(lambda: len(calls) >= 3, 3, "three refreshes", interval=0.02)
    assert "DEGRADED" in out.getvalue() and "relay2" in out.getvalue()


async def test_show_takes_snapshots_on_the_event_loop() -> None:
    out = io.StringIO()
    console = Console(file=out, width=100, color_system=None, force_terminal=True)
    threads: list[threading.Thread] = []

    def get_status() -> SupervisorStatus:
        threads.append(threading.current_thread())
        return mixed()

    task = asyncio.create_task(show(get_status, console=console, refresh_per_second=20))
    await until(lambda: len(threads) >= 3, 5, "three snapshots taken")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert set(threads) == {threading.current_thread()}  # never rich's refresh thread
    assert "DEGRADED" in out.getvalue()


@pytest.mark.parametrize("width", [60, 72])
def test_very_narrow_terminals_keep_the_states(width: int) -> None:
    text = render(Dashboard(mixed(), now=NOW), width)
    assert all(len(line) <= width for line in text.splitlines())
    for state in ("failing", "refused", "pending", "backoff 13s"):
        assert state in text


def test_no_tunnels() -> None:
    from tunnelkeeper.state import SupervisorStatus

    empty = SupervisorStatus(pid=1, started=NOW, config="x")
    assert render(Dashboard(empty, now=NOW), 80).endswith("no tunnels configured\n")
