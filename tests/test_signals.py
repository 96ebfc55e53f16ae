"""Signals at bad moments: SIGHUP storms while tunnels flap, SIGTERM in backoff and mid-mail."""

from __future__ import annotations

import random
import signal
import smtplib
import socket
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.faults import (
    add_tunnel,
    fd_count,
    relay_config,
    send,
    smtp_forward,
    tcp_connections_to,
    tcp_forward,
)
from tests.support.procs import SupervisorProcess, history_json
from tests.support.sshd import free_port, port_open, wait_until

pytestmark = pytest.mark.timeout(120)


def _all_up(st: Any) -> bool:
    return all(t.state == "up" for t in st.tunnels) and all(f.state == "up" for f in st.forwards)


def test_sighup_storm_while_tunnels_flap(
    make_relay, smtp_sink, fdir: Path, outcome: dict[str, Any]
) -> None:
    """60 SIGHUPs (changed, unchanged and broken files) while sessions are killed: it stays up,
    ends with exactly one connection per tunnel, and leaks no descriptors."""
    l1, l2 = free_port(), free_port()
    sshd = make_relay(permitlisten=[f"127.0.0.1:{l1}", f"127.0.0.1:{l2}"])
    fast: dict[str, Any] = {"backoff_initial": 0.1, "backoff_max": 0.5}
    cfg = relay_config(fdir / "tk.toml", sshd, [smtp_forward(l1, smtp_sink.port)], **fast)
    add_tunnel(cfg, sshd, "relay2", [tcp_forward(l2, smtp_sink.port)], **fast)
    original = cfg.read_text()
    head, relay2 = original.split('name = "relay2"')
    changed = (
        head + 'name = "relay2"' + relay2.replace("forward_retry = 0.5", "forward_retry = 0.7")
    )
    broken = original.replace("[[tunnel.forward]]", "[[tunnel.forward", 1)
    sup = SupervisorProcess(cfg)
    rng = random.Random(7)
    hups = kills = 0
    try:
        sup.wait_status(_all_up, 15, "both tunnels up")
        fds_before = fd_count(sup.proc.pid)
        t0 = time.monotonic()
        for i in range(60):
            cfg.write_text((original, changed, original, broken)[i % 4] if i % 7 else original)
            sup.signal(signal.SIGHUP)
            hups += 1
            if i % 10 == 5:
                sshd.signal_sessions(signal.SIGKILL)
                kills += 1
            time.sleep(rng.uniform(0.0, 0.1))
        storm = time.monotonic() - t0
        cfg.write_text(original)
        sup.signal(signal.SIGHUP)
        t1 = time.monotonic()
        time.sleep(0.3)  # the last reload may restart relay2: do not read the state before it
        st = sup.wait_status(_all_up, 20, "both tunnels up after the storm")
        settled = time.monotonic() - t1
        assert [t.name for t in st.tunnels] == ["relay1", "relay2"]
        wait_until(
            lambda: tcp_connections_to(sup.proc.pid, sshd.port) == 2,
            10,
            what="exactly one relay connection per tunnel",
        )
        send(l1, b"Subject: hi\r\n\r\nafter the storm\r\n")
        wait_until(lambda: smtp_sink.raw, 10, what="mail after the storm")
        time.sleep(1.0)  # let any closing connection finish closing
        fds_after = fd_count(sup.proc.pid)
        log = sup.log()
    finally:
        cfg.write_text(original)
        code = sup.stop()
    outcome.update(
        sighups=hups,
        session_kills=kills,
        storm_s=round(storm, 1),
        settled_s=round(settled, 2),
        reloads_refused=log.count("reload refused"),
        fds_before=fds_before,
        fds_after=fds_after,
    )
    assert code == 0
    assert "Traceback" not in log and "exception" not in log.lower(), log[-4000:]
    assert log.count("reload refused") >= 1
    assert fds_after <= fds_before + 2


