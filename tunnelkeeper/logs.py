"""Logging setup: one line per event on stderr, readable in a terminal and in journald."""

from __future__ import annotations

import logging
import os
import sys
from typing import TextIO

from .peertext import EscapingFormatter


def setup(
    level: str, stream: TextIO | None = None, handler: logging.Handler | None = None
) -> logging.Handler:
    """Route tunnelkeeper's logs to `handler` (default: a stream handler on stderr)."""
    if handler is None:
        handler = logging.StreamHandler(stream or sys.stderr)
        # journald stamps each line itself; a terminal reader wants the time.
        fmt = (
            "%(levelname)s %(message)s"
            if os.environ.get("JOURNAL_STREAM")
            else "%(asctime)s %(levelname)s %(message)s"
        )
        handler.setFormatter(EscapingFormatter(fmt, datefmt="%Y-%m-%d %H:%M:%S"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    logging.getLogger("tunnelkeeper").setLevel(level.upper())
    # asyncssh logs every channel at INFO; only its warnings belong in our log.
    logging.getLogger("asyncssh").setLevel(logging.DEBUG if level == "debug" else logging.WARNING)
    return handler
