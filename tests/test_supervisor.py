"""The keep-loop with fake connections: backoff, stable reset, slow host-key retries, reload."""

from __future__ import annotations

import asyncio
import os
import random
import signal
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import tenacity

from tests.support.fake_relay import (
    FakeRelay,
    make_config,
    supervised,
)
from tests.support.polling import until
from tunnelkeeper import config
from tunnelkeeper.backoff import TunnelBackoff
from tunnelkeeper.cli import early
from tunnelkeeper.errors import (
    AuthFailed,
    ConnectRefused,
    Disconnected,
    HostKeyMismatch,
    TunnelError,
)
from tunnelkeeper.forwarding.forwarder import ForwarderRuntime
from tunnelkeeper.supervisor import Shutdown, Supervisor, serve
from tunnelkeeper.tunnel import TunnelRuntime


async def _pauses(wait: Any, errors: list[Exception]) -> list[float]:
    """The pauses tenacity takes with `wait` while `errors` are raised one after another."""
    pauses: list[float] = []

    async def sleep(seconds: float) -> None:
        pauses.append(seconds)

    retrying = tenacity.AsyncRetrying(
        wait=wait, sleep=sleep, stop=tenacity.stop_after_attempt(len(errors))
    )
    with pytest.raises(tenacity.RetryError):
        async for attempt in retrying:
            with attempt:
                raise errors[attempt.retry_state.attempt_number - 1]
    return pauses


async def test_backoff_grows_to_max_with_jitter_and_resets_after_stable(tmp_path: Path) -> None:
    settings = make_config(tmp_path).tunnel[0]
    up_for: list[float | None] = [None]
    wait = TunnelBackoff(settings, up_for=lambda: up_for[0], rng=random.Random(7))
    delays = await _pauses(wait, [ConnectRefused("x")] * 7)
    for delay, base in zip(delays, [1, 2, 4, 8, 8, 8], strict=True):
        assert min(base, 8.0 / 1.25) <= delay <= min(8.0, base * 1.25)
    assert len(set(delays[3:])) == 3  # still jittered at the cap: tunnels do not move in step

    # A connection that stayed up stable_after: reconnect at once, then the curve starts over.
    pauses: list[float] = []

    async def sleep(seconds: float) -> None:
        pauses.append(seconds)
        up_for[0] = None  # the next attempt fails before it connects

    up_for[0] = 30.0
    retrying = tenacity.AsyncRetrying(wait=wait, sleep=sleep, stop=tenacity.stop_after_attempt(4))
    with pytest.raises(tenacity.RetryError):
        async for attempt in retrying:
            with attempt:
                raise Disconnected("x")
    assert pauses[0] == 0.0
    assert 1.0 <= pauses[1] <= 1.25 and 2.0 <= pauses[2] <= 2.5, pauses


async def test_a_ready_standby_means_no_pause(tmp_path: Path) -> None:
    wait = TunnelBackoff(make_config(tmp_path).tunnel[0], standby_ready=lambda: True)
    assert await _pauses(wait, [ConnectRefused("x")] * 3) == [0.0, 0.0]


async def test_host_key_mismatch_retries_at_backoff_max(tmp_path: Path) -> None:
    wait = TunnelBackoff(make_config(tmp_path).tunnel[0])
    pauses = await _pauses(wait, [HostKeyMismatch("x")] * 4)
    assert all(8.0 / 1.25 <= p <= 8.0 for p in pauses) and len(set(pauses)) == 3


def test_days_of_failures_stay_at_the_cap(tmp_path: Path) -> None:
    wait = TunnelBackoff(make_config(tmp_path).tunnel[0])
    state = tenacity.RetryCallState(tenacity.Retrying(), fn=None, args=(), kwargs={})
    state.attempt_number = 100_000
    assert 8.0 / 1.25 <= wait(state) <= 8.0


async def both_up(
    tmp_path: Path,
) -> tuple[config.Config, FakeRelay, Supervisor, Shutdown, asyncio.Task[None]]:
    """make_config's two tunnels running through a FakeRelay, both connected."""
    cfg = make_config(tmp_path)
    relay = FakeRelay([])
    sup = supervised(cfg, relay)
    shutdown = Shutdown()
    task = asyncio.create_task(sup.run(shutdown))
    await until(lambda: len(relay.live) == 2)
    return cfg, relay, sup, shutdown, task