@pytest.mark.parametrize("moment", ["backoff", "connecting"])
def test_sigterm_while_reconnecting(
    moment: str, make_relay, fdir: Path, outcome: dict[str, Any]
) -> None:
    """A long backoff sleep, or a connect to a relay that never answers, does not hold up a
    stop."""
    sshd = make_relay(start=False)
    mute = socket.socket()
    mute.bind(("127.0.0.1", 0))
    mute.listen(8)
    via = ("127.0.0.1", mute.getsockname()[1]) if moment == "connecting" else None
    cfg = relay_config(
        fdir / "tk.toml",
        sshd,
        [smtp_forward(free_port(), 25)],
        via=via,
        connect_timeout=60.0,
        backoff_initial=30.0,
        backoff_max=60.0,
    )
    sup = SupervisorProcess(cfg)
    try:
        st = sup.wait_status(lambda s: s.tunnels[0].state == moment, 10, moment)
        retry = st.tunnels[0].next_retry_in()
        if moment == "backoff":
            assert retry is not None and retry > 20
        time.sleep(0.5)
        t0 = time.monotonic()
        sup.signal(signal.SIGTERM)
        code = sup.proc.wait(10)
        stopped = time.monotonic() - t0
    finally:
        mute.close()
        sup.stop()
    outcome.update(moment=moment, next_retry_in_s=retry, stop_s=round(stopped, 2), exit=code)
    assert code == 0
    assert stopped < 1.5
    assert not (fdir / "control.sock").exists()


def test_second_sigterm_forces(make_relay, smtp_sink, fdir: Path, outcome: dict[str, Any]) -> None:
    """A long shutdown_grace with a connection open: the second SIGTERM ends the drain."""
    listen = free_port()
    sshd = make_relay(permitlisten=[f"127.0.0.1:{listen}"])
    cfg = relay_config(
        fdir / "tk.toml",
        sshd,
        [smtp_forward(listen, smtp_sink.port)],
        supervisor={"shutdown_grace": 60},
    )
    sup = SupervisorProcess(cfg)
    idle = None
    try:
        sup.wait_forward("up", 15)
        idle = socket.create_connection(("127.0.0.1", listen), timeout=10)
        assert idle.recv(3) == b"220"
        sup.wait_status(lambda s: s.forwards[0].connections_active == 1, 5, "1 open")
        sup.signal(signal.SIGTERM)
        time.sleep(1.0)
        assert sup.proc.poll() is None  # draining: up to 60 s
        t0 = time.monotonic()
        sup.signal(signal.SIGTERM)
        code = sup.proc.wait(10)
        forced = time.monotonic() - t0
    finally:
        if idle is not None:
            idle.close()
        sup.stop()
    outcome.update(grace_s=60, forced_exit_s=round(forced, 2), exit=code)
    assert code == 0
    assert forced < 1.5
    assert "stop forced" in sup.log()


def _one_smtp_forward(
    make_relay: Any, smtp_sink: Any, fdir: Path, grace: float
) -> tuple[int, Path]:
    """A relay and a config with one smtp forward to the sink: its listen port and the file."""
    listen = free_port()
    sshd = make_relay(permitlisten=[f"127.0.0.1:{listen}"])
    forwards = [smtp_forward(listen, smtp_sink.port)]
    cfg = relay_config(fdir / "tk.toml", sshd, forwards, supervisor={"shutdown_grace": grace})
    return listen, cfg


def test_sigterm_with_connections_open(
    make_relay, smtp_sink, fdir: Path, outcome: dict[str, Any]
) -> None:
    """SIGTERM mid-transaction: the listener closes at once, the open transaction may finish
    within shutdown_grace (250, delivered), and an idle one is closed when the grace ends."""
    grace = 3.0
    listen, cfg = _one_smtp_forward(make_relay, smtp_sink, fdir, grace)
    sup = SupervisorProcess(cfg)
    idle = None
    try:
        sup.wait_forward("up", 15)
        busy = smtplib.SMTP("127.0.0.1", listen, local_hostname="relay.test", timeout=10)
        busy.ehlo()
        busy.mail("alice@example.net")
        busy.rcpt("bob@example.org")
        idle = socket.create_connection(("127.0.0.1", listen), timeout=10)
        assert idle.recv(3) == b"220"
        sup.wait_status(lambda s: s.forwards[0].connections_active == 2, 5, "2 open")
        t0 = time.monotonic()
        sup.signal(signal.SIGTERM)
        wait_until(lambda: not port_open(listen), 3, what="relay listener closed")
        closed_listener = time.monotonic() - t0
        time.sleep(0.5)
        code_data, _ = busy.data(b"Subject: drained\r\n\r\nfinished after SIGTERM\r\n")
        finished = time.monotonic() - t0
        busy.quit()
        idle.settimeout(grace + 5)
        assert idle.recv(4096) in (b"",) or idle.recv(4096) == b""
        idle_closed = time.monotonic() - t0
        code = sup.proc.wait(10)
        stopped = time.monotonic() - t0
    finally:
        if idle is not None:
            idle.close()
        sup.stop()
    outcome.update(
        grace_s=grace,
        listener_closed_s=round(closed_listener, 2),
        open_transaction_finished_s=round(finished, 2),
        data_reply=code_data,
        idle_closed_s=round(idle_closed, 2),
        exit_s=round(stopped, 2),
    )
    assert code == 0
    assert code_data == 250
    assert any(b"finished after SIGTERM" in raw for raw in smtp_sink.raw)
    assert closed_listener < 1.0
    assert grace - 0.3 <= idle_closed <= grace + 1.0
    assert stopped <= grace + 1.5
    assert "draining 2 open connection(s)" in sup.log()


