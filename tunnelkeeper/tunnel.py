"""One tunnel: its live state, and one connection's life (connect, forward, serve until it
ends). No retry here; the supervisor's keep-loop owns backoff."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

from . import config, probes, ssh
from .errors import ChannelDenied, ForwardRefused, TunnelError, TunnelkeeperError
from .forward import ForwardCounters, Splice
from .state import ForwardState, ForwardStatus, ProbeResult, TunnelState, TunnelStatus, utcnow

log = logging.getLogger(__name__)

Connector = Callable[[config.Tunnel], Awaitable[ssh.RelayConnection]]
TARGET_CONNECT_TIMEOUT = 10.0
PROBE_START_DELAY = 0.5  # let the relay settle a fresh listener before the first probe
SPARE_RETRY = 5.0
QUICK_RETRY = 0.05  # first retry of a refused listen; doubles up to forward_retry


class ForwardRuntime:
    """The live side of one forward: counters, state, last probe."""

    def __init__(self, cfg: config.Forward) -> None:
        self.cfg = cfg
        self.counters = ForwardCounters()
        self.state: ForwardState = "down"
        self.error: str | None = None
        self.since: datetime | None = None
        self.probe: ProbeResult | None = None
        self.local_probes = False  # the relay forbade probe channels; probe the target instead
        self.listener: ssh.Listener | None = None

    def set_state(self, state: ForwardState, error: str | None = None) -> None:
        if state != self.state:
            self.since = utcnow()
        self.state, self.error = state, error

    async def accept(self, _orig_host: str, _orig_port: int) -> Splice:
        """A connection arrived on the relay: open the local side. Raises TargetUnavailable."""
        splice = Splice(self.counters)
        try:
            await splice.connect_target(self.cfg.target, TARGET_CONNECT_TIMEOUT)
        except TunnelkeeperError as exc:
            log.warning("forward %s: %s", self.cfg.name, exc)
            raise
        return splice

    def snapshot(self) -> ForwardStatus:
        c = self.counters
        return ForwardStatus(
            name=self.cfg.name,
            service=self.cfg.service,
            listen=str(self.cfg.listen),
            target=str(self.cfg.target),
            state=self.state,
            connections_active=c.active,
            connections_total=c.total,
            bytes_in=c.bytes_in,
            bytes_out=c.bytes_out,
            probe=self.probe,
            error=self.error,
            since=self.since,
        )


class Tunnel:
    """One `[[tunnel]]`: state readers snapshot, and `run_once()` for one connection."""

    def __init__(self, cfg: config.Tunnel, connector: Connector = ssh.connect) -> None:
        self.cfg = cfg
        self._connect = connector
        self.forwards = [ForwardRuntime(f) for f in cfg.forward]
        self.state: TunnelState = "connecting"
        self.since: datetime | None = None
        self.connects = 0
        self.next_retry_at: datetime | None = None
        self.error_kind: str | None = None
        self.last_error: str | None = None
        self.cipher: str | None = None
        self.connected_at: float | None = None  # loop time the live connection came up
        self.attempted = asyncio.Event()  # set after the first attempt, whatever its outcome
        self._spare: ssh.RelayConnection | None = None
        self._spare_state: str = "off"
        self._draining = False

    @property
    def name(self) -> str:
        return self.cfg.name

    @property
    def spare_ready(self) -> bool:
        return self._spare is not None and not self._spare.is_closing

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
            standby="ready" if self.spare_ready else self._spare_state,  # type: ignore[arg-type]
            forwards=tuple(f.snapshot() for f in self.forwards),
        )

    def failed(self, error: TunnelkeeperError, retry_in: float | None) -> None:
        """Record why the last attempt ended and when the next one starts."""
        self.error_kind, self.last_error = error.error_kind, str(error)
        if retry_in is None:
            self.state, self.next_retry_at = "stopped", None
        else:
            self.state = "backoff"
            self.next_retry_at = datetime.now(UTC) + timedelta(seconds=retry_in)
        self.attempted.set()

    async def run_once(self) -> None:
        """Connect (or take the ready standby), hold every forward until the connection ends.

        Raises the TunnelError saying why it ended, or KeyFileError for an unusable key.
        """
        self.state, self.next_retry_at, self.connected_at = "connecting", None, None
        for fwd in self.forwards:
            fwd.set_state("pending")
        conn = self._take_spare()
        if conn is None:
            try:
                conn = await self._connect(self.cfg)
            except TunnelkeeperError:
                for fwd in self.forwards:
                    fwd.set_state("down", fwd.error)
                raise
        else:
            log.info("tunnel %s: moving forwards onto the standby connection", self.name)
        self.connects += 1
        self.connected_at = asyncio.get_running_loop().time()
        self.state, self.since, self.cipher = "up", utcnow(), conn.cipher
        self.error_kind = self.last_error = None
        self.attempted.set()
        log.info(
            "tunnel %s: connected to %s, host key %s verified, cipher %s",
            self.name,
            self.cfg.relay,
            conn.host_key,
            conn.cipher,
        )
        tasks = [asyncio.create_task(self._hold_forward(conn, f)) for f in self.forwards]
        if self.cfg.probe_interval > 0:
            tasks += [asyncio.create_task(self._probe_loop(conn, f)) for f in self.forwards]
        if self.cfg.standby:
            tasks.append(asyncio.create_task(self._keep_spare()))
        try:
            reason = await conn.wait_lost()
        finally:
            for task in tasks:
                task.cancel()
            results = await asyncio.gather(*tasks, return_exceptions=True)
            for fwd in self.forwards:
                fwd.listener = None
                fwd.set_state("down", fwd.error)
            conn.close()
            for result in results:
                if isinstance(result, Exception) and not isinstance(result, TunnelError):
                    raise result  # a bug in a forward or probe task: be loud
        log.warning("tunnel %s: connection lost: %s", self.name, reason)
        raise reason

    async def drain(self, grace: float) -> None:
        """Graceful stop: close the relay listeners, wait up to `grace` for open connections."""
        self._draining = True
        for fwd in self.forwards:
            if fwd.listener is not None:
                fwd.listener.close()
                fwd.listener = None
        active = sum(f.counters.active for f in self.forwards)
        if active:
            log.info(
                "tunnel %s: draining %d open connection(s), up to %gs", self.name, active, grace
            )
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(grace):
                    for fwd in self.forwards:
                        await fwd.counters.idle.wait()
        for fwd in self.forwards:
            fwd.counters.abort_all()

    def close(self) -> None:
        """Drop the standby connection (the live one closes with `run_once`)."""
        if self._spare is not None:
            self._spare.close()
            self._spare = None
        self.state, self.next_retry_at = "stopped", None
        for fwd in self.forwards:
            fwd.set_state("down", fwd.error)

    # -- forwards ----------------------------------------------------------------------------

    async def _hold_forward(self, conn: ssh.RelayConnection, fwd: ForwardRuntime) -> None:
        """Open the relay listener; while the relay refuses, retry soon, then every
        forward_retry."""
        refusals = 0
        while not self._draining:
            try:
                fwd.listener = await conn.listen(fwd.cfg.listen, fwd.accept)
            except ForwardRefused as exc:
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
            return

    def _refresh_forward_error(self) -> None:
        refused = [f for f in self.forwards if f.state == "refused"]
        if refused:
            self.error_kind = "forward-refused"
            self.last_error = "; ".join(f"{f.cfg.name}: {f.error}" for f in refused)
        elif self.error_kind == "forward-refused":
            self.error_kind = self.last_error = None

    async def _probe_loop(self, conn: ssh.RelayConnection, fwd: ForwardRuntime) -> None:
        await asyncio.sleep(PROBE_START_DELAY)
        while True:
            if fwd.state == "up":
                await self._probe(conn, fwd)
                await asyncio.sleep(self.cfg.probe_interval)
            else:
                await asyncio.sleep(min(self.cfg.forward_retry, self.cfg.probe_interval))

    async def _probe(self, conn: ssh.RelayConnection, fwd: ForwardRuntime) -> None:
        try:
            result = await probes.run_probe(
                fwd.cfg, conn.open_stream, self.cfg.probe_timeout, via_local=fwd.local_probes
            )
        except ChannelDenied as exc:
            log.warning(
                "tunnel %s: %s; probing %s's target directly instead (the relay "
                "side of the path is then unchecked)",
                self.name,
                exc,
                fwd.cfg.name,
            )
            fwd.local_probes = True
            result = await probes.run_probe(
                fwd.cfg, conn.open_stream, self.cfg.probe_timeout, via_local=True
            )
        previous = fwd.probe
        fwd.probe = result
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

    # -- standby -----------------------------------------------------------------------------

    def _take_spare(self) -> ssh.RelayConnection | None:
        spare, self._spare = self._spare, None
        if spare is not None and spare.is_closing:
            return None
        return spare

    async def _keep_spare(self) -> None:
        """Hold a second authenticated connection, ready to take the forwards over."""
        while True:
            if not self.spare_ready:
                self._spare_state = "connecting"
                try:
                    self._spare = await self._connect(self.cfg)
                except TunnelkeeperError as exc:
                    log.warning("tunnel %s: standby connection failed: %s", self.name, exc)
                    await asyncio.sleep(SPARE_RETRY)
                    continue
                log.info("tunnel %s: standby connection ready", self.name)
            assert self._spare is not None
            reason = await self._spare.wait_lost()
            log.warning("tunnel %s: standby connection lost: %s", self.name, reason)
            self._spare = None
