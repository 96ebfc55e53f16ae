"""The recent-events panel: history events (tunnel up/down, refused forwards, probes failing
and recovering, reloads) said for people, newest first."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo

from rich import box
from rich.console import Console, ConsoleOptions, RenderResult
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from ..history.store import Event
from ..peertext import escape, peer_text

# The kinds worth a line; `describe` drops the noise among them (see there).
KINDS = ("supervisor", "reload", "tunnel", "forward", "probe", "flush")
SHOWN = 10
DETAIL_MAX = 160


@dataclass(frozen=True)
class EventLine:
    at: float  # Unix seconds
    who: str  # "supervisor", a tunnel, or tunnel/forward
    what: str
    detail: str = ""  # escaped and capped: it may be text a peer chose
    style: str = ""


def describe(events: Iterable[Event]) -> list[EventLine]:
    """`events` (oldest first) as lines, oldest first. A tunnel's `connecting` is shown only
    when the connection broke (it follows `up`); a forward only when refused or back up from
    refused: a forward's other moves follow its tunnel's and would only repeat them."""
    lines: list[EventLine] = []
    tunnel_state: dict[str | None, str | None] = {}
    forward_state: dict[tuple[str | None, str | None], str | None] = {}
    for e in events:
        who = e.tunnel or "supervisor"
        detail = _detail(e)
        if e.kind == "supervisor":
            said = {"start": "started", "stop": "stopped"}.get(e.state or "", e.state or "")
            lines.append(EventLine(e.at, who, f"supervisor {said}", style="bold"))
        elif e.kind == "reload":
            lines.append(EventLine(e.at, who, "configuration reloaded", detail, "bold"))
        elif e.kind == "tunnel":
            before = tunnel_state.get(e.tunnel)
            tunnel_state[e.tunnel] = e.state
            if e.state == "up":
                lines.append(EventLine(e.at, who, "tunnel up", style="green"))
            elif e.state == "backoff" or (e.state == "connecting" and _broke(before, e)):
                lines.append(EventLine(e.at, who, "tunnel down", detail, "red"))
            elif e.state == "stopped":
                lines.append(EventLine(e.at, who, "tunnel stopped", style="dim"))
        elif e.kind == "forward":
            key = (e.tunnel, e.forward)
            before = forward_state.get(key)
            forward_state[key] = e.state
            who = f"{e.tunnel}/{e.forward}"
            if e.state == "refused":
                lines.append(EventLine(e.at, who, "forward refused", detail, "magenta"))
            elif e.state == "up" and before == "refused":
                lines.append(EventLine(e.at, who, "forward up", style="green"))
        elif e.kind == "flush":
            who = f"{e.tunnel}/{e.forward}"
            if e.state == "accepted":
                lines.append(EventLine(e.at, who, "held mail flushed (ETRN)", detail, "green"))
            else:
                lines.append(EventLine(e.at, who, "ETRN not accepted", detail, "yellow"))
        elif e.kind == "probe":
            who = f"{e.tunnel}/{e.forward}"
            if e.state == "failed":
                lines.append(EventLine(e.at, who, "probe failed", detail, "red"))
            else:
                lines.append(EventLine(e.at, who, "probe recovered", style="green"))
    return lines


def _broke(before: str | None, e: Event) -> bool:
    # The first event read may follow an `up` that was not read: its error kind tells.
    return before == "up" or (before is None and e.error_kind is not None)


def _detail(e: Event) -> str:
    kind = f"[{e.error_kind}] " if e.error_kind and e.kind == "tunnel" else ""
    # Escaped again here although the recorder saw escaped snapshots: the database is a file
    # anyone with write access to it could have filled.
    return escape(kind) + peer_text(e.reason, DETAIL_MAX) if e.reason or kind else ""


class EventsPanel:
    """The newest `shown` events, newest first, times in `tz` (local time when None)."""

    def __init__(
        self,
        lines: Sequence[EventLine],
        *,
        now: datetime,
        tz: tzinfo | None = None,
        shown: int = SHOWN,
    ) -> None:
        self.lines = lines
        self.now = now
        self.tz = tz
        self.shown = shown

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        grid = Table.grid(padding=(0, 1))
        grid.add_column(no_wrap=True)
        grid.add_column(no_wrap=True, overflow="ellipsis", max_width=24)
        grid.add_column(ratio=1)
        today = self.now.astimezone(self.tz).date()
        for line in list(reversed(self.lines))[: self.shown]:
            when = datetime.fromtimestamp(line.at, UTC).astimezone(self.tz)
            stamp = f"{when:%H:%M:%S}" if when.date() == today else f"{when:%m-%d %H:%M}"
            text = Text(line.what, style=line.style)
            if line.detail:
                text.append(": ")
                text.append(line.detail, style="dim")
            # Text objects throughout: a name or a reason is never read as markup.
            grid.add_row(Text(stamp, style="dim"), Text(escape(line.who)), text)
        if not grid.row_count:
            grid.add_row(Text("nothing yet", style="dim"), Text(""), Text(""))
        yield Panel(
            grid,
            title="recent events, newest first",
            title_align="left",
            box=box.ROUNDED if options.is_terminal else box.ASCII,
        )
