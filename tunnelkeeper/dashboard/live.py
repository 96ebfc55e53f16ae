"""The live dashboard: rich's `Live` redrawn from the newest snapshot until cancelled."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from types import TracebackType

from rich.console import Console, RenderableType
from rich.live import Live

from ..state import SupervisorStatus
from .logpanel import LogBuffer, logs_into
from .view import Dashboard

StatusSource = Callable[[], SupervisorStatus | None]


class LiveDashboard:
    """A rich `Live` view redrawn from `get_status()` a few times a second, while open.

    `get_status` and `get_notice` are called from rich's refresh thread: they must only hand
    back the current frozen snapshot (an attribute read), never touch live supervisor objects.
    """

    def __init__(
        self,
        get_status: StatusSource,
        *,
        console: Console | None = None,
        logs: LogBuffer | None = None,
        log_lines: int = 8,
        get_notice: Callable[[], str | None] | None = None,
        refresh_per_second: float = 2.0,
    ) -> None:
        self._get_status = get_status
        self._get_notice = get_notice
        self._logs = logs
        self._log_lines = log_lines
        self._live = Live(
            console=console,
            get_renderable=self.render,
            refresh_per_second=refresh_per_second,
            # Logging goes to the panel (logs_into); this catches stray writes to
            # sys.stdout/sys.stderr (warnings, libraries) and prints them above the view.
            redirect_stdout=True,
            redirect_stderr=True,
        )

    def render(self) -> RenderableType:
        notice = self._get_notice() if self._get_notice else None
        return Dashboard(
            self._get_status(), logs=self._logs, log_lines=self._log_lines, notice=notice
        )

    def refresh(self) -> None:
        """Redraw now, e.g. right after a new snapshot arrived."""
        self._live.refresh()

    def __enter__(self) -> LiveDashboard:
        self._live.start(refresh=True)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._live.stop()


async def show(
    get_status: StatusSource,
    *,
    console: Console | None = None,
    logs: LogBuffer | None = None,
    refresh_per_second: float = 2.0,
) -> None:
    """Show the live dashboard until cancelled; never returns on its own. While it shows,
    `logs` (if given) takes the root logger's terminal output (see `logs_into`).

    `get_status` is called here, on the event loop, at the refresh rate; rich's thread only
    ever sees the snapshot last taken, so `get_status` may read live supervisor state.
    """
    latest = get_status()
    with contextlib.ExitStack() as stack:
        if logs is not None:
            stack.enter_context(logs_into(logs))
        stack.enter_context(
            LiveDashboard(
                lambda: latest, console=console, logs=logs, refresh_per_second=refresh_per_second
            )
        )
        while True:
            await asyncio.sleep(1 / refresh_per_second)
            latest = get_status()
