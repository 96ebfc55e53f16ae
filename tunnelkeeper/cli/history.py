"""Outages and availability per forward, from the history database (supervisor running or not)."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from ..config import default_history_path, find_config, load
from ..errors import ConfigError
from ..history import report as history_report
from ..history.store import connect
from ..peertext import peer_text
from . import EXIT_OK, EXIT_USAGE, verb_parser

UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 7 * 86_400}
MAX_SPAN = 36_500 * 86_400.0  # history_days is at most this: nothing older is kept
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])$")

EPILOG = """\
An outage starts when a forward leaves `up` (or its probe fails while it is up) and ends when it
is up again and, with probes on, its next probe passed. Availability is the share of the
recorded time in each window without an outage; 100.00 only when there was none at all.
"""


def parse_duration(text: str) -> float:
    """`90m`, `24h`, `7d` (also `s` and `w`) in seconds."""
    match = _DURATION.match(text.strip())
    if not match or float(match[1]) <= 0:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a duration like 90m, 24h or 7d (units s, m, h, d, w)"
        )
    seconds = float(match[1]) * UNITS[match[2]]
    if seconds > MAX_SPAN:
        raise argparse.ArgumentTypeError(f"{text!r}: at most 36500d (history_days' own limit)")
    return seconds


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = verb_parser(subparsers, "history", run, __doc__, EPILOG)
    parser.add_argument(
        "--since",
        metavar="DURATION",
        type=parse_duration,
        default=parse_duration("7d"),
        help="list the outages of this last span, like 90m, 24h, 7d (default 7d)",
    )
    parser.add_argument("--tunnel", metavar="NAME", help="only this tunnel's forwards")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def database(explicit: str | None) -> tuple[Path, set[str]]:
    """The history database named by the configuration (else the default path), and the
    tunnels the configuration names.

    Raises ConfigError when a configuration is found (or named) but invalid, or turns
    history off."""
    try:
        path = find_config(explicit)
    except ConfigError:
        if explicit:
            raise
        return default_history_path(), set()
    config = load(path)
    if not config.supervisor.history:
        raise ConfigError("is false: no history is recorded", path=str(path), key="history")
    return config.supervisor.history_file, {t.name for t in config.tunnel}


def run(args: argparse.Namespace) -> int:
    path, configured = database(args.config)
    until = time.time()
    conn = connect(path, readonly=True)  # HistoryError (exit 1) when there is none yet
    try:
        known = configured | history_report.tunnels(conn)
        if args.tunnel is not None and args.tunnel not in known:
            print(
                f"tunnelkeeper: --tunnel {args.tunnel}: no such tunnel in the configuration "
                f"or in {path} (known: {', '.join(sorted(known)) or 'none yet'})",
                file=sys.stderr,
            )
            return EXIT_USAGE
        doc = history_report.report(conn, until - args.since, until, args.tunnel)
    finally:
        conn.close()
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        _print(doc, path)
    return EXIT_OK


def _local(value: str | None) -> str:
    if value is None:
        return "ongoing"
    return f"{datetime.fromisoformat(value).astimezone():%Y-%m-%d %H:%M:%S}"


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}%"


def _print(doc: dict[str, Any], path: Path) -> None:
    from rich import box
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from ..dashboard import human_duration
    from ..dashboard.view import PLAIN_HEAD

    tty = sys.stdout.isatty()
    console = Console(width=None if tty or "COLUMNS" in os.environ else 100, highlight=False)
    # A pipe, a mail or a log gets plain dashes under the header, like `status`.
    style = box.SIMPLE_HEAD if console.is_terminal else PLAIN_HEAD
    console.print(f"history from {path}, {_local(doc['since'])} to {_local(doc['until'])}")
    avail = Table(
        title="Availability", title_justify="left", box=style, show_edge=False, pad_edge=False
    )
    avail.add_column("Forward")
    for name in history_report.WINDOWS:
        avail.add_column(name, justify="right")
    avail.add_column("Recorded (30d)", justify="right")
    for row in doc["availability"]:
        avail.add_row(
            Text(f"{row['tunnel']}/{row['forward']}"),
            *(_percent(row[name]) for name in history_report.WINDOWS),
            human_duration(row["recorded_s"]["30d"]),
        )
    console.print(avail if doc["availability"] else "no forward recorded yet")
    for f in doc.get("flushes", []):
        verdict = "accepted" if f["ok"] else "FAILED"
        # Escaped: the database is a file anyone with write access to it could have filled.
        said = peer_text(f"{f['tunnel']}/{f['forward']}: ETRN {verdict}: {f['reply']}")
        console.print(Text(f"{_local(f['at'])} {said}"))
    if not doc["outages"]:
        console.print("no outages in this span")
        return
    outages = Table(
        title="Outages", title_justify="left", box=style, show_edge=False, pad_edge=False
    )
    for header in ("Start", "End", "Duration", "Forward", "Cause"):
        outages.add_column(header, no_wrap=header != "Cause")
    for o in doc["outages"]:
        cause = Text()
        # The first cause, then each later one with the time it took over.
        for n, c in enumerate(o.get("causes") or [o]):
            if n:
                cause.append(f"\nthen at {_local(c['at'])[11:]}: ")
            if c["error_kind"]:
                cause.append(f"[{c['error_kind']}] ", style="bold red")
            cause.append(c["reason"] or "")
        outages.add_row(
            _local(o["start"]),
            _local(o["end"]),
            _duration(o["duration_s"]),
            Text(f"{o['tunnel']}/{o['forward']}"),
            cause,
        )
    console.print(outages)


def _duration(seconds: float | None) -> str:
    from ..dashboard import human_duration

    if seconds is None:
        return "-"
    return f"{seconds:.1f}s" if seconds < 60 else human_duration(seconds)
