"""The dashboard's header and its tunnel/forward table, with what is wrong."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

from rich import box
from rich.console import Console, ConsoleOptions, JustifyMethod, RenderResult
from rich.table import Table
from rich.text import Text

from ..state import ForwardStatus, SupervisorStatus, TunnelStatus

# much room, else the errors are listed under the table at full width.
ERROR_MIN = 30
GAP = 2  # columns are separated by the header rule's gap and one pad

TUNNEL_STYLE = {"up": "green", "connecting": "yellow", "backoff": "red", "stopped": "dim"}
FORWARD_STYLE = {
    "up": "green",
    "failing": "bold red",
    "pending": "yellow",
    "refused": "magenta",
    "down": "red",
}
STANDBY_STYLE = {"ready": "green", "connecting": "yellow", "off": "dim"}

# The header rule when the output is not a terminal (a pipe, a mail, a log): plain dashes.
PLAIN_HEAD = box.Box("    \n    \n -  \n    \n    \n    \n    \n    \n", ascii=True)


def human_bytes(count: int, *, short: bool = False) -> str:
    """`1234` -> `1.2 KiB` (or `1.2K` when short): binary units, one decimal above a KiB."""
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            if unit == "B":
                return f"{count}B" if short else f"{count} B"
            return f"{value:.1f}{unit[0]}" if short else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def human_duration(seconds: float) -> str:
    """`42s`, `3m12s`, `2h05m`, `3d04h`: two units at most, so a column stays narrow."""
    total = max(0, int(seconds))
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def _countdown(seconds: float) -> str:
    # Rounded up, so a pending retry never reads "0s".
    return human_duration(seconds + 0.999)


def _latency(ms: float) -> str:
    return f"{ms:.1f}ms" if ms < 1000 else f"{ms / 1000:.1f}s"


def _since(value: datetime | None, now: datetime) -> str:
    return "" if value is None else human_duration((now - value).total_seconds())


def forward_label(fwd: ForwardStatus) -> str:
    """The state a person should see: an `up` forward whose probe fails is `failing`."""
    return "failing" if fwd.failing else fwd.state


@dataclass(frozen=True)
class _Column:
    key: str
    header: str
    priority: int  # kept first when the width is short; 100 and up are never dropped
    justify: JustifyMethod = "left"


# In display order; the error column comes last so that it can take what width is left.
COLUMNS = (
    _Column("name", "Name", 100),
    _Column("state", "State", 100),
    _Column("route", "Relay / listen → target", 100),
    _Column("up", "Up", 60, "right"),
    _Column("avail", "Avail 24h", 90, "right"),  # availability over the last day (history)
    _Column("probe", "Probe", 100),
    _Column("conns", "Conns", 80, "right"),
    _Column("bytes", "In/out", 50, "right"),
    _Column("reconn", "Reconn", 40, "right"),
    _Column("cipher", "Cipher, standby", 30),
    _Column("error", "Last error", 70),
)


class Tables:
    """The tunnel/forward table of one snapshot, and what is wrong under it when the width
    leaves no room for an error column.

    Columns are kept by importance while they fit the width: at 80 columns the table keeps
    state, route and probe, and the errors go under it.
    """

    def __init__(self, status: SupervisorStatus, *, now: datetime | None = None) -> None:
        self.status = status
        self.now = now

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        now = self.now or datetime.now(UTC)
        if not self.status.tunnels:
            yield Text("no tunnels configured", style="dim")
            return
        table, errors_inline = _table(self.status, now, options)
        yield table
        problems = None if errors_inline else _problems(self.status, now)
        if problems is not None:
            yield problems


def _table(status: SupervisorStatus, now: datetime, options: ConsoleOptions) -> tuple[Table, bool]:
    """The tunnel/forward table and whether it carries the error column."""
    arrow = "->" if options.ascii_only else "→"
    rows: list[dict[str, Text]] = []
    for tunnel in status.tunnels:
        rows.append(_tunnel_cells(tunnel, now))
        rows.extend(_forward_cells(fwd, tunnel, now, arrow) for fwd in tunnel.forwards)
    columns = _fit(rows, options.max_width, arrow)
    table = Table(
        box=box.SIMPLE_HEAD if options.is_terminal else PLAIN_HEAD,
        show_edge=False,
        pad_edge=False,
        padding=(0, 1, 0, 0),
        header_style="bold",
    )
    for col in columns:
        header = col.header.replace("→", arrow)
        if col.key == "error":
            table.add_column(header, min_width=ERROR_MIN, ratio=1)
        elif col.key == "route":
            # Narrower than the mandatory columns: the route wraps at its spaces rather than
            # rich cutting the name and state to an ellipsis.
            table.add_column(header, min_width=16)
        else:
            table.add_column(header, justify=col.justify, no_wrap=True, overflow="ellipsis")
    if columns[-1].key == "error":
        table.expand = True
    for row in rows:
        table.add_row(*(row.get(col.key, Text("")) for col in columns))
    return table, any(col.key == "error" for col in columns)


def _fit(rows: list[dict[str, Text]], width: int, arrow: str) -> list[_Column]:
    """The columns to show: by priority, each one that still fits, in their display order."""
    natural = {
        col.key: max(
            [len(col.header.replace("→", arrow))]
            + [row[col.key].cell_len for row in rows if col.key in row]
        )
        for col in COLUMNS
    }
    has_errors = any(row.get("error") for row in rows)
    natural["error"] = ERROR_MIN
    chosen: set[str] = set()
    used = -GAP
    for col in sorted(COLUMNS, key=lambda c: -c.priority):
        if col.key == "error" and not has_errors:
            continue
        if (
            col.key == "cipher"
            and natural["cipher"] <= len(col.header)
            and not any(row.get("cipher") for row in rows)
        ):
            continue  # nothing to say: no tunnel reported a cipher or a standby
        if col.key == "avail" and not any(row.get("avail") for row in rows):
            continue  # no history recorded (or history off)
        need = natural[col.key] + GAP
        if col.priority >= 100 or used + need <= width:
            chosen.add(col.key)
            used += need
    return [col for col in COLUMNS if col.key in chosen]


def _tunnel_cells(tunnel: TunnelStatus, now: datetime) -> dict[str, Text]:
    state = Text(tunnel.state, style=TUNNEL_STYLE.get(tunnel.state, ""))
    retry = tunnel.next_retry_in(now)
    if retry is not None and tunnel.state in ("backoff", "connecting"):
        state.append(f" {_countdown(retry)}")
    cipher = Text((tunnel.cipher or "").removesuffix("@openssh.com"))
    if tunnel.standby != "off":
        cipher.append(", standby " if cipher else "standby ")
        cipher.append(tunnel.standby, style=STANDBY_STYLE[tunnel.standby])
    return {
        "name": Text(tunnel.name, style="bold"),
        "state": state,
        "route": Text(tunnel.relay),
        "up": Text(_since(tunnel.since, now) if tunnel.state == "up" else ""),
        "reconn": Text(str(max(tunnel.connects - 1, 0))),
        "cipher": cipher,
        "error": _tunnel_error(tunnel),
    }


def _forward_cells(
    fwd: ForwardStatus, tunnel: TunnelStatus, now: datetime, arrow: str
) -> dict[str, Text]:
    label = forward_label(fwd)
    reason = _forward_problem(fwd, tunnel)
    return {
        # A local forward runs the other way (this host listens, the relay side is the target).
        "name": Text(f"  {fwd.name}" + (" (local)" if fwd.direction == "local" else "")),
        "state": Text(label, style=FORWARD_STYLE.get(label, "")),
        "route": Text(f"{fwd.listen} {arrow} {fwd.target}"),
        "up": Text(_since(fwd.since, now) if fwd.state == "up" else ""),
        "avail": _availability(fwd.availability_24h),
        "probe": _probe_cell(fwd),
        "conns": _conns_cell(fwd),
        "bytes": Text(
            f"{human_bytes(fwd.bytes_in, short=True)}/{human_bytes(fwd.bytes_out, short=True)}"
        ),
        "error": Text(reason or "", style="red"),
    }


def _conns_cell(fwd: ForwardStatus) -> Text:
    text = Text(f"{fwd.connections_active}/{fwd.connections_total}")
    if fwd.refused_queries:  # a dns forward answered queries not for its zones itself
        text.append(f" {fwd.refused_queries} REFUSED", style="yellow")
    return text


def _availability(percent: float | None) -> Text:
    if percent is None:
        return Text("")
    style = "green" if percent >= 99.9 else "yellow" if percent >= 99 else "red"
    return Text(f"{percent:.2f}%", style=style)


def _probe_cell(fwd: ForwardStatus) -> Text:
    probe = fwd.probe
    if probe is None:
        return Text("-", style="dim")
    text = Text("ok" if probe.ok else "FAIL", style="green" if probe.ok else "bold red")
    if probe.latency_ms is not None:
        text.append(f" {_latency(probe.latency_ms)}")
    if probe.via == "local":
        text.append(" via local", style="yellow")
    return text


def _tunnel_error(tunnel: TunnelStatus) -> Text:
    text = Text()
    if tunnel.error_kind:
        text.append(f"[{tunnel.error_kind}] ", style="bold red")
    if tunnel.last_error:
        text.append(tunnel.last_error, style="red" if tunnel.state != "up" else "dim")
    return text


def _forward_problem(fwd: ForwardStatus, tunnel: TunnelStatus) -> str | None:
    # A forward that is down only because its tunnel is down says nothing new.
    if tunnel.state != "up" and not fwd.error:
        return None
    return fwd.reason()


def _problems(status: SupervisorStatus, now: datetime) -> Table | None:
    """What is wrong, a line each, for layouts too narrow for an error column."""
    grid = Table.grid(padding=(0, 1))
    grid.add_column(no_wrap=True)
    grid.add_column()
    for tunnel in status.tunnels:
        if tunnel.state != "up" and (tunnel.error_kind or tunnel.last_error):
            line = _tunnel_error(tunnel)
            retry = tunnel.next_retry_in(now)
            if retry is not None:
                line.append(f" (retry in {_countdown(retry)})")
            grid.add_row(Text(f"! {tunnel.name}:", style="bold red"), line)
        for fwd in tunnel.forwards:
            reason = _forward_problem(fwd, tunnel)
            if reason is not None:
                grid.add_row(
                    Text(f"! {tunnel.name}/{fwd.name}:", style="bold red"),
                    Text(reason, style="red"),
                )
    return grid if grid.row_count else None


class Header:
    """Totals over one snapshot: overall health, tunnels up, forwards healthy, traffic, uptime."""

    def __init__(self, status: SupervisorStatus, *, now: datetime | None = None) -> None:
        self.status = status
        self.now = now

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        status, now = self.status, self.now or datetime.now(UTC)
        forwards = status.forwards
        healthy, up = status.healthy, status.tunnels_up
        verdict, style = {
            0: ("ALL HEALTHY", "bold green"),
            1: ("DEGRADED", "bold yellow"),
            2: ("DOWN", "bold red"),
        }[status.exit_code()]
        first = Text()
        first.append(verdict, style=style)
        first.append(f"  tunnelkeeper pid {status.pid}, up ")
        first.append(human_duration((now - status.started).total_seconds()), style="bold")
        first.append(f"  {status.config}", style="dim")
        first.no_wrap, first.overflow = True, "ellipsis"
        active = sum(f.connections_active for f in forwards)
        total = sum(f.connections_total for f in forwards)
        bytes_in = human_bytes(sum(f.bytes_in for f in forwards))
        bytes_out = human_bytes(sum(f.bytes_out for f in forwards))
        parts = [
            _count(up, len(status.tunnels), "tunnels up"),
            _count(healthy, len(forwards), "forwards healthy"),
            Text(f"connections {active} active, {total} total"),
            Text(f"in {bytes_in}, out {bytes_out}"),
        ]
        yield first
        yield from _flow(parts, options.max_width)


def _flow(parts: list[Text], width: int, sep: str = "   ") -> Iterator[Text]:
    """Join `parts` into lines of at most `width` cells, breaking only between parts."""
    line = Text()
    for part in parts:
        if line and line.cell_len + len(sep) + part.cell_len > width:
            yield line
            line = Text()
        if line:
            line.append(sep)
        line.append_text(part)
    if line:
        yield line


def _count(good: int, total: int, what: str) -> Text:
    style = "green" if good == total and total else ("red" if not good else "yellow")
    text = Text(f"{good}/{total}", style=style)
    text.append(f" {what}")
    return text
