"""Prometheus metrics scraped over HTTP from a real listener on 127.0.0.1."""

from __future__ import annotations

import asyncio
import socket
import threading
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.polling import wait_listening
from tests.support.snapshots import healthy, mixed
from tests.support.sshd import free_port
from tunnelkeeper.config import Endpoint
from tunnelkeeper.errors import TunnelkeeperError
from tunnelkeeper.services.metrics import serve
from tunnelkeeper.state import SupervisorStatus


def scrape(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def fwd(tunnel: str, forward: str, service: str, **extra: str) -> frozenset[tuple[str, str]]:
    return frozenset({"tunnel": tunnel, "forward": forward, "service": service, **extra}.items())


async def test_scrape_reads_the_current_snapshot() -> None:
    status: SupervisorStatus = mixed()
    threads: set[threading.Thread] = set()

    def get_status() -> SupervisorStatus:
        threads.add(threading.current_thread())
        return status

    port = free_port()
    task = asyncio.create_task(serve(Endpoint(host="127.0.0.1", port=port), get_status))
    try:
        await wait_listening(port)
        m = await asyncio.to_thread(scrape, port)
        assert m[("tunnelkeeper_tunnel_up", frozenset({("tunnel", "relay1")}))] == 1
        assert m[("tunnelkeeper_tunnel_up", frozenset({("tunnel", "relay2")}))] == 0
        backoff = frozenset({("tunnel", "relay2"), ("state", "backoff")})
        assert m[("tunnelkeeper_tunnel_state", backoff)] == 1
        assert m[("tunnelkeeper_tunnel_reconnects_total", frozenset({("tunnel", "relay1")}))] == 2
        assert m[("tunnelkeeper_tunnel_connects_total", frozenset({("tunnel", "relay1")}))] == 3
        smtp = fwd("relay1", "smtp", "smtp")
        dns = fwd("relay1", "dns", "dns")
        assert m[("tunnelkeeper_forward_up", smtp)] == 1
        assert m[("tunnelkeeper_forward_up", dns)] == 0  # up, but its probe fails
        assert m[("tunnelkeeper_forward_up", fwd("relay1", "submission", "tcp"))] == 0
        assert m[("tunnelkeeper_probe_ok", fwd("relay1", "smtp", "smtp", via="relay"))] == 1
        assert m[("tunnelkeeper_probe_ok", fwd("relay1", "dns", "dns", via="local"))] == 0
        latency = m[
            ("tunnelkeeper_probe_latency_seconds", fwd("relay1", "smtp", "smtp", via="relay"))
        ]
        assert latency == pytest.approx(0.00421)
        assert m[("tunnelkeeper_forward_bytes_in_total", smtp)] == 1_234_567
        assert m[("tunnelkeeper_forward_bytes_out_total", smtp)] == 45_678
        assert m[("tunnelkeeper_forward_connections_active", smtp)] == 1
        assert m[("tunnelkeeper_forward_connections_total", smtp)] == 37
        # No probe yet: no probe sample rather than a made-up 0.
        assert not any(
            name == "tunnelkeeper_probe_ok" and ("forward", "submission") in labels
            for name, labels in m
        )

        status = healthy()
        m = await asyncio.to_thread(scrape, port)
        assert m[("tunnelkeeper_forward_up", dns)] == 1
        assert ("tunnelkeeper_tunnel_up", frozenset({("tunnel", "relay2")})) not in m
        assert threads == {threading.current_thread()}  # taken on the loop, not the HTTP thread
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()


async def test_a_taken_port_is_an_error_before_serving() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(TunnelkeeperError, match=f"cannot listen on 127.0.0.1:{port}"):
            async with asyncio.timeout(5):
                await serve(Endpoint(host="127.0.0.1", port=port), healthy)


def test_a_dns_forward_counts_the_queries_it_refused() -> None:
    from dataclasses import replace

    from tunnelkeeper.services.metrics import render

    status = mixed()
    tunnels = tuple(
        replace(
            t,
            forwards=tuple(
                replace(f, refused_queries=7) if f.service == "dns" else f for f in t.forwards
            ),
        )
        for t in status.tunnels
    )
    text = render(replace(status, tunnels=tunnels)).decode()
    samples = {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    refused = "tunnelkeeper_dns_refused_queries_total"
    labels = frozenset({("tunnel", "relay1"), ("forward", "dns")})
    assert samples[(refused, labels)] == 7
    assert [labels for name, labels in samples if name == refused] == [labels]  # dns only
