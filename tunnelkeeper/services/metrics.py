"""Prometheus metrics, read from the status snapshot: served at scrape time (metrics_listen) or
written for node_exporter's textfile collector (metrics_textfile); off unless one is set."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, get_args

from ..config import Endpoint
from ..errors import ConfigError, ServiceCannotStart
from ..state import SupervisorStatus, TunnelState

if TYPE_CHECKING:  # prometheus-client is an optional dependency, imported when serving
    from prometheus_client.metrics_core import Metric

log = logging.getLogger(__name__)

TUNNEL_STATES = get_args(TunnelState)  # one label value per state, in its order
SCRAPE_TIMEOUT = 5.0
TEXTFILE_PERIOD = 15.0


class StatusCollector:
    """A prometheus-client collector: every scrape reads one frozen snapshot. `collect()` runs
    on the HTTP server's thread; `serve` hands it a `get_status` that asks the event loop."""

    def __init__(self, get_status: Callable[[], SupervisorStatus]) -> None:
        self._get_status = get_status

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        status = self._get_status()
        start = GaugeMetricFamily(
            "tunnelkeeper_start_time_seconds", "When the supervisor started, in Unix time"
        )
        start.add_metric([], status.started.timestamp())
        yield start
        taken = GaugeMetricFamily(
            "tunnelkeeper_snapshot_timestamp_seconds",
            "When these values were read, in Unix time (a stale textfile shows here)",
        )
        taken.add_metric([], time.time())
        yield taken

        tl = ["tunnel"]
        up = GaugeMetricFamily(
            "tunnelkeeper_tunnel_up", "1 when the SSH connection is up", labels=tl
        )
        state = GaugeMetricFamily(
            "tunnelkeeper_tunnel_state", "1 for the tunnel's current state", labels=[*tl, "state"]
        )
        connects = CounterMetricFamily(
            "tunnelkeeper_tunnel_connects", "Successful connections to the relay", labels=tl
        )
        reconnects = CounterMetricFamily(
            "tunnelkeeper_tunnel_reconnects", "Connections to the relay after the first", labels=tl
        )
        retry = GaugeMetricFamily(
            "tunnelkeeper_tunnel_next_retry_seconds", "Seconds until the next attempt", labels=tl
        )
        for tunnel in status.tunnels:
            up.add_metric([tunnel.name], 1.0 if tunnel.state == "up" else 0.0)
            for name in TUNNEL_STATES:
                state.add_metric([tunnel.name, name], 1.0 if tunnel.state == name else 0.0)
            connects.add_metric([tunnel.name], tunnel.connects)
            reconnects.add_metric([tunnel.name], max(tunnel.connects - 1, 0))
            seconds = tunnel.next_retry_in()
            if seconds is not None:
                retry.add_metric([tunnel.name], seconds)
        yield from (up, state, connects, reconnects, retry)

        fl = ["tunnel", "forward", "service"]
        pl = [*fl, "via"]
        fwd_up = GaugeMetricFamily(
            "tunnelkeeper_forward_up",
            "1 when the forward is up and its last probe (if any) got through",
            labels=fl,
        )
        probe_ok = GaugeMetricFamily(
            "tunnelkeeper_probe_ok", "1 when the last end-to-end probe got through", labels=pl
        )
        latency = GaugeMetricFamily(
            "tunnelkeeper_probe_latency_seconds", "How long the last probe took", labels=pl
        )
        probe_at = GaugeMetricFamily(
            "tunnelkeeper_probe_timestamp_seconds",
            "When the last probe ran, in Unix time",
            labels=pl,
        )
        active = GaugeMetricFamily(
            "tunnelkeeper_forward_connections_active", "Forwarded connections open now", labels=fl
        )
        total = CounterMetricFamily(
            "tunnelkeeper_forward_connections", "Forwarded connections accepted", labels=fl
        )
        bytes_in = CounterMetricFamily(
            "tunnelkeeper_forward_bytes_in", "Bytes from the relay to the local target", labels=fl
        )
        bytes_out = CounterMetricFamily(
            "tunnelkeeper_forward_bytes_out", "Bytes from the local target to the relay", labels=fl
        )
        avail = GaugeMetricFamily(
            "tunnelkeeper_forward_availability_24h_percent",
            "Share of the last 24 h the forward was not in an outage (history database)",
            labels=fl,
        )
        etrn = CounterMetricFamily(
            "tunnelkeeper_etrn",
            "ETRNs sent to the relay's MTA, one per domain, by its answer",
            labels=[*fl, "result"],
        )
        for tunnel in status.tunnels:
            for fwd in tunnel.forwards:
                values = [tunnel.name, fwd.name, fwd.service]
                if fwd.service == "smtp" and fwd.direction == "forward":
                    etrn.add_metric([*values, "accepted"], fwd.etrn_accepted)
                    etrn.add_metric([*values, "refused"], fwd.etrn_refused)
                    etrn.add_metric([*values, "unreachable"], fwd.etrn_unreachable)
                fwd_up.add_metric(values, 1.0 if fwd.healthy else 0.0)
                active.add_metric(values, fwd.connections_active)
                total.add_metric(values, fwd.connections_total)
                bytes_in.add_metric(values, fwd.bytes_in)
                bytes_out.add_metric(values, fwd.bytes_out)
                if fwd.availability_24h is not None:
                    avail.add_metric(values, fwd.availability_24h)
                probe = fwd.probe
                if probe is None:
                    continue  # no sample rather than a fake 0 before the first probe
                probe_values = [*values, probe.via]
                probe_ok.add_metric(probe_values, 1.0 if probe.ok else 0.0)
                probe_at.add_metric(probe_values, probe.at.timestamp())
                if probe.latency_ms is not None:
                    latency.add_metric(probe_values, probe.latency_ms / 1000)
        yield from (fwd_up, probe_ok, latency, probe_at, active, total, bytes_in, bytes_out)
        yield avail
        yield etrn


