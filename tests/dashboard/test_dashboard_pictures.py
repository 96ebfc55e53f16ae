"""The dashboard's pictures: the last-hour strip, the latency sparkline, the recent events,
and the log panel filling the screen; from snapshots with a fixed clock, and from a real
history database."""

from __future__ import annotations

import io
import logging
import time
from dataclasses import replace
from datetime import UTC, timedelta, timezone
from pathlib import Path

import pytest
from rich.console import Console

from tests.dashboard.golden_text import check_golden, render
from tests.support.snapshots import NOW, RELAY1_UP, healthy, mixed, outage_run
from tunnelkeeper.dashboard import Dashboard, Feed, LogBuffer, Pictures, TrendBook
from tunnelkeeper.dashboard.events import describe
from tunnelkeeper.dashboard.hour import GLYPHS, sparkline, strip
from tunnelkeeper.dashboard.screen import MIN_LOG_LINES
from tunnelkeeper.dashboard.trend import MINUTES, minute_of
from tunnelkeeper.history.service import Recorder
from tunnelkeeper.history.store import Event, Writer
from tunnelkeeper.state import SupervisorStatus

T0 = NOW.timestamp()


def pictures_of_the_run() -> tuple[SupervisorStatus, Feed]:
    feed = Feed(None)
    status = mixed()
    for t, status in outage_run():
        feed.observe(status, t.timestamp())
    return status, feed


@pytest.mark.parametrize("width", [80, 100, 160])
def test_a_run_with_outages_matches_golden(width: int) -> None:
    status, feed = pictures_of_the_run()
    text = render(Dashboard(status, now=NOW, pictures=feed.pictures, tz=UTC), width)
    check_golden(f"outages-{width}.txt", text)
    assert all(len(line) <= width for line in text.splitlines())
    assert "recent events, newest first" in text and "probe recovered" in text
    if width >= 100:
        lines = [line for line in text.splitlines() if "relay1/dns " in line and "|" in line]
        strip_line = lines[0]
        for glyph in (GLYPHS["up"], GLYPHS["degraded"], GLYPHS["down"]):
            assert glyph in strip_line
        assert "× FAIL" in strip_line  # the newest probe failed: a cross in the sparkline
    else:
        assert "last hour" not in text and GLYPHS["up"] not in text


def test_run_with_outages_on_a_terminal_matches_golden() -> None:
    status, feed = pictures_of_the_run()
    text = render(Dashboard(status, now=NOW, pictures=feed.pictures, tz=UTC), 100, terminal=True)
    check_golden("outages-100-terminal.txt", text)


def test_minute_cells_from_snapshots() -> None:
    book = TrendBook()
    up = healthy()
    base = minute_of(T0) * 60.0
    book.observe(up, base + 1)
    failing = replace(
        up, tunnels=(replace(RELAY1_UP, forwards=(RELAY1_UP.forwards[0], mixed().forwards[1])),)
    )
    book.observe(failing, base + 61)  # next minute: dns degraded
    book.observe(up, base + 119)
    down = replace(up, tunnels=(replace(RELAY1_UP, state="backoff"),))
    book.observe(down, base + 125)  # a minute later: down a moment, then up again
    book.observe(up, base + 170)
    cells = book.trends()[("relay1", "dns")].cells(base + 170)
    assert len(cells) == MINUTES
    assert cells[-3:] == ["up", "degraded", "down"]  # a minute shows the worst it saw
    assert cells[:-3] == ["none"] * (MINUTES - 3)
    assert book.trends()[("relay1", "smtp")].cells(base + 170)[-3:] == ["up", "up", "down"]


def test_strip_is_bounded_and_starting_is_no_outage() -> None:
    book = TrendBook()
    pending = replace(
        healthy(),
        tunnels=(
            replace(
                RELAY1_UP,
                state="connecting",
                forwards=tuple(replace(f, state="pending") for f in RELAY1_UP.forwards),
            ),
        ),
    )
    book.observe(pending, T0 - 7200)
    assert book.trends()[("relay1", "smtp")].cells(T0 - 7200)[-1] == "none"
    for minute in range(200):  # more minutes than the strip holds
        book.observe(healthy(), T0 - 7200 + 60 * minute)
    assert len(book.trends()[("relay1", "smtp")].minutes) == MINUTES


def test_a_reconnect_between_snapshots_is_a_down_minute() -> None:
    book = TrendBook()
    first = healthy()
    book.observe(first, T0)
    again = replace(first, tunnels=(replace(RELAY1_UP, connects=RELAY1_UP.connects + 1),))
    book.observe(again, T0 + 0.5)
    assert book.trends()[("relay1", "smtp")].cells(T0 + 0.5)[-1] == "down"
    recorder = Recorder()
    events = recorder.observe(first, T0, lambda _: True)
    events += recorder.observe(again, T0 + 0.5, lambda _: True)
    kinds = [(e.kind, e.tunnel, e.forward, e.state) for e in events]
    assert ("tunnel", "relay1", None, "connecting") in kinds
    assert kinds.count(("tunnel", "relay1", None, "up")) == 2
    assert ("outage", "relay1", "smtp", "start") in kinds
    assert ("outage", "relay1", "smtp", "end") in kinds
    lines = [f"{line.who} {line.what}" for line in describe(events)]
    assert lines == ["relay1 tunnel up", "relay1 tunnel down", "relay1 tunnel up"]


