"""The optional companions of a running supervisor: sd_notify, history, metrics, alert hooks,
dashboard.

Each is a `Service`: a coroutine given a `ServiceContext` (the published snapshot, the running
configuration, and a way to amend what is published), never the supervisor itself.
"""

from __future__ import annotations

from ..config import Config
from ..publisher import Service, ServiceContext


def standard(config: Config, *, dashboard: bool = False) -> list[Service]:
    """The services `run` and `demo` start for `config`."""
    services: list[Service] = [_notify]
    if config.supervisor.history:
        services.append(_history)
    if config.supervisor.metrics_listen is not None:
        services.append(_metrics)
    if config.supervisor.metrics_textfile is not None:
        services.append(_textfile)
    if config.supervisor.on_down or config.supervisor.on_up:
        services.append(_alerts)
    if dashboard:
        services.append(_dashboard)
    return services


async def _notify(ctx: ServiceContext) -> None:
    from . import notify

    await notify.serve(notify.Notifier.from_env(), ctx.published, ctx.ready)


async def _metrics(ctx: ServiceContext) -> None:
    from . import metrics

    listen = ctx.config().supervisor.metrics_listen
    assert listen is not None
    await metrics.serve(listen, ctx.published)


async def _textfile(ctx: ServiceContext) -> None:
    from . import metrics

    path = ctx.config().supervisor.metrics_textfile
    assert path is not None
    await metrics.write_textfile(path, ctx.published)


async def _history(ctx: ServiceContext) -> None:
    from ..history import service as history

    await history.record(ctx)


async def _alerts(ctx: ServiceContext) -> None:
    from . import alerts

    await alerts.watch(ctx.config().supervisor, ctx.published)


async def _dashboard(ctx: ServiceContext) -> None:
    from ..dashboard import LogBuffer, show

    settings = ctx.config().supervisor
    history = settings.history_file if settings.history else None
    await show(ctx.published, logs=LogBuffer(), history=history)