async def test_keep_loop_backs_off_then_holds_the_forwards(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, backoff_initial=0.05, backoff_max=0.2)
    cfg = cfg.model_copy(update={"tunnel": cfg.tunnel[:1]})
    relay = FakeRelay([ConnectRefused("no"), AuthFailed("no"), "ok"])
    sup = supervised(cfg, relay)
    shutdown = Shutdown()
    task = asyncio.create_task(sup.run(shutdown))
    await until(
        lambda: (
            sup.snapshot().tunnels
            and sup.snapshot().tunnels[0].state == "up"
            and sup.snapshot().forwards[0].state == "up"
        )
    )
    times = [t for _, t in relay.attempts]
    assert len(times) == 3
    assert times[1] - times[0] >= 0.05 and times[2] - times[1] >= 0.1  # growing delays
    assert sup.snapshot().tunnels[0].connects == 1
    shutdown.request()
    await asyncio.wait_for(task, 5)
    assert sup.snapshot().tunnels == ()


async def test_refused_listen_keeps_connection_and_retries(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, forward_retry=0.05)
    cfg = cfg.model_copy(update={"tunnel": cfg.tunnel[:1]})
    relay = FakeRelay([3])  # the relay refuses the listen three times
    sup = supervised(cfg, relay)
    shutdown = Shutdown()
    task = asyncio.create_task(sup.run(shutdown))
    await until(lambda: sup.snapshot().tunnels and sup.snapshot().forwards[0].state == "refused")
    st = sup.snapshot().tunnels[0]
    assert st.state == "up" and st.error_kind == "forward-refused"
    await until(lambda: sup.snapshot().forwards[0].state == "up")
    assert sup.snapshot().tunnels[0].error_kind is None
    assert len(relay.attempts) == 1  # one connection throughout
    shutdown.request()
    await asyncio.wait_for(task, 5)


async def test_stable_connection_reconnects_immediately(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, stable_after=0.1, backoff_initial=5.0, backoff_max=10.0)
    cfg = cfg.model_copy(update={"tunnel": cfg.tunnel[:1]})
    relay = FakeRelay(["ok", "ok"])
    sup = supervised(cfg, relay)
    shutdown = Shutdown()
    task = asyncio.create_task(sup.run(shutdown))
    await until(lambda: relay.live)
    await asyncio.sleep(0.2)
    relay.live[0].lose()
    await until(lambda: len(relay.attempts) == 2, timeout=1.0)  # not after backoff_initial (5s)
    shutdown.request()
    await asyncio.wait_for(task, 5)


async def test_reload_restarts_only_changed_tunnels(tmp_path: Path) -> None:
    cfg, relay, sup, shutdown, task = await both_up(tmp_path)
    changed = cfg.tunnel[1].model_copy(update={"keepalive_interval": 9.0})
    sup.reload(cfg.model_copy(update={"tunnel": (cfg.tunnel[0], changed)}))
    await until(lambda: len(relay.attempts) == 3)
    assert [name for name, _ in relay.attempts] == ["one", "two", "two"]
    assert not relay.live[0].is_closing and relay.live[1].is_closing
    shutdown.request()
    await asyncio.wait_for(task, 5)


async def test_reloads_in_a_burst_leave_one_keep_loop_per_tunnel(tmp_path: Path) -> None:
    """A reload that comes while the last one is still draining its tunnels waits for it:
    no tunnel is stopped twice or started twice."""
    cfg, relay, sup, shutdown, task = await both_up(tmp_path)
    for n in range(5):  # each changes tunnel two again, before the last change is done
        changed = cfg.tunnel[1].model_copy(update={"keepalive_interval": 9.0 + n})
        sup.reload(cfg.model_copy(update={"tunnel": (cfg.tunnel[0], changed)}))
    await until(lambda: len(relay.attempts) == 7)
    await asyncio.sleep(0.3)
    live = [c for c in relay.live if not c.is_closing]
    keep_loops = [t for t in asyncio.all_tasks() if t.get_name() in ("one", "two")]
    assert len(live) == 2 and sorted(t.get_name() for t in keep_loops) == ["one", "two"]
    assert sup.snapshot().internal_errors == 0
    shutdown.request()
    await asyncio.wait_for(task, 5)


