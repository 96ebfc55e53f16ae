"""Ask the running supervisor how its tunnels are: a table, --json, or a --watch dashboard."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from ..config import default_control_socket, find_config, load
from ..control import fetch_status
from ..errors import ConfigError, ControlError
from ..state import SupervisorStatus
from . import verb_parser

if TYPE_CHECKING:  # rich is imported only when something is shown
    from rich.console import Console

# Monitoring-plugin convention: 0 every forward up, 1 some down, 2 none up.
EXIT_UNREACHABLE = 3
WATCH_INTERVAL = 1.0  # seconds between polls of the control socket under --watch

EPILOG = """\
exit status: 0 every forward up, 1 some down (a failed probe counts as down), 2 none up,
3 no supervisor reachable, or a usage or configuration error (UNKNOWN).
--watch polls about once a second until Ctrl-C, then exits with the status of the last poll.
"""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = verb_parser(subparsers, "status", run, __doc__, EPILOG)
    shown = parser.add_mutually_exclusive_group()
    shown.add_argument("--json", action="store_true", help="print the status as JSON")
    shown.add_argument(
        "--watch", action="store_true", help="live dashboard, refreshed every second"
    )


def run(args: argparse.Namespace) -> int:
    try:
        path = control_socket(args.config)
    except ConfigError as exc:
        # A monitoring plugin says UNKNOWN (3) when it cannot even ask: 2 would read CRITICAL.
        print(f"tunnelkeeper: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    if args.watch:
        return _watch(path, _history(args.config))
    try:
        status = asyncio.run(fetch_status(path))
    except ControlError as exc:
        print(f"tunnelkeeper: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    if args.json:
        print(json.dumps(status.to_json(), indent=2))
    else:
        _print_table(status)
    return status.exit_code()


def control_socket(explicit: str | None) -> Path:
    """The supervisor's control socket: from the config when one is found, else the default.

    Raises ConfigError when a config is found (or named) but cannot be read.
    """
    try:
        path = find_config(explicit)
    except ConfigError:
        return default_control_socket()  # no config anywhere: a supervisor may still run
    return load(path).control_socket


def _console() -> Console:
    from rich.console import Console

    # A pipe or a file gets plain text; wider than rich's 80-column default so that the
    # table keeps its columns, unless COLUMNS says otherwise.
    tty = sys.stdout.isatty()
    return Console(width=None if tty or "COLUMNS" in os.environ else 100, highlight=False)


def _print_table(status: SupervisorStatus) -> None:
    from ..dashboard import Dashboard

    _console().print(Dashboard(status))


class _Watch:
    """The newest snapshot and what to say about it; rich's refresh thread reads these."""

    def __init__(self, path: Path, history: Path | None = None) -> None:
        self.path = path
        self.history = history
        self.status: SupervisorStatus | None = None
        self.notice: str | None = None
        self.code = EXIT_UNREACHABLE

    async def poll_once(self) -> None:
        try:
            status = await fetch_status(self.path, timeout=max(WATCH_INTERVAL, 2.0))
        except ControlError as exc:
            self.code = EXIT_UNREACHABLE
            self.notice = (
                f"{exc}; last known state below"
                if self.status
                else f"{exc}; waiting for it (Ctrl-C ends)"
            )
            return
        self.status, self.notice, self.code = status, None, status.exit_code()

    async def live(self, console: Console) -> None:
        from ..dashboard import Feed, LiveDashboard

        feed = Feed(self.history)  # the last hour and recent events, also from the history
        view = LiveDashboard(
            lambda: self.status,
            console=console,
            get_notice=lambda: self.notice,
            get_pictures=lambda: feed.pictures,
        )
        with view:
            while True:
                await self.poll_once()
                await feed.reread()
                feed.observe(self.status if self.notice is None else None)
                view.refresh()
                await asyncio.sleep(WATCH_INTERVAL)

    async def lines(self) -> None:
        """Not a terminal: a timestamped summary line whenever it changes."""
        last = None
        while True:
            await self.poll_once()
            line = self.notice or (self.status.summary() if self.status else "")
            if line != last:
                print(f"{datetime.now().astimezone():%Y-%m-%d %H:%M:%S} {line}", flush=True)
                last = line
            await asyncio.sleep(WATCH_INTERVAL)


def _history(explicit: str | None) -> Path | None:
    """The history database the supervisor records in, when the configuration keeps one."""
    from .history import database

    try:
        return database(explicit)[0]
    except ConfigError:
        return None


def _watch(path: Path, history: Path | None = None) -> int:
    watch = _Watch(path, history)
    console = _console()
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is the way to end --watch
        asyncio.run(watch.live(console) if console.is_terminal else watch.lines())
    return watch.code
