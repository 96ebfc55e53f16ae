"""Rich renderables over frozen status snapshots: the dashboard of `run`, `status` and `demo`.

view       Dashboard (header, table, problems) and the units it prints in
logpanel   LogBuffer, the handler that keeps the newest log lines, and LogPanel
live       LiveDashboard and show(): the view redrawn while the supervisor runs
"""

from __future__ import annotations

from .live import LiveDashboard, StatusSource, show
from .logpanel import LogBuffer, LogPanel, logs_into
from .view import Dashboard, Header, forward_label, human_bytes, human_duration

__all__ = [
    "Dashboard",
    "Header",
    "LiveDashboard",
    "LogBuffer",
    "LogPanel",
    "StatusSource",
    "forward_label",
    "human_bytes",
    "human_duration",
    "logs_into",
    "show",
]
