"""The live dashboard of `tunnelkeeper demo` in a real terminal (tmux, 100x40): the tables,
the last-hour strip, the recent events and the log panel, read back with capture-pane."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import need
from tests.support.tmux import Tmux
from tunnelkeeper.dashboard.hour import GLYPHS

REPO = Path(__file__).parents[2]
WIDTH, HEIGHT = 100, 40


@pytest.fixture
def demo_screen() -> Iterator[Tmux]:
    need("tmux")
    server = Tmux(shutil.which("tmux") or "tmux")
    env = {**os.environ, "PYTHONPATH": str(REPO), "TERM": "xterm-256color"}
    env.pop("COLUMNS", None)
    env.pop("LINES", None)
    command = f"{sys.executable} -m tunnelkeeper demo; echo EXIT=$?; sleep 60"
    size = ["-x", str(WIDTH), "-y", str(HEIGHT)]
    subprocess.run(
        [*server.base, "new-session", "-d", "-s", "watch", *size, command],
        env=env,
        cwd=REPO,
        timeout=10,
        check=True,
    )
    try:
        yield server
        server("send-keys", "-t", "watch", "C-c")
        screen = server.wait_for("EXIT=", within=15)
        assert "Traceback" not in screen
    finally:
        server.kill()


def strip_rows(screen: str) -> list[str]:
    """The strip of each forward's row in the last-hour panel."""
    cells = re.escape("".join(GLYPHS.values()))
    return re.findall(rf"demo-relay/\w+\s+([{cells}]{{60}})", screen)


def check_layout(screen: str) -> None:
    lines = screen.splitlines()
    assert len(lines) <= HEIGHT and all(len(line) <= WIDTH for line in lines)
    assert "demo-relay" in screen and "Relay / listen → target" in screen  # the tables
    assert "last hour, a cell a minute" in screen
    rows = strip_rows(screen)
    assert len(rows) == 2  # smtp and dns
    assert all(row.endswith(GLYPHS["up"]) for row in rows)
    assert "recent events, newest first" in screen and "supervisor started" in screen
    log_lines = [line for line in lines if re.match(r"│ \d\d:\d\d:\d\d (INFO|WARNING) ", line)]
    assert log_lines, screen
    assert lines[-1].startswith("╰") and len(lines) == HEIGHT  # the log panel reaches the bottom


def test_the_live_screen_shows_the_pictures(demo_screen: Tmux) -> None:
    screen = demo_screen.wait_for("tunnel up", within=20)
    screen = demo_screen.wait_for("ok ", within=15)  # a probe ran: its latency is drawn
    check_layout(screen)
    assert "probe ok via relay" in screen or "INFO" in screen


def wait_until(server: Tmux, good: Callable[[str], bool], within: float) -> str:
    return server.wait_until(good, within, getattr(good, "__name__", "the picture"))


def dns_degraded(screen: str) -> bool:
    row = re.search(r"demo-relay/dns\s+(\S{60})", screen)
    return row is not None and GLYPHS["degraded"] in row.group(1)


@pytest.mark.slow
@pytest.mark.timeout(360)
def test_the_live_screen_after_the_demo_broke_things(demo_screen: Tmux) -> None:
    """The demo cuts the relay connection every 20 s, three times, then makes its name server
    fail for two minutes: the events and the strip say so, each with its own glyph."""
    screen = demo_screen.wait_for("tunnel down", within=45)
    rows = strip_rows(screen)
    assert rows and all(GLYPHS["down"] in row for row in rows), screen
    demo_screen.wait_for("demo-relay/dns probe failed", within=90)
    screen = wait_until(demo_screen, dns_degraded, within=150)
    smtp = re.search(r"demo-relay/smtp\s+(\S{60})", screen)
    assert smtp is not None and GLYPHS["degraded"] not in smtp.group(1)  # its probe passed
    if os.environ.get("TUNNELKEEPER_SCREEN_DUMP"):
        Path(os.environ["TUNNELKEEPER_SCREEN_DUMP"]).write_text(screen)