def test_sparkline_scales_to_the_slowest_and_marks_failures() -> None:
    assert strip(["up", "degraded", "down", "none"]).plain == "█▒_·"
    assert strip(["up", "degraded", "down", "none"], ascii_only=True).plain == "#~_."
    line = sparkline([1.0, 2.0, None, 4.0, 0.0])
    assert line.plain == "▃▄×▇▁"
    assert "█" not in sparkline([5.0, 5.0]).plain  # the full block is the strip's "up"


def test_events_escape_peer_text_and_never_read_markup() -> None:
    hostile = "bye\x1b[2J\u202e[bold red]forged[/bold red]"
    events = [
        Event(T0 - 10, "tunnel", "relay1", state="up"),
        Event(T0, "tunnel", "relay1", state="backoff", error_kind="disconnected", reason=hostile),
    ]
    pictures = Pictures(events=tuple(describe(events)), events_known=True)
    text = render(Dashboard(None, now=NOW, pictures=pictures, tz=UTC), 120)
    assert "\x1b" not in text and "\u202e" not in text
    assert "bye\\x1b[2J\\u202e[bold red]forged[/bold red]" in text
    assert text.index("tunnel down") < text.index("tunnel up")  # newest first


def test_event_times_are_in_the_time_zone_asked() -> None:
    lines = describe([Event(T0, "supervisor", state="start")])
    pictures = Pictures(events=tuple(lines), events_known=True)
    text = render(Dashboard(None, now=NOW, pictures=pictures, tz=UTC), 100)
    assert "20:03:07 supervisor supervisor started" in " ".join(text.split())
    east = timezone(timedelta(hours=2))
    text = render(Dashboard(None, now=NOW, pictures=pictures, tz=east), 100)
    assert "22:03:07 supervisor" in text


async def test_the_past_hour_comes_from_the_history_database(tmp_path: Path) -> None:
    """A real database, written by the history's own writer from a run with an outage, read
    back as a dashboard starting later would: the strip shows the hour before it started."""
    path = tmp_path / "history.db"
    writer = Writer(path, pid=1, config="x")
    start = time.time() - 3000  # ended 20 minutes ago
    writer.start(start)
    recorder = Recorder()
    down = replace(healthy(), tunnels=(replace(RELAY1_UP, state="backoff", error_kind="timeout"),))
    for k in range(60):  # a snapshot every 30 s; down from minute 10 to 12
        at = start + 30 * k
        status = down if 20 <= k < 24 else healthy()
        for event in recorder.observe(status, at, lambda _: True):
            writer.record(event)
    writer.close(start + 30 * 60)
    feed = Feed(path)
    await feed.reread(force=True)
    cells = feed.pictures.trends[("relay1", "smtp")].cells(time.time())
    assert "down" in cells and "up" in cells
    first_down = cells.index("down")
    assert cells[first_down - 1] == "up"
    assert cells[-5:] == ["none"] * 5  # nothing recorded since that run ended
    whats = [line.what for line in feed.pictures.events]
    assert whats[-3:] == ["tunnel down", "tunnel up", "supervisor stopped"]
    assert whats[0] == "supervisor started"


async def test_no_database_is_no_error(tmp_path: Path) -> None:
    feed = Feed(tmp_path / "absent.db")
    await feed.reread(force=True)
    feed.observe(healthy(), T0)
    assert feed.pictures.events_known and ("relay1", "smtp") in feed.pictures.trends


@pytest.mark.parametrize("height", [30, 60])
def test_the_log_panel_fills_the_height(height: int) -> None:
    buffer = LogBuffer()
    logger = logging.getLogger("tko.fill")
    logger.propagate = False
    logger.addHandler(buffer)
    logger.setLevel(logging.INFO)
    try:
        for i in range(100):
            logger.info("line %d", i)
        status, feed = pictures_of_the_run()
        out = io.StringIO()
        console = Console(
            file=out, width=100, height=height, color_system=None, force_terminal=True
        )
        view = Dashboard(status, now=NOW, pictures=feed.pictures, logs=buffer, log_lines=None)
        console.print(view)
        lines = out.getvalue().splitlines()
        shown = [line for line in lines if " INFO line " in line]
        assert "line 99" in shown[-1]
        above = len(lines) - len(shown) - 2  # the panel's two borders
        if above + MIN_LOG_LINES + 2 <= height:
            assert len(lines) == height  # every row left goes to the log
        else:
            assert len(shown) == MIN_LOG_LINES  # no room: the log keeps a few lines anyway
    finally:
        logger.removeHandler(buffer)


def test_a_long_name_is_cut_short_not_the_strip() -> None:
    long = "a-tunnel-with-a-very-long-name-indeed"
    tunnel = replace(RELAY1_UP, name=long)
    status = replace(healthy(), tunnels=(tunnel,))
    book = TrendBook()
    book.observe(status, T0)
    pictures = Pictures(book.trends())
    text = render(Dashboard(status, now=NOW, pictures=pictures), 100)
    rows = [line for line in text.splitlines() if line.startswith("| a-tunnel")]
    assert len(rows) == 2 and all(len(row) <= 100 for row in rows)
    assert all("·" * 59 + "█" in row for row in rows)
    assert all("…" in row for row in rows)