async def test_stop_during_a_reload_drain_ends_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGTERM while a reload is still draining the tunnel it restarts: run ends, and the
    restart it was going to do never starts a keep-loop in a TaskGroup that is closing."""
    from tunnelkeeper.tunnel import TunnelRuntime

    async def slow_drain(self: TunnelRuntime, grace: float, forced: asyncio.Event) -> None:
        await asyncio.sleep(grace)

    monkeypatch.setattr(TunnelRuntime, "drain", slow_drain)
    cfg, relay, sup, shutdown, task = await both_up(tmp_path)
    changed = cfg.tunnel[1].model_copy(update={"keepalive_interval": 9.0})
    sup.reload(cfg.model_copy(update={"tunnel": (cfg.tunnel[0], changed)}))
    await asyncio.sleep(0.1)  # the reload is draining tunnel two (0.5 s)
    shutdown.request()
    await asyncio.wait_for(task, 5)
    assert len(relay.attempts) == 2  # tunnel two was not started again


async def test_a_bug_in_one_drain_is_reported_and_the_stop_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A drain that fails on a bug is logged with its traceback, and every tunnel still ends."""
    from tunnelkeeper.tunnel import TunnelRuntime

    real_drain = TunnelRuntime.drain

    async def drain(self: TunnelRuntime, grace: float, forced: asyncio.Event) -> None:
        await real_drain(self, grace, forced)
        if self.name == "one":
            raise RuntimeError("injected: drain")

    monkeypatch.setattr(TunnelRuntime, "drain", drain)
    _, relay, _, shutdown, task = await both_up(tmp_path)
    shutdown.request()
    await asyncio.wait_for(task, 5)
    bugs = [r for r in caplog.records if "internal error in its drain" in r.getMessage()]
    assert len(bugs) == 1 and "tunnel one" in bugs[0].getMessage() and bugs[0].exc_info
    assert all(conn.is_closing for conn in relay.live)


async def test_second_shutdown_request_forces(tmp_path: Path) -> None:
    shutdown = Shutdown()
    shutdown.request()
    assert shutdown.requested.is_set() and not shutdown.forced.is_set()
    shutdown.request()
    assert shutdown.forced.is_set()


@pytest.mark.parametrize("kind", ["host-key-mismatch", "auth-failed"])
async def test_failed_state_reports_kind_and_countdown(tmp_path: Path, kind: str) -> None:
    cfg = make_config(tmp_path, backoff_initial=3.0, backoff_max=6.0)
    cfg = cfg.model_copy(update={"tunnel": cfg.tunnel[:1]})
    error = HostKeyMismatch("mismatch") if kind == "host-key-mismatch" else AuthFailed("no")
    relay = FakeRelay([error])
    sup = supervised(cfg, relay)
    shutdown = Shutdown()
    task = asyncio.create_task(sup.run(shutdown))
    await until(lambda: sup.snapshot().tunnels and sup.snapshot().tunnels[0].state == "backoff")
    st = sup.snapshot().tunnels[0]
    assert st.error_kind == kind
    retry = st.next_retry_in()
    # host-key-mismatch waits backoff_max less its jitter (4.8 to 6 s); auth-failed the curve
    assert retry is not None and (retry >= 4.5 if kind == "host-key-mismatch" else retry <= 3.75)
    assert st.forwards[0].state == "down"
    shutdown.request()
    await asyncio.wait_for(task, 5)


async def test_relay_version_is_null_until_said_then_kept(tmp_path: Path) -> None:
    """The relay's identification shows from the attempt it was said in, through a refused
    key and later attempts that never reach it."""
    said = AuthFailed("refused key")
    said.relay_version = "SSH-2.0-dropbear_2022.83"
    outcomes: list[TunnelError] = [ConnectRefused("no"), said, ConnectRefused("no again")]

    async def connect(_tunnel: config.Tunnel) -> Any:
        raise outcomes.pop(0)

    runtime = TunnelRuntime(make_config(tmp_path).tunnel[0], connect)
    shown = []
    for _ in range(3):
        with pytest.raises(TunnelError):
            await runtime.run_once()
        shown.append(runtime.snapshot().to_json()["relay_version"])
    assert shown == [None, "SSH-2.0-dropbear_2022.83", "SSH-2.0-dropbear_2022.83"]


def test_signals_before_the_loop_are_noted_not_fatal() -> None:
    """From the first moment of `run`, TERM and HUP are noted (Python would die of them)."""
    before = signal.getsignal(signal.SIGHUP)
    early.hold()
    try:
        os.kill(os.getpid(), signal.SIGHUP)
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGHUP)
        assert early.take() == [signal.SIGHUP, signal.SIGTERM]
        assert early.take() == []
    finally:
        early.release()
    assert signal.getsignal(signal.SIGHUP) == before


async def test_serve_acts_on_a_stop_that_came_before_it(tmp_path: Path) -> None:
    cfg = make_config(tmp_path)
    relay = FakeRelay([])
    sup = supervised(cfg, relay)
    await asyncio.wait_for(serve(sup, pending=lambda: [signal.SIGTERM]), 5)
    assert len(relay.attempts) <= 2


def test_a_forward_is_down_since_its_first_failure(tmp_path: Path) -> None:
    fwd = ForwarderRuntime(make_config(tmp_path).tunnel[0].forward[0])
    fwd.set_state("up")
    fwd.set_state("down", "connection lost")
    assert fwd.since is not None
    fwd.since -= timedelta(seconds=30)
    down_since = fwd.since
    for state in ("pending", "down", "pending", "refused", "down"):  # retries go on failing
        fwd.set_state(state)
    assert fwd.since == down_since
    fwd.set_state("up")
    assert fwd.since > down_since