def render(status: SupervisorStatus) -> bytes:
    """The metrics of one snapshot in Prometheus' text format.

    Raises ImportError when prometheus-client is not installed."""
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatusCollector(lambda: status))
    return bytes(generate_latest(registry))


def _missing_client(key: str) -> ConfigError:
    return ConfigError(
        "is set, but prometheus-client is not installed (pip install 'tunnelkeeper[metrics]')",
        key=key,
    )


async def serve(listen: Endpoint, get_status: Callable[[], SupervisorStatus]) -> None:
    """Serve /metrics on `listen` until cancelled.

    Raises ConfigError when prometheus-client is not installed, and TunnelkeeperError when
    `listen` cannot be bound (both before serving anything).
    """
    try:
        from prometheus_client import CollectorRegistry, start_http_server
    except ImportError:
        raise _missing_client("supervisor.metrics_listen") from None
    loop = asyncio.get_running_loop()

    async def take() -> SupervisorStatus:
        return get_status()

    def on_loop() -> SupervisorStatus:
        # Scrapes arrive on the HTTP server's thread. The published status could be read
        # from here, but asking the event loop for it makes a wedged loop fail the scrape.
        return asyncio.run_coroutine_threadsafe(take(), loop).result(timeout=SCRAPE_TIMEOUT)

    # A registry of our own: the default one would add this process's Python internals.
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatusCollector(on_loop))
    try:
        server, thread = start_http_server(listen.port, addr=listen.host, registry=registry)
    except OSError as exc:
        raise ServiceCannotStart(f"metrics: cannot listen on {listen}: {exc.strerror}") from exc
    log.info("metrics on http://%s/metrics", listen)
    try:
        await asyncio.Event().wait()
    finally:
        # shutdown() waits for the serving thread's next poll (up to half a second).
        await asyncio.to_thread(server.shutdown)
        server.server_close()
        thread.join(timeout=5)


async def write_textfile(
    path: Path, get_status: Callable[[], SupervisorStatus], period: float = TEXTFILE_PERIOD
) -> None:
    """Rewrite `path` with the metrics every `period` seconds until cancelled, then remove it
    (a stopped supervisor's metrics must not look current). Each write is a temporary file in
    the same folder renamed over `path`, mode 0644, so node_exporter never reads half a file.

    Raises ConfigError when prometheus-client is not installed and TunnelkeeperError when the
    first write fails; later failures are logged (once until they change).
    """
    try:
        import prometheus_client  # noqa: F401  (present: render() will work)
    except ImportError:
        raise _missing_client("supervisor.metrics_textfile") from None
    last_error: str | None = None
    first = True
    try:
        while True:
            status = get_status()  # on the event loop; the thread only formats and writes
            try:
                await asyncio.to_thread(_replace_file, path, status)
            except OSError as exc:
                if first:
                    raise ServiceCannotStart(f"metrics: cannot write {path}: {exc}") from exc
                if str(exc) != last_error:
                    log.warning("metrics: cannot write %s: %s", path, exc)
                last_error = str(exc)
            else:
                if first:
                    log.info("metrics written to %s every %g s", path, period)
                elif last_error is not None:
                    log.info("metrics: writing %s again", path)
                last_error = None
            first = False
            await asyncio.sleep(period)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)  # one quick call; the loop is stopping anyway


def _replace_file(path: Path, status: SupervisorStatus) -> None:
    data = render(status)
    # Not ending in .prom: the textfile collector reads only *.prom, so never the temporary.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
    try:
        try:
            os.fchmod(fd, 0o644)  # whatever the umask: node_exporter runs as another user
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
