"""Rich renderables over frozen status snapshots: the dashboard of `run`, `status` and `demo`.

screen     Dashboard: the parts below, stacked, the log panel filling the screen
view       Header, Tables (tunnels, forwards, what is wrong) and the units they print in
trend      TrendBook: per forward, the last hour in minute cells and the probe latencies
hour       HourPanel: those as a strip (█ up, ▒ degraded, _ down, · not seen) and sparkline
events     EventsPanel: the recent history events said for people, newest first
feed       Feed: snapshots and the history database turned into frozen Pictures
logpanel   LogBuffer, the handler that keeps the newest log lines, and LogPanel
live       LiveDashboard and show(): the view redrawn while the supervisor runs
"""

from __future__ import annotations

from .feed import Feed, Pictures
from .live import LiveDashboard, StatusSource, show
from .logpanel import LogBuffer, LogPanel, logs_into
from .screen import Dashboard
from .trend import TrendBook
from .view import Header, Tables, forward_label, human_bytes, human_duration

__all__ = [
    "Dashboard",
    "Feed",
    "Header",
    "LiveDashboard",
    "LogBuffer",
    "LogPanel",
    "Pictures",
    "StatusSource",
    "Tables",
    "TrendBook",
    "forward_label",
    "human_bytes",
    "human_duration",
    "logs_into",
    "show",
]
