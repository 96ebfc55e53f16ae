"""How tunnelkeeper lives: one keep-loop per tunnel in a TaskGroup, with backoff, reload on
SIGHUP, and a graceful stop (close the relay listeners, drain, exit) on SIGTERM/SIGINT.

    Supervisor.run(shutdown, reload)
      ├── ControlServer             `status` (the published snapshot), `check --mail` watches
      └── TaskGroup
          ├── _keep(tunnel) x N     tenacity.AsyncRetrying over run_once(), TunnelBackoff pauses
          ├── _reloads(reload)      SIGHUP: re-read the file, apply one change at a time
          ├── _publish()            a fresh frozen SupervisorStatus every PUBLISH_PERIOD
          ├── _service(s) x M       sd_notify, metrics, alerts, history, dashboard: readers
          └── (body)                waits for shutdown, drains, cancels the rest

The file reads in that order: run, keep, reload, stop, then what readers get.

Nothing a relay, a target or a bug in one task does ends the process: a keep-loop turns any
tunnelkeeper error into that tunnel's next backoff, and a service that fails on a bug is
restarted. Only a clean stop, or a service that cannot start at all (a metrics port in use),
ends run.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import tenacity

from .backoff import TunnelBackoff
from .checks import etrn, mailtest
from .config import Config, Tunnel, load
from .control import ControlServer
from .errors import ConfigError, ServiceCannotStart, TunnelkeeperError
from .forwarding.traffic import ForwardTraffic
from .publisher import Publisher, Service, ServiceContext
from .state import SupervisorStatus, utcnow
from .tunnel import Connector, TunnelRuntime

log = logging.getLogger(__name__)

PUBLISH_PERIOD = 0.5  # the dashboard refreshes twice a second; more is idle CPU for nothing
SERVICE_RESTART = 5.0  # seconds before a service that failed on a bug runs again


class Shutdown:
    """All that signal handlers touch: the first request is graceful, the second forces."""

    def __init__(self) -> None:
        self.requested = asyncio.Event()
        self.forced = asyncio.Event()

    def request(self) -> None:
        if self.requested.is_set():
            self.forced.set()
        self.requested.set()


class Supervisor:
    """Keeps every configured tunnel up until told to stop."""

    def __init__(
        self,
        config: Config,
        *,
        connector: Connector | None = None,
        services: Sequence[Service] = (),
    ) -> None:
        self.config = config
        self.pid = os.getpid()
        self.started = utcnow()
        self._connector = connector
        self._services = services
        self._tunnels: dict[str, TunnelRuntime] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._tg: asyncio.TaskGroup | None = None
        self._changing: asyncio.Task[None] | None = None  # the reload being applied
        self._stopping = False
        self.internal_errors = 0  # bugs in services and helpers (tunnels count their own)
        self.publisher = Publisher(self.snapshot)
        self.ready = asyncio.Event()  # every tunnel had its first attempt (sd_notify READY=1)
        self._context = ServiceContext(
            published=self.published,
            ready=self.ready,
            config=lambda: self.config,
            pid=self.pid,
            amending=self.publisher.amending,
        )

    # -- run ---------------------------------------------------------------------------------

    async def run(self, shutdown: Shutdown, reload: asyncio.Event | None = None) -> None:
        """Run until `shutdown` is requested, then stop gracefully.

        Raises AlreadyRunning/ControlError when the control socket cannot be taken, or the
        TunnelkeeperError of a service that cannot start (e.g. a metrics port in use).
        """
        try:
            await self._run(shutdown, reload)
        except BaseExceptionGroup as group:
            first = _only_our_errors(group)
            if first is None:
                raise
            raise first from group

    async def _run(self, shutdown: Shutdown, reload: asyncio.Event | None) -> None:
        watch = mailtest.watcher(self._traffic_of)
        async with ControlServer(self.config.control_socket, self.published, watch, self.flush):
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                for cfg in self.config.tunnel:
                    self._start(cfg)
                helpers = [tg.create_task(self._publish()), tg.create_task(self._mark_ready())]
                if reload is not None:
                    helpers.append(tg.create_task(self._reloads(reload)))
                helpers += [tg.create_task(self._service(s)) for s in self._services]
                await asyncio.sleep(0)  # let services start (the dashboard takes over the log)
                log.info(
                    "supervisor started (pid %d) with %d tunnel(s) from %s",
                    self.pid,
                    len(self._tunnels),
                    self.config.path,
                )
                await shutdown.requested.wait()
                self._stopping = True  # a reload still being applied starts nothing now
                if self._changing is not None:
                    self._changing.cancel()
                log.info(
                    "stopping: closing relay listeners, draining up to %gs",
                    self.config.supervisor.shutdown_grace,
                )
                await self._stop_tunnels(list(self._tunnels), shutdown.forced)
                for task in helpers:
                    task.cancel()
            self._tg = None
        log.info("supervisor stopped")

    # -- keep --------------------------------------------------------------------------------

    def _start(self, cfg: Tunnel) -> None:
        assert self._tg is not None
        if self._stopping:
            return
        old = self._tasks.get(cfg.name)
        if old is not None and not old.done():  # cannot happen: say so, and keep just one
            self._bug(f"starting tunnel {cfg.name}", RuntimeError("a second keep-loop"))
            old.cancel()
        tunnel = (
            TunnelRuntime(cfg) if self._connector is None else TunnelRuntime(cfg, self._connector)
        )
        self._tunnels[cfg.name] = tunnel
        self._tasks[cfg.name] = self._tg.create_task(self._keep(tunnel), name=cfg.name)

    async def _keep(self, tunnel: TunnelRuntime) -> None:
        """Keep one tunnel up for as long as it is configured: run a connection, back off by
        TunnelBackoff's rules, run the next. run_once raises only tunnelkeeper errors (a bug
        comes as InternalError); anything else is not retried and ends run, loudly."""
        backoff = TunnelBackoff(
            tunnel.cfg,
            up_for=lambda: tunnel.up_for,
            standby_ready=lambda: tunnel.standby_ready,
        )

        def backing_off(retry_state: tenacity.RetryCallState) -> None:
            self._backing_off(tunnel, backoff, retry_state)

        retrying = tenacity.AsyncRetrying(
            retry=tenacity.retry_if_exception_type(TunnelkeeperError),
            wait=backoff,
            before_sleep=backing_off,
        )
        await retrying(tunnel.run_once)

    def _backing_off(
        self, tunnel: TunnelRuntime, backoff: TunnelBackoff, retry_state: tenacity.RetryCallState
    ) -> None:
        delay = retry_state.next_action.sleep if retry_state.next_action else 0.0
        error = retry_state.outcome.exception() if retry_state.outcome else None
        tunnel.retrying_in(delay)
        kind = getattr(error, "error_kind", None)
        if backoff.restarted(retry_state):
            log.info(
                "tunnel %s: %s [%s]; retrying now (it had been up %.0fs)",
                tunnel.name,
                error,
                kind,
                tunnel.up_for or 0.0,
            )
            return
        log.log(
            logging.WARNING if delay else logging.INFO,
            "tunnel %s: %s [%s]; %s",
            tunnel.name,
            error,
            kind,
            f"retry #{backoff.retry_number(retry_state)} in {delay:.1f}s"
            if delay
            else "retrying now",
        )

    # -- reload ------------------------------------------------------------------------------

    async def _reloads(self, reload: asyncio.Event) -> None:
        while True:
            await reload.wait()
            reload.clear()
            try:
                new = load(self.config.path)
            except ConfigError as exc:
                log.error("reload refused, keeping the running configuration: %s", exc)
                continue
            try:
                self.reload(new)
            except Exception as exc:
                self._bug("reload", exc)

    async def flush(self, tunnel: str | None) -> list[dict[str, Any]]:
        """`tunnelkeeper flush`: ETRN over every tunnel's live connection (or `tunnel`'s) now;
        one JSON object per domain. Raises LookupError for a tunnel this supervisor has not."""
        if tunnel is not None and tunnel not in self._tunnels:
            raise LookupError(f"no tunnel {tunnel} here")
        names = [tunnel] if tunnel is not None else list(self._tunnels)
        done = await asyncio.gather(*(_flush(self._tunnels[n]) for n in names))
        return [
            {"tunnel": n, **a.to_json()} for n, got in zip(names, done, strict=True) for a in got
        ]

    def reload(self, new: Config) -> None:
        """Apply a re-read configuration: restart only tunnels whose settings changed."""
        if new.control_socket != self.config.control_socket:
            log.warning("reload: control_socket changes only take effect on restart")
        keep = {"log_level", "shutdown_grace", "control_socket"}  # applied, or said above
        if new.supervisor.model_dump(exclude=keep) != self.config.supervisor.model_dump(
            exclude=keep
        ):
            log.warning(
                "reload: [supervisor] changes to metrics, alert hooks or allow_root "
                "take effect on restart"
            )
        old = {t.name: t for t in self.config.tunnel}
        wanted = {t.name: t for t in new.tunnel}
        changed = [n for n in old if n not in wanted or wanted[n] != old[n]]
        added = [n for n in wanted if n not in old or n in changed]
        self.config = new
        _set_log_level(new.supervisor.log_level)
        if not changed and not added:
            log.info("reload: configuration unchanged")
            return
        log.info(
            "reload: restarting %s; starting %s",
            ", ".join(changed) or "none",
            ", ".join(added) or "none",
        )
        assert self._tg is not None
        # One change at a time: a reload that came while the last one was still draining
        # must not stop that one's tunnels twice, nor start a second keep-loop for a name.
        self._changing = self._tg.create_task(
            self._change(self._changing, changed, [wanted[n] for n in added])
        )

    async def _change(
        self,
        previous: asyncio.Task[None] | None,
        stop: list[str],
        start: list[Tunnel],
    ) -> None:
        if previous is not None:
            await asyncio.gather(previous, return_exceptions=True)
        await self._stop_tunnels(stop, asyncio.Event())  # new listeners need the old gone
        for cfg in start:
            self._start(cfg)

    # -- stop --------------------------------------------------------------------------------

    async def _stop_tunnels(self, names: list[str], forced: asyncio.Event) -> None:
        """Drain the named tunnels together (until grace ends or `forced`), then end them.
        Cancelled (a stop during a reload's drain), it leaves them to the stop's own drain."""
        grace = self.config.supervisor.shutdown_grace
        tunnels = [self._tunnels[n] for n in names if n in self._tunnels]
        drains = {t: asyncio.ensure_future(t.drain(grace, forced)) for t in tunnels}
        await asyncio.gather(*drains.values(), return_exceptions=True)
        for tunnel, drain in drains.items():
            if not drain.cancelled() and (exc := drain.exception()) is not None:
                tunnel.report_bug("its drain", exc)
        for name in names:
            task = self._tasks.pop(name, None)
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
            if name in self._tunnels:
                self._tunnels.pop(name).close()

    # -- what readers get --------------------------------------------------------------------

    def snapshot(self) -> SupervisorStatus:
        """A fresh frozen status, taken now, before the publisher's amendments: what `_publish`
        hands to `published()` readers. Call from the event loop's thread only."""
        return SupervisorStatus(
            pid=self.pid,
            started=self.started,
            config=str(self.config.path),
            tunnels=tuple(t.snapshot() for t in self._tunnels.values()),
            internal_errors=self.internal_errors,
        )

    def published(self) -> SupervisorStatus:
        """The last published status: what every reader gets (control socket, dashboard,
        sd_notify, metrics, alerts, history); safe from any thread. At most PUBLISH_PERIOD
        old."""
        return self.publisher.latest()

    def _traffic_of(self, tunnel: str, forward: str) -> ForwardTraffic | None:
        """The one live reading readers may ask for: check --mail's token watch."""
        runtime = self._tunnels.get(tunnel)
        found = (f for f in runtime.forwards if f.cfg.name == forward) if runtime else ()
        return next((f.traffic for f in found), None)

    async def _publish(self) -> None:
        while True:
            try:
                self.publisher.publish()
            except Exception as exc:  # readers keep the last good one
                self._bug("publishing the status", exc)
            await asyncio.sleep(PUBLISH_PERIOD)

    async def _mark_ready(self) -> None:
        for tunnel in list(self._tunnels.values()):
            await tunnel.attempted.wait()
        status = self.publisher.publish()  # READY=1's STATUS= says how the attempts ended
        self.ready.set()
        log.info("every tunnel had its first attempt: %s", status.summary())

    async def _service(self, service: Service) -> None:
        """Run a service; one that fails is logged, counted and started again. One that cannot
        start at all (a metrics port in use, its package missing) ends run."""
        while True:
            try:
                await service(self._context)
                return
            except (ServiceCannotStart, ConfigError):
                raise
            except Exception as exc:
                self._bug(f"service {getattr(service, '__name__', service)}", exc)
            await asyncio.sleep(SERVICE_RESTART)

    def _bug(self, what: str, exc: Exception) -> None:
        self.internal_errors += 1
        log.error("internal error in %s (a bug; it carries on): %s", what, exc, exc_info=exc)


async def serve(
    supervisor: Supervisor,
    stop_after: float | None = None,
    pending: Callable[[], Iterable[int]] = tuple,
) -> None:
    """Run `supervisor` under signals: TERM/INT stop (a second one forces), HUP reloads.
    `pending` gives the signals that came before these handlers were set: acted on at once."""
    loop = asyncio.get_running_loop()
    shutdown, reload = Shutdown(), asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, shutdown.request)
    loop.add_signal_handler(signal.SIGHUP, reload.set)
    for early in pending():
        (reload.set if early == signal.SIGHUP else shutdown.request)()
    timer = None if stop_after is None else loop.call_later(stop_after, shutdown.request)
    try:
        await supervisor.run(shutdown, reload)
    finally:
        if timer is not None:
            timer.cancel()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)


async def _flush(tunnel: TunnelRuntime) -> list[etrn.DomainFlush]:
    """ETRN over `tunnel`'s live connection, whatever the rate limit; recorded by its flushers."""
    conn = tunnel.conn if tunnel.state == "up" else None
    down = f"tunnel {tunnel.name} is {tunnel.state}: no connection to the relay"
    opener = None if conn is None else conn.open_stream
    return await etrn.flush_all(tunnel.flushers, opener, tunnel.cfg.relay_mta, down)


def _only_our_errors(group: BaseExceptionGroup[BaseException]) -> TunnelkeeperError | None:
    """The first error of a group made only of TunnelkeeperErrors (else None: a bug, be loud)."""
    leaves: list[BaseException] = []
    todo: list[BaseException] = [group]
    while todo:
        exc = todo.pop()
        if isinstance(exc, BaseExceptionGroup):
            todo.extend(exc.exceptions)
        else:
            leaves.append(exc)
    ours = [e for e in leaves if isinstance(e, TunnelkeeperError)]
    return ours[-1] if leaves and len(ours) == len(leaves) else None


def _set_log_level(level: str) -> None:
    logging.getLogger("tunnelkeeper").setLevel(level.upper())
