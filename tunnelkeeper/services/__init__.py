"""The optional companions of a running supervisor: sd_notify, history, metrics, alert hooks,
dashboard.

Each is a `Service`: a coroutine given the supervisor, reading only its frozen snapshots.
"""

from __future__ import annotations

from ..config import Config
from ..supervisor import Service, Supervisor


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


async def _notify(supervisor: Supervisor) -> None:
    from . import notify

    await notify.serve(notify.Notifier.from_env(), supervisor.published, supervisor.ready)


async def _metrics(supervisor: Supervisor) -> None:
    from . import metrics

    listen = supervisor.config.supervisor.metrics_listen
    assert listen is not None
    await metrics.serve(listen, supervisor.published)


async def _textfile(supervisor: Supervisor) -> None:
    from . import metrics

    path = supervisor.config.supervisor.metrics_textfile
    assert path is not None
    await metrics.write_textfile(path, supervisor.published)


async def _history(supervisor: Supervisor) -> None:
    from ..history import service as history

    await history.record(supervisor)


async def _alerts(supervisor: Supervisor) -> None:
    from . import alerts

    await alerts.watch(supervisor.config.supervisor, supervisor.published)


async def _dashboard(supervisor: Supervisor) -> None:
    from ..dashboard import LogBuffer, show

    settings = supervisor.config.supervisor
    history = settings.history_file if settings.history else None
    await show(supervisor.published, logs=LogBuffer(), history=history)
