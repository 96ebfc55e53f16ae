"""The dashboard's log panel: a thread-safe buffer of the newest log lines, and its view."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections import deque
from collections.abc import Iterator

from rich import box
from rich.console import Console, ConsoleOptions, RenderResult
from rich.panel import Panel
from rich.text import Text

from ..peertext import EscapingFormatter


class LogBuffer(logging.Handler):
    """Keeps the last `capacity` formatted log lines for the log panel; safe across threads,
    since records arrive on the event loop and rich's Live reads from its refresh thread."""

    def __init__(self, capacity: int = 200, level: int = logging.NOTSET) -> None:
        super().__init__(level)
        # The panel is narrow and the date is today: the time of day is enough.
        self.setFormatter(EscapingFormatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
        self._lines: deque[tuple[int, str]] = deque(maxlen=capacity)
        self._guard = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
        except Exception:  # logging's contract: a bad record must not kill the caller
            self.handleError(record)
            return
        with self._guard:
            for line in text.splitlines() or [""]:
                self._lines.append((record.levelno, line))

    def lines(self, last: int | None = None) -> list[tuple[int, str]]:
        """The newest `last` lines (all when None), oldest first, with their levels."""
        with self._guard:
            items = list(self._lines)
        return items if last is None else items[-last:] if last > 0 else []


@contextlib.contextmanager
def logs_into(buffer: LogBuffer, logger: logging.Logger | None = None) -> Iterator[LogBuffer]:
    """While open, send `logger`'s records (the root logger by default) to `buffer` instead of
    its handlers that write to a terminal, so log lines land in the panel and not over the table.
    Handlers writing to files stay."""
    logger = logger or logging.getLogger()
    diverted = [h for h in logger.handlers if _writes_to_terminal(h)]
    for handler in diverted:
        logger.removeHandler(handler)
    logger.addHandler(buffer)
    try:
        yield buffer
    finally:
        logger.removeHandler(buffer)
        for handler in diverted:
            logger.addHandler(handler)


def _writes_to_terminal(handler: logging.Handler) -> bool:
    if not isinstance(handler, logging.StreamHandler) or isinstance(handler, logging.FileHandler):
        return False
    isatty = getattr(handler.stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


LEVEL_STYLE = {logging.ERROR: "red", logging.WARNING: "yellow", logging.DEBUG: "dim"}


class LogPanel:
    """The newest log lines in a fixed-height panel, so the table above does not jump."""

    def __init__(self, buffer: LogBuffer, *, lines: int = 8) -> None:
        self.buffer = buffer
        self.height = lines

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        text = Text(no_wrap=True, overflow="ellipsis")
        entries = self.buffer.lines(self.height)
        for i, (level, line) in enumerate(entries):
            style = LEVEL_STYLE.get(level, "")
            if level >= logging.CRITICAL:
                style = "bold red"
            text.append(line, style=style)
            if i < len(entries) - 1:
                text.append("\n")
        yield Panel(
            text,
            title="log",
            title_align="left",
            height=self.height + 2,
            box=box.ROUNDED if options.is_terminal else box.ASCII,
        )