def test_a_clean_stop_is_no_outage_and_pages_nobody(
    make_relay, smtp_sink, fdir: Path, outcome: dict[str, Any]
) -> None:
    """SIGTERM with a connection open and probes every 0.3 s: while it drains, the tunnel is
    `stopped` — no probe fails against the closed listener, history records no outage and
    on_down (alert_after shorter than the drain) does not run."""
    listen = free_port()
    paged = fdir / "paged"
    sshd = make_relay(permitlisten=[f"127.0.0.1:{listen}"])
    cfg = relay_config(
        fdir / "tk.toml",
        sshd,
        [smtp_forward(listen, smtp_sink.port)],
        probe_interval=0.3,
        supervisor={
            "shutdown_grace": 2.0,
            "alert_after": 0.3,
            "on_down": ["/bin/sh", "-c", f"echo down >> {paged}"],
            "history_path": str(fdir / "history.db"),
        },
    )
    sup = SupervisorProcess(cfg)
    idle = None
    try:
        sup.wait_status(lambda s: bool(s.forwards[0].probe and s.forwards[0].probe.ok), 15, "ok")
        idle = socket.create_connection(("127.0.0.1", listen), timeout=10)
        assert idle.recv(3) == b"220"
        sup.wait_status(lambda s: s.forwards[0].connections_active == 1, 5, "1 open")
        time.sleep(0.6)  # the history service has seen it up and probed
        sup.signal(signal.SIGTERM)
        code = sup.proc.wait(10)
    finally:
        if idle is not None:
            idle.close()
        sup.stop()
    doc = history_json(cfg)
    outcome.update(exit=code, outages=len(doc["outages"]), paged=paged.exists())
    assert code == 0
    assert "draining 1 open connection(s)" in sup.log()
    assert "probe smtp FAILED" not in sup.log()
    assert doc["outages"] == [], doc["outages"]
    assert not paged.exists(), paged.read_text()


def test_sigterm_during_a_reload_drain_still_gives_the_grace(
    make_relay, smtp_sink, fdir: Path, outcome: dict[str, Any]
) -> None:
    """A SIGHUP restarts the busy tunnel and its drain begins; a SIGTERM a moment later must
    not cut the open transaction: it finishes within shutdown_grace and is delivered."""
    grace = 3.0
    listen, cfg = _one_smtp_forward(make_relay, smtp_sink, fdir, grace)
    sup = SupervisorProcess(cfg)
    try:
        sup.wait_forward("up", 15)
        busy = smtplib.SMTP("127.0.0.1", listen, local_hostname="relay.test", timeout=10)
        busy.ehlo()
        busy.mail("alice@example.net")
        busy.rcpt("bob@example.org")
        cfg.write_text(cfg.read_text().replace("keepalive_interval", "keepalive_interval = 4 #"))
        t0 = time.monotonic()
        sup.signal(signal.SIGHUP)
        wait_until(lambda: "draining 1 open connection(s)" in sup.log(), 5, what="reload drain")
        sup.signal(signal.SIGTERM)
        time.sleep(1.0)
        code_data, _ = busy.data(b"Subject: reload\r\n\r\nfinished after SIGHUP and SIGTERM\r\n")
        finished = time.monotonic() - t0
        busy.quit()
        code = sup.proc.wait(10)
    finally:
        sup.stop()
    outcome.update(grace_s=grace, data_reply=code_data, finished_s=round(finished, 2), exit=code)
    assert code == 0
    assert code_data == 250
    assert any(b"finished after SIGHUP and SIGTERM" in raw for raw in smtp_sink.raw)
