"""The live dashboard: rich's `Live` redrawn from the newest snapshot until cancelled."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from rich.console import Console, RenderableType
from rich.live import Live

from ..state import SupervisorStatus
from .feed import Feed, Pictures
from .logpanel import LogBuffer, logs_into
from .screen import Dashboard

StatusSource = Callable[[], SupervisorStatus | None]


class LiveDashboard:
    """A rich `Live` view redrawn from `get_status()` a few times a second, while open.

    `get_status`, `get_notice` and `get_pictures` are called from rich's refresh thread: they
    must only hand back the current frozen snapshot (an attribute read), never touch live
    supervisor objects. The log panel takes the rows left (or `log_lines` when given).
    """

    def __init__(
        self,
        get_status: StatusSource,
        *,
        console: Console | None = None,
        logs: LogBuffer | None = None,
        log_lines: int | None = None,
        get_notice: Callable[[], str | None] | None = None,
        get_pictures: Callable[[], Pictures | None] | None = None,
        refresh_per_second: float = 2.0,
    ) -> None:
        self._get_status = get_status
        self._get_notice = get_notice
        self._get_pictures = get_pictures
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
        pictures = self._get_pictures() if self._get_pictures else None
        return Dashboard(
            self._get_status(),
            logs=self._logs,
            log_lines=self._log_lines,
            notice=notice,
            pictures=pictures,
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
    history: Path | None = None,
) -> None:
    """Show the live dashboard until cancelled; never returns on its own. While it shows,
    `logs` (if given) takes the root logger's terminal output (see `logs_into`); `history`,
    the database the last hour and the recent events are also read from.

    `get_status` is called here, on the event loop, at the refresh rate; rich's thread only
    ever sees the snapshot last taken, so `get_status` may read live supervisor state.
    """
    latest = get_status()
    feed = Feed(history)
    await feed.reread(force=True)
    feed.observe(latest)
    with contextlib.ExitStack() as stack:
        if logs is not None:
            stack.enter_context(logs_into(logs))
        stack.enter_context(
            LiveDashboard(
                lambda: latest,
                console=console,
                logs=logs,
                get_pictures=lambda: feed.pictures,
                refresh_per_second=refresh_per_second,
            )
        )
        while True:
            await asyncio.sleep(1 / refresh_per_second)
            latest = get_status()
            feed.observe(latest)
            await feed.reread()
