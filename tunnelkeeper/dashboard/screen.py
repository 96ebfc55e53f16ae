"""The whole dashboard of one snapshot: header, tables, the last hour, recent events, log."""

from __future__ import annotations

from datetime import UTC, datetime, tzinfo

from rich.console import Console, ConsoleOptions, RenderableType, RenderResult
from rich.text import Text

from ..state import SupervisorStatus
from .events import SHOWN, EventsPanel
from .feed import Pictures
from .hour import HourPanel
from .logpanel import LogBuffer, LogPanel
from .view import Header, Tables

PICTURES_FROM = 100  # columns: narrower, the hour strip and sparkline are left out
MIN_LOG_LINES = 3
NARROW_EVENTS = 5  # events shown under PICTURES_FROM columns, where their lines wrap


class Dashboard:
    """The header with totals, a row per tunnel and per forward under it, what is wrong;
    with `pictures`, the last hour per forward (at PICTURES_FROM columns and wider) and the
    recent events; with `logs`, the log panel: `log_lines` high, or when None as high as the
    terminal leaves room for.

    `now` fixes the clock and `tz` the time zone of event times (tests; local time when
    None); `notice` is a line shown above the table, e.g. that the supervisor stopped
    answering.
    """

    def __init__(
        self,
        status: SupervisorStatus | None,
        *,
        now: datetime | None = None,
        logs: LogBuffer | None = None,
        log_lines: int | None = 8,
        notice: str | None = None,
        pictures: Pictures | None = None,
        tz: tzinfo | None = None,
    ) -> None:
        self.status = status
        self.now = now
        self.logs = logs
        self.log_lines = log_lines
        self.notice = notice
        self.pictures = pictures
        self.tz = tz

    def parts(self, width: int, now: datetime) -> list[RenderableType]:
        """Everything above the log panel, in order."""
        parts: list[RenderableType] = []
        status, pictures = self.status, self.pictures
        if status is not None:
            parts.append(Header(status, now=now))
        if self.notice:
            parts.append(Text(self.notice, style="bold yellow"))
        if status is not None:
            parts.append(Tables(status, now=now))
        if status is not None and status.forwards and pictures and width >= PICTURES_FROM:
            parts.append(HourPanel(status, pictures.trends, now=now.timestamp()))
        if pictures is not None and pictures.events_known:
            shown = SHOWN if width >= PICTURES_FROM else NARROW_EVENTS
            parts.append(EventsPanel(pictures.events, now=now, tz=self.tz, shown=shown))
        return parts

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        now = self.now or datetime.now(UTC)
        parts = self.parts(options.max_width, now)
        yield from parts
        if self.logs is None:
            return
        lines = self.log_lines
        if lines is None:
            # Fill the screen: what the parts above take, measured by rendering them.
            used = sum(len(console.render_lines(p, options, pad=False)) for p in parts)
            lines = max(MIN_LOG_LINES, options.size.height - used - 2)
        yield LogPanel(self.logs, lines=lines)
