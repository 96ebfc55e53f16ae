"""One tunnel: its live state, and one connection's life (connect, forward, serve until it
ends). No retry here; the supervisor's keep-loop owns backoff."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, Coroutine
from datetime import UTC, datetime, timedelta
from typing import Any

from . import config, ssh
from .checks import dnsnotify, etrn, probes
from .errors import ForwardRefused, InternalError, TunnelError, TunnelkeeperError
from .forwarding.inbound import ForwardRuntime
from .forwarding.outbound import LocalRuntime
from .standby import Standby
from .state import TunnelState, TunnelStatus, refused_summary, utcnow

log = logging.getLogger(__name__)

Connector = Callable[[config.Tunnel], Awaitable[ssh.RelayConnection]]
PROBE_START_DELAY = 0.5  # let the relay settle a fresh listener before the first probe
QUICK_RETRY = 0.05  # first retry of a refused listen; doubles up to forward_retry


class TunnelRuntime:
    """The live side of one `[[tunnel]]`: its state, and `run_once()` for one connection."""

    def __init__(self, cfg: config.Tunnel, connector: Connector | None = None) -> None:
        self.cfg = cfg
        self._connect = connector or ssh.connect
        self.forwards = [ForwardRuntime(f) for f in cfg.forward]
        self.locals = [LocalRuntime(lc) for lc in cfg.local]
        self.state: TunnelState = "connecting"
        self.since: datetime | None = None
        self.connects = 0
        self.next_retry_at: datetime | None = None
        self.error_kind: str | None = None
        self.last_error: str | None = None
        self.cipher: str | None = None
        self.connected_at: float | None = None  # loop time the live connection came up
        self.up_for: float | None = None  # seconds the last connection was up (None: never)
        self.relay_version: str | None = None
        self.internal_errors = 0
        self.attempted = asyncio.Event()  # set by _set_state: the first attempt had its outcome
        self.standby = Standby(cfg, self._connect)
        self._draining = False
        # Why a task of ours ended the live connection (None: no connection up).
        self._end_reason: asyncio.Future[TunnelkeeperError] | None = None
        self.conn: ssh.RelayConnection | None = None  # the live connection, while there is one
        self.flushers = etrn.flushers(self.name, cfg.forward)  # sent by itself where `etrn`
        self._side: set[asyncio.Task[None]] = set()  # ETRNs under way on the live connection

    @property
    def name(self) -> str:
        return self.cfg.name

    @property
    def forwarders(self) -> list[ForwardRuntime | LocalRuntime]:
        """The forwards, then the locals."""
        return [*self.forwards, *self.locals]

    @property
    def standby_ready(self) -> bool:
        return self.standby.ready

    def snapshot(self) -> TunnelStatus:
        return TunnelStatus(
            name=self.name,
            relay=self.cfg.relay,
            state=self.state,
            since=self.since,
            connects=self.connects,
            next_retry_at=self.next_retry_at,
            error_kind=self.error_kind,
            last_error=self.last_error,
            cipher=self.cipher,
            standby=self.standby.state,
            forwards=tuple(etrn.amend(f.snapshot(), self.flushers) for f in self.forwarders),
            relay_version=self.relay_version,
            internal_errors=self.internal_errors,
        )

    def report_bug(self, what: str, exc: BaseException) -> InternalError:
        """A bug ended one of this tunnel's tasks: log it once with its traceback, count it,
        and end the connection so the keep-loop restarts the tunnel through its backoff."""
        self.internal_errors += 1
        error = InternalError(f"internal error in {what}: {type(exc).__name__}: {exc}")
        log.error("tunnel %s: %s (a bug; the tunnel restarts)", self.name, error, exc_info=exc)
        error.__cause__ = exc
        self._end_connection(error)
        return error

    def _end_connection(self, error: TunnelkeeperError) -> None:
        """End the live connection from inside, saying why (the first reason wins)."""
        if self._end_reason is not None and not self._end_reason.done():
            self._end_reason.set_result(error)

    async def _task(self, what: str, body: Coroutine[Any, Any, None]) -> None:
        """Run one of the connection's tasks. A TunnelError means the connection is failing
        (it ends it, if the relay has not said so already); anything else is a bug."""
        try:
            await body
        except TunnelError as exc:
            self._end_connection(exc)
        except TunnelkeeperError as exc:
            self.report_bug(what, exc)  # our tasks handle their own errors: this one escaped
        except Exception as exc:
            self.report_bug(what, exc)

    def retrying_in(self, delay: float) -> None:
        """The keep-loop's one word to the tunnel: when the next attempt starts (shown in
        the status; the rules that chose `delay` are backoff.py's)."""
        self.next_retry_at = datetime.now(UTC) + timedelta(seconds=delay)

    async def run_once(self) -> None:
        """Connect (or take the ready standby), hold every forward until the connection ends,
        and record why it ended (error kind, reason, how long it was up).

        Raises the TunnelkeeperError saying why it ended: a TunnelError, KeyFileError for an
        unusable key, InternalError for a bug (never anything else).
        """
        if self._draining:  # stopping: no new connection; the stop cancels this wait
            await asyncio.get_running_loop().create_future()
        try:
            await self._run_once()
        except TunnelkeeperError as exc:
            self._record_end(exc)
            raise
        except Exception as exc:  # a bug in the tunnel itself: restart it, never die
            error = self.report_bug("the connection's life", exc)
            self._record_end(error)
            raise error from exc
        raise self._record_end(InternalError("run_once returned without an error"))

    def _record_end(self, error: TunnelkeeperError) -> TunnelkeeperError:
        """The connection (or the attempt) is over: keep why and how long it was up."""
        loop = asyncio.get_running_loop()
        self.up_for = None if self.connected_at is None else loop.time() - self.connected_at
        self.error_kind, self.last_error = error.error_kind, str(error)
        if isinstance(error, TunnelError) and error.relay_version is not None:
            self.relay_version = error.relay_version  # it said who it is, then failed: kept
        self._set_state("backoff")
        return error

    def _set_state(self, state: TunnelState) -> None:
        """Out of `connecting`, to up, backoff or stopped: an attempt has had its outcome.
        A draining tunnel stays `stopped`, whatever its last connection does."""
        if self.state == "up" and state != "up":
            self.since = utcnow()  # down since
        self.state, self.next_retry_at = ("stopped" if self._draining else state), None
        self.attempted.set()

    async def _run_once(self) -> None:
        self.state, self.next_retry_at, self.connected_at = "connecting", None, None
        for fwd in self.forwards:
            fwd.set_state("pending")
        for flusher in self.flushers.values():
            flusher.whole_again(False)
        conn = self.standby.take()
        if conn is None:
            try:
                conn = await self._connect(self.cfg)
            except TunnelkeeperError:
                self._forwards_down()
                raise
        else:
            log.info("tunnel %s: moving forwards onto the standby connection", self.name)
        self.connects += 1
        self.connected_at = asyncio.get_running_loop().time()
        self.cipher, self.relay_version = conn.cipher, conn.relay_version
        self.error_kind = self.last_error = None
        self._set_state("up")
        self.since = utcnow()
        log.info(
            "tunnel %s: connected to %s (%s), host key %s verified, cipher %s",
            self.name,
            self.cfg.relay,
            self.relay_version or "?",
            conn.host_key,
            conn.cipher,
        )
        self._end_reason = asyncio.get_running_loop().create_future()
        self.conn = conn
        for fwd in self.forwards:
            fwd.traffic.on_bug = functools.partial(self.report_bug, f"forward {fwd.cfg.name}")
        tasks = [
            self._spawn(f"forward {f.cfg.name}", self._hold_forward(conn, f)) for f in self.forwards
        ]
        tasks += [
            self._spawn(f"local {lc.cfg.name}", lc.hold(conn, self.name, self.cfg.forward_retry))
            for lc in self.locals
        ]
        if self.cfg.probe_interval > 0:
            tasks += [
                self._spawn(f"probe {f.cfg.name}", self._probe_loop(conn, f))
                for f in self.forwarders
            ]
        if self.cfg.standby:
            tasks.append(self._spawn("standby", self.standby.keep()))
        lost: asyncio.Future[TunnelkeeperError] = asyncio.ensure_future(conn.wait_lost())
        ended = self._end_reason  # kept: the finally clears the attribute
        try:
            await asyncio.wait([lost, ended], return_when=asyncio.FIRST_COMPLETED)
        finally:
            self.conn = None
            tasks += self._side
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._forwards_down()  # their listeners close with the connection
            for local in self.locals:
                local.close()
            conn.close()
            self._end_reason = None
            if not lost.done():
                lost.cancel()
        bug = ended.done() and isinstance(ended.result(), InternalError)
        reason = lost.result() if lost.done() and not bug else ended.result()
        if not isinstance(reason, InternalError):
            log.warning("tunnel %s: connection lost: %s", self.name, reason)
        raise reason

    def _spawn(self, what: str, body: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        return asyncio.create_task(self._task(what, body), name=f"{self.name}: {what}")

    async def drain(self, grace: float, forced: asyncio.Event) -> None:
        """Graceful stop: the tunnel is `stopped` at once (no probe, no new connection, no
        outage), its relay listeners close, and open connections get up to `grace` seconds
        (less if `forced` is set) before those left are closed. Cancelled, it closes nothing:
        the stop that cancelled it drains the tunnel itself."""
        self._draining = True
        self._set_state("stopped")
        for fwd in self.forwards:
            if fwd.listener is not None:
                fwd.listener.close()
        self._forwards_down("stopping")
        if active := sum(f.traffic.active for f in self.forwards):
            log.info(
                "tunnel %s: draining %d open connection(s), up to %gs", self.name, active, grace
            )
            idle: asyncio.Future[Any] = asyncio.gather(
                *(f.traffic.idle.wait() for f in self.forwards)
            )
            force: asyncio.Future[Any] = asyncio.ensure_future(forced.wait())
            try:
                await asyncio.wait(
                    [idle, force], timeout=grace, return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                idle.cancel()
                force.cancel()
        if left := sum(f.traffic.active for f in self.forwards):
            why = "stop forced" if forced.is_set() else f"grace of {grace:g}s over"
            log.warning("tunnel %s: %s: closing %d open connection(s) now", self.name, why, left)
        for fwd in self.forwards:
            fwd.traffic.abort_all()

    def close(self) -> None:
        """Drop the standby connection (the live one closes with `run_once`)."""
        self.standby.close()
        self._set_state("stopped")  # stopped before a first attempt: READY=1 must not wait for it
        self._forwards_down()

    def _forwards_down(self, error: str | None = None) -> None:
        """Every forward down, with `error` or else its own last one; listeners let go of."""
        for fwd in self.forwards:
            fwd.listener = None
            fwd.set_state("down", fwd.error if error is None else error)

    # -- forwards ----------------------------------------------------------------------------

    async def _hold_forward(self, conn: ssh.RelayConnection, fwd: ForwardRuntime) -> None:
        """Open the relay listener; while the relay refuses, retry soon, then every
        forward_retry."""
        refusals = 0
        fwd.relay_address = conn.relay_address
        while not self._draining:
            try:
                listener = await conn.listen(
                    fwd.cfg.listen,
                    fwd.accept,
                    on_bug=functools.partial(self.report_bug, f"forward {fwd.cfg.name}"),
                )
            except ForwardRefused as exc:
                if self._draining:
                    return
                refusals += 1
                if refusals == 1:
                    log.warning(
                        "tunnel %s: forward %s refused: %s (port held by a stale "
                        "session or not permitted); retrying every %gs",
                        self.name,
                        fwd.cfg.name,
                        exc,
                        self.cfg.forward_retry,
                    )
                fwd.set_state("refused", f"{exc} (retry #{refusals})")
                self._refresh_forward_error()
                # A refusal often lasts a moment only: a killed relay session drops its
                # connection a little before its listener, so the move onto the standby (or
                # a fast reconnect) can ask while the port is still held.
                await asyncio.sleep(min(self.cfg.forward_retry, QUICK_RETRY * 2 ** (refusals - 1)))
                continue
            if self._draining:  # the stop came while the relay was answering
                listener.close()
                return
            fwd.listener = listener
            fwd.set_state("up")
            self._refresh_forward_error()
            log.info(
                "tunnel %s: forward %s up: relay %s -> %s%s",
                self.name,
                fwd.cfg.name,
                fwd.cfg.listen,
                fwd.cfg.target,
                f" after {refusals} refusal(s)" if refusals else "",
            )
            if self.cfg.probe_interval <= 0:  # no probe to wait for: whole once up
                self._whole(conn, fwd, True, recovered=False)
            return

    def _refresh_forward_error(self) -> None:
        refused = refused_summary(f.snapshot() for f in self.forwards)
        if refused:
            self.error_kind, self.last_error = "forward-refused", refused
        elif self.error_kind == "forward-refused":
            self.error_kind = self.last_error = None

    async def _probe_loop(
        self, conn: ssh.RelayConnection, fwd: ForwardRuntime | LocalRuntime
    ) -> None:
        await asyncio.sleep(PROBE_START_DELAY)
        while True:
            if fwd.state == "up" and not self._draining:
                await self._probe(conn, fwd)
                await asyncio.sleep(self.cfg.probe_interval)
            else:
                await asyncio.sleep(min(self.cfg.forward_retry, self.cfg.probe_interval))

    async def _probe(self, conn: ssh.RelayConnection, fwd: ForwardRuntime | LocalRuntime) -> None:
        local_probes = isinstance(fwd, ForwardRuntime) and fwd.local_probes
        result, denied = await probes.probe_with_fallback(
            fwd.cfg, conn.open_stream, self.cfg.probe_timeout, via_local=local_probes
        )
        if denied is not None and isinstance(fwd, ForwardRuntime):
            log.warning(
                "tunnel %s: %s; probing %s's target directly instead (the relay "
                "side of the path is then unchecked)",
                self.name,
                denied,
                fwd.cfg.name,
            )
            fwd.local_probes = True
        if self._draining:  # the listener closed under it: no verdict on the path
            return
        previous = fwd.probe
        fwd.probe = result
        if isinstance(fwd, ForwardRuntime):
            recovered = previous is not None and not previous.ok
            self._whole(conn, fwd, result.ok and fwd.state == "up", recovered)
        if previous is None or previous.ok != result.ok:
            level = logging.INFO if result.ok else logging.WARNING
            log.log(
                level,
                "tunnel %s: probe %s %s via %s: %s",
                self.name,
                fwd.cfg.name,
                "ok" if result.ok else "FAILED",
                result.via,
                result.detail,
            )
        if result.ok and isinstance(fwd, ForwardRuntime) and fwd.cfg.notify is not None:
            await dnsnotify.notify_changes(
                conn.open_stream, fwd.cfg, fwd.notified, self.cfg.probe_timeout, self.name
            )

    def _whole(
        self, conn: ssh.RelayConnection, fwd: ForwardRuntime, whole: bool, recovered: bool
    ) -> None:
        """Whether `fwd` is whole (up and, with probes on, its probe through); when it has
        just become so and its `etrn` is on, ETRN its domains in a task of its own."""
        flusher = self.flushers.get(fwd.cfg.name)
        if flusher is None or not flusher.whole_again(whole) or not fwd.cfg.flushes:
            return
        why = (
            "probe recovered" if recovered else "at start" if self.connects == 1 else "reconnected"
        )
        work = flusher.whole(conn.open_stream, self.cfg.relay_mta, why)
        task = self._spawn(f"etrn {fwd.cfg.name}", work)
        self._side.add(task)
        task.add_done_callback(self._side.discard)
