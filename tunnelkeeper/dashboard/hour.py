"""The last-hour panel: per forward, a strip of minute cells and a probe-latency sparkline."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from rich import box
from rich.console import Console, ConsoleOptions, RenderResult
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from ..state import SupervisorStatus
from .trend import MINUTES, Cell, ForwardTrend, Key

# Told apart by shape, not only colour, so that a text capture (a mail, a pasted screen)
# still shows which minutes were up, degraded (up, probe failing) and down.
GLYPHS: dict[Cell, str] = {"up": "█", "degraded": "▒", "down": "_", "none": "·"}
ASCII_GLYPHS: dict[Cell, str] = {"up": "#", "degraded": "~", "down": "_", "none": "."}
CELL_STYLE: dict[Cell, str] = {"up": "green", "degraded": "yellow", "down": "red", "none": "dim"}
CELL_WORD: dict[Cell, str] = {
    "up": "up",
    "degraded": "degraded (last probe failed)",
    "down": "down",
    "none": "not seen",
}
# No full block: that is the strip's "up", and the two sit side by side.
BARS = "▁▂▃▄▅▆▇"
ASCII_BARS = ".,:-=+*"
FAILED, ASCII_FAILED = "×", "x"
MIN_SPARK = 4  # narrower than this the sparkline says nothing: left out


def strip(cells: Sequence[Cell], *, ascii_only: bool = False) -> Text:
    """One glyph per minute, oldest left."""
    glyphs = ASCII_GLYPHS if ascii_only else GLYPHS
    text = Text(no_wrap=True)
    for cell in cells:
        text.append(glyphs[cell], style=CELL_STYLE[cell])
    return text


def sparkline(latencies: Sequence[float | None], *, ascii_only: bool = False) -> Text:
    """A bar per probe, scaled to the slowest one shown; a failed probe is a cross."""
    bars, failed = (ASCII_BARS, ASCII_FAILED) if ascii_only else (BARS, FAILED)
    top = max((v for v in latencies if v is not None), default=0.0)
    text = Text(no_wrap=True)
    for value in latencies:
        if value is None:
            text.append(failed, style="bold red")
            continue
        level = 0 if top <= 0 else min(len(bars) - 1, round(value / top * (len(bars) - 1)))
        text.append(bars[level], style="cyan")
    return text


def legend(*, ascii_only: bool = False) -> Text:
    glyphs = ASCII_GLYPHS if ascii_only else GLYPHS
    text = Text("last hour, a cell a minute: ")
    cells: tuple[Cell, ...] = ("up", "degraded", "down", "none")
    for i, cell in enumerate(cells):
        if i:
            text.append("  ")
        text.append(glyphs[cell], style=CELL_STYLE[cell])
        text.append(f" {CELL_WORD[cell]}")
    return text


class HourPanel:
    """A row per forward of `status`: name, the hour strip, the newest probe latencies."""

    def __init__(
        self, status: SupervisorStatus, trends: Mapping[Key, ForwardTrend], *, now: float
    ) -> None:
        self.status = status
        self.trends = trends
        self.now = now

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        ascii_only = options.ascii_only
        keys = [(t.name, f.name) for t in self.status.tunnels for f in t.forwards]
        names = [f"{t}/{f}" for t, f in keys]
        # Panel border and padding take 4 columns; the grid pads 2 between columns. A long
        # name is cut short rather than the strip.
        name_room = max(8, options.max_width - 4 - 2 - MINUTES)
        width = min(name_room, max(len(n) for n in names))
        room = options.max_width - 4 - width - 2 - MINUTES - 2
        grid = Table.grid(padding=(0, 2))
        grid.add_column(no_wrap=True, overflow="ellipsis", max_width=name_room)
        grid.add_column(no_wrap=True, min_width=MINUTES)
        if room >= MIN_SPARK:
            grid.add_column(no_wrap=True, overflow="ellipsis")
        for key, name in zip(keys, names, strict=True):
            trend = self.trends.get(key, ForwardTrend(key))
            row = [Text(name), strip(trend.cells(self.now), ascii_only=ascii_only)]
            if room >= MIN_SPARK:
                row.append(_latency(trend.latencies, room, ascii_only))
            grid.add_row(*row)
        yield Panel(
            grid,
            title=legend(ascii_only=ascii_only),
            title_align="left",
            box=box.ROUNDED if options.is_terminal else box.ASCII,
        )


def _latency(latencies: Sequence[float | None], room: int, ascii_only: bool) -> Text:
    """The sparkline of as many newest probes as fit beside the newest latency."""
    if not latencies:
        return Text("no probe yet", style="dim")
    newest = latencies[-1]
    label = "FAIL" if newest is None else _ms(newest)
    count = max(0, min(len(latencies), room - len(label) - 1))
    text = sparkline(latencies[len(latencies) - count :], ascii_only=ascii_only)
    text.append(f" {label}", style="bold red" if newest is None else "")
    return text


def _ms(value: float) -> str:
    return f"{value:.1f}ms" if value < 1000 else f"{value / 1000:.1f}s"
