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
from ..state import ForwardStatus, ProbeResult, SupervisorStatus, TunnelState, TunnelStatus

if TYPE_CHECKING:  # prometheus-client is an optional dependency, imported when serving
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
    from prometheus_client.metrics_core import Metric

    Family = CounterMetricFamily | GaugeMetricFamily

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
        from prometheus_client.core import GaugeMetricFamily

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

        tunnel_labels = ["tunnel"]
        families = [_family(*spec[:3], tunnel_labels) for spec in _TUNNEL_FAMILIES]
        state = GaugeMetricFamily(
            "tunnelkeeper_tunnel_state",
            "1 for the tunnel's current state",
            labels=[*tunnel_labels, "state"],
        )
        for tunnel in status.tunnels:
            for family, (*_, sample) in zip(families, _TUNNEL_FAMILIES, strict=True):
                _add(family, [tunnel.name], sample(tunnel))
            for name in TUNNEL_STATES:
                state.add_metric([tunnel.name, name], 1.0 if tunnel.state == name else 0.0)
        yield families[0]
        yield state
        yield from families[1:]

        forward_labels = ["tunnel", "forward", "service"]
        for spec in _FORWARD_FAMILIES:
            name, help_, counter, by_probe, forward_sample = spec
            labels = [*forward_labels, "via"] if by_probe else forward_labels
            family = _family(name, help_, counter, labels)
            for tunnel in status.tunnels:
                for fwd in tunnel.forwards:
                    values = [tunnel.name, fwd.name, fwd.service]
                    if by_probe:
                        if fwd.probe is None:
                            continue  # no sample rather than a fake 0 before the first probe
                        values.append(fwd.probe.via)
                    _add(family, values, forward_sample(fwd))
            yield family
        refused = _family(
            "tunnelkeeper_dns_refused_queries",
            "Queries a dns forward answered REFUSED itself: not for its zones",
            True,
            ["tunnel", "forward"],
        )
        for tunnel in status.tunnels:
            for fwd in tunnel.forwards:
                if fwd.service == "dns" and fwd.direction == "forward":
                    _add(refused, [tunnel.name, fwd.name], fwd.refused_queries)
        yield refused
        etrn = _family(
            "tunnelkeeper_etrn",
            "ETRNs sent to the relay's MTA, one per domain, by its answer",
            True,
            [*forward_labels, "result"],
        )
        for tunnel in status.tunnels:
            for fwd in tunnel.forwards:
                if fwd.service == "smtp" and fwd.direction == "forward":
                    values = [tunnel.name, fwd.name, fwd.service]
                    _add(etrn, [*values, "accepted"], fwd.etrn_accepted)
                    _add(etrn, [*values, "refused"], fwd.etrn_refused)
                    _add(etrn, [*values, "unreachable"], fwd.etrn_unreachable)
        yield etrn


TunnelSample = Callable[[TunnelStatus], float | None]
ForwardSample = Callable[[ForwardStatus], float | None]

# name, help, counter (else gauge), the value for one tunnel (None: no sample); tunnel_up
# first: the per-state family is yielded after it.
_TUNNEL_FAMILIES: tuple[tuple[str, str, bool, TunnelSample], ...] = (
    (
        "tunnelkeeper_tunnel_up",
        "1 when the SSH connection is up",
        False,
        lambda t: 1.0 if t.state == "up" else 0.0,
    ),
    (
        "tunnelkeeper_tunnel_connects",
        "Successful connections to the relay",
        True,
        lambda t: t.connects,
    ),
    (
        "tunnelkeeper_tunnel_reconnects",
        "Connections to the relay after the first",
        True,
        lambda t: max(t.connects - 1, 0),
    ),
    (
        "tunnelkeeper_tunnel_next_retry_seconds",
        "Seconds until the next attempt",
        False,
        lambda t: t.next_retry_in(),
    ),
)


def _probe(fwd: ForwardStatus) -> ProbeResult:
    assert fwd.probe is not None  # asked only of forwards that have one
    return fwd.probe


def _seconds(ms: float | None) -> float | None:
    return None if ms is None else ms / 1000


# name, help, counter, one sample per probe (labelled by its `via`), the value for a forward.
_FORWARD_FAMILIES: tuple[tuple[str, str, bool, bool, ForwardSample], ...] = (
    (
        "tunnelkeeper_forward_up",
        "1 when the forward is up and its last probe (if any) got through",
        False,
        False,
        lambda f: 1.0 if f.healthy else 0.0,
    ),
    (
        "tunnelkeeper_probe_ok",
        "1 when the last end-to-end probe got through",
        False,
        True,
        lambda f: 1.0 if _probe(f).ok else 0.0,
    ),
    (
        "tunnelkeeper_probe_latency_seconds",
        "How long the last probe took",
        False,
        True,
        lambda f: _seconds(_probe(f).latency_ms),
    ),
    (
        "tunnelkeeper_probe_timestamp_seconds",
        "When the last probe ran, in Unix time",
        False,
        True,
        lambda f: _probe(f).at.timestamp(),
    ),
    (
        "tunnelkeeper_forward_connections_active",
        "Forwarded connections open now",
        False,
        False,
        lambda f: f.connections_active,
    ),
    (
        "tunnelkeeper_forward_connections",
        "Forwarded connections accepted",
        True,
        False,
        lambda f: f.connections_total,
    ),
    (
        "tunnelkeeper_forward_bytes_in",
        "Bytes from the relay to the local target",
        True,
        False,
        lambda f: f.bytes_in,
    ),
    (
        "tunnelkeeper_forward_bytes_out",
        "Bytes from the local target to the relay",
        True,
        False,
        lambda f: f.bytes_out,
    ),
    (
        "tunnelkeeper_forward_availability_24h_percent",
        "Share of the last 24 h the forward was not in an outage (history database)",
        False,
        False,
        lambda f: f.availability_24h,
    ),
)


def _family(name: str, help_: str, counter: bool, labels: list[str]) -> Family:
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    kind = CounterMetricFamily if counter else GaugeMetricFamily
    return kind(name, help_, labels=labels)


def _add(family: Family, labels: list[str], value: float | None) -> None:
    if value is not None:
        family.add_metric(labels, value)


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
