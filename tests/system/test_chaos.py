"""Seeded chaos against a real sshd with probes on: the supervisor never dies, no mail is lost
or doubled, everything is back soon after the last fault, nothing grows.

TK_CHAOS_SEED=N replays a run's schedule (the seed is printed); TK_CHAOS_SECONDS sets how long.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.chaos import (
    EXECUTOR_CAP,
    Chaos,
    Digests,
    Sample,
    StatusPoller,
    exactly_once,
    fetch_raw,
    median,
)
from tests.support.faults import FaultSshd, MailLoop, add_tunnel, relay_config, smtp_forward
from tests.support.procs import SupervisorProcess
from tests.support.sshd import free_port, wait_until
from tests.support.targets import DnsTarget, SmtpTarget

BACKOFF_MAX = 2.0
PROBE_INTERVAL = 1.0
FORWARD_RETRY = 0.5
SHUTDOWN_GRACE = 1.0
PROBE_START_DELAY = 0.5  # tunnelkeeper waits this long after a listen before its first probe
# Back after the last fault within backoff_max + probe_interval, plus: a tunnel a reload just
# changed waits shutdown_grace for open connections before it restarts; a listen still held by
# a thawed session is retried after forward_retry; the first probe waits PROBE_START_DELAY; and
# half a second for the SSH handshake, the listen and the probe themselves on a loaded box.
SLACK = SHUTDOWN_GRACE + FORWARD_RETRY + PROBE_START_DELAY + 0.5
RSS_BUDGET_KB = 5 * 1024


def _dns_forward(listen: int, target: int) -> dict[str, Any]:
    return {
        "name": "dns",
        "service": "dns",
        "listen": f"127.0.0.1:{listen}",
        "target": f"127.0.0.1:{target}",
        "zones": ["example.org"],
    }


class _Config:
    """The chaos config: tunnel `main` (standby) and `second`, each with smtp and dns."""

    def __init__(
        self, path: Path, sshd: FaultSshd, ports: list[int], smtp: list[SmtpTarget], dns: int
    ) -> None:
        self.path, self.sshd, self.ports, self.smtp, self.dns = path, sshd, ports, smtp, dns
        self.reloads = 0
        self.changes = 0

    def write(self) -> None:
        tmp = self.path.with_suffix(".new")
        common: dict[str, Any] = {
            "probe_interval": PROBE_INTERVAL,
            "backoff_max": BACKOFF_MAX,
            "forward_retry": FORWARD_RETRY,
        }
        relay_config(
            tmp,
            self.sshd,
            [smtp_forward(self.ports[0], self.smtp[0].port), _dns_forward(self.ports[1], self.dns)],
            name="main",
            standby=True,
            probe_timeout=4.0,
            supervisor={"shutdown_grace": SHUTDOWN_GRACE, "log_level": "info"},
            **common,
        )
        second = [
            smtp_forward(self.ports[2], self.smtp[1].port),
            _dns_forward(self.ports[3], self.dns),
        ]
        add_tunnel(tmp, self.sshd, "second", second, probe_timeout=4.0 + self.changes % 2, **common)
        tmp.write_text(f"# chaos reload {self.reloads}\n" + tmp.read_text())
        tmp.replace(self.path)


def _probe_ids(status: dict[str, Any]) -> dict[tuple[str, str], Any]:
    return {
        (t["name"], f["name"]): f["probe"] and (f["probe"]["at"], f["probe"]["latency_ms"])
        for t in status["tunnels"]
        for f in t["forwards"]
    }


def _healthy(status: dict[str, Any] | None, before: dict[tuple[str, str], Any]) -> bool:
    """Every forward up, and its last probe ok and newer than `before`."""
    if status is None or len(status["tunnels"]) != 2:
        return False
    now = _probe_ids(status)
    return all(
        f["state"] == "up"
        and f["probe"] is not None
        and f["probe"]["ok"]
        and now[(t["name"], f["name"])] != before.get((t["name"], f["name"]))
        for t in status["tunnels"]
        for f in t["forwards"]
    )


def _summary(status: dict[str, Any] | None) -> list[str]:
    """One line per forward: state, and its last probe."""
    if status is None:
        return ["no status"]
    return [
        f"{t['name']}/{f['name']} {t['state']} {f['state']} probe={f['probe']}"
        for t in status["tunnels"]
        for f in t["forwards"]
    ]


def _standby_ready(status: dict[str, Any] | None) -> bool:
    return status is not None and status["tunnels"][0].get("standby") == "ready"


def _recovery(
    sup: SupervisorProcess, before: dict[tuple[str, str], Any], restored: float, alive: Any
) -> float | None:
    """Seconds from `restored` until every forward is up with a fresh ok probe (None: never,
    within a minute, or the supervisor died)."""
    deadline = restored + 60
    while time.monotonic() < deadline and alive():
        if _healthy(fetch_raw(sup.socket), before):
            return time.monotonic() - restored
        time.sleep(0.05)
    return None


def run_chaos(make_relay: Any, fdir: Path, outcome: dict[str, Any], seconds: float) -> None:
    seed = int(os.environ.get("TK_CHAOS_SEED") or random.SystemRandom().randrange(1, 10**6))
    seconds = float(os.environ.get("TK_CHAOS_SECONDS") or seconds)
    print(f"\nchaos: seed {seed} (TK_CHAOS_SEED={seed} replays it), {seconds:g}s")
    outcome.update(seed=seed, seconds=seconds)
    ports = [free_port() for _ in range(4)]
    sshd = make_relay(permitlisten=[f"127.0.0.1:{p}" for p in ports])
    smtp = [SmtpTarget(seed * 3 + 1), SmtpTarget(seed * 3 + 2)]
    dns = DnsTarget()
    cfg = _Config(fdir / "tk.toml", sshd, ports, smtp, dns.port)
    cfg.write()
    sup = SupervisorProcess(cfg.path)
    loops = [
        MailLoop(ports[0], seed=seed, timeout=10.0, accepted=Digests()),
        MailLoop(ports[2], seed=seed + 1, timeout=10.0, accepted=Digests()),
    ]
    poller = StatusPoller(sup.socket, sup.proc.pid)

    def alive() -> bool:
        return sup.proc.poll() is None

    def reload(change: bool) -> None:
        cfg.reloads += 1
        cfg.changes += int(change)
        cfg.write()
        sup.signal(signal.SIGHUP)

    chaos = Chaos(seed, sshd, smtp, dns, reload, alive)
    back: float | None = None
    stuck: list[str] = []
    internal: list[Any] = []
    quiet_before: list[Sample] = []
    quiet_after: list[Sample] = []
    t0 = time.monotonic()
    try:
        sup.wait_status(lambda s: s.tunnels[0].standby == "ready", 30, "standby ready")
        wait_until(lambda: _healthy(fetch_raw(sup.socket), {}), 30, 0.1, "all probes ok")
        poller.start()
        for loop in loops:
            loop.start()
        time.sleep(3)
        quiet_before = poller.window(time.monotonic() - 3, time.monotonic())
        t0 = time.monotonic()
        chaos.run(seconds)
        restored = time.monotonic()
        last = fetch_raw(sup.socket)
        if last is not None and alive():
            back = _recovery(sup, _probe_ids(last), restored, alive)
        if back is None:
            stuck = _summary(fetch_raw(sup.socket))
        else:
            wait_until(lambda: _standby_ready(fetch_raw(sup.socket)), 30, 0.1, "standby again")
            time.sleep(3)
            quiet_after = poller.window(time.monotonic() - 3, time.monotonic())
            final = fetch_raw(sup.socket) or {"supervisor": {}, "tunnels": []}
            internal = [final["supervisor"].get("internal_errors")]
            internal += [t.get("internal_errors") for t in final["tunnels"]]
        for loop in loops:
            loop.stop()
    finally:
        poller.stop()
        for loop in loops:
            loop.stop()
        exits = int(sup.proc.poll() is not None)
        log = sup.log()
        code = sup.stop()
        keep = os.environ.get("TK_CHAOS_LOGS")  # a folder to keep both logs in, for a post-mortem
        if keep:
            Path(keep).mkdir(parents=True, exist_ok=True)
            shutil.copy(sup.log_path, Path(keep) / f"tunnelkeeper-{seed}.log")
            shutil.copy(sshd.log_path, Path(keep) / f"sshd-{seed}.log")
        for target in (*smtp, dns):
            target.close()
        print(
            "chaos events:\n"
            + "\n".join(f"  {e.at:7.2f} {e.kind}: {e.detail}" for e in chaos.events)
        )
    warm = max(15.0, 0.2 * seconds)
    rss_warm = median([s.rss_kb for s in poller.window(t0 + warm, t0 + warm + 3)])
    rss_end = median([s.rss_kb for s in quiet_after])
    fds_before = max((s.fds for s in quiet_before), default=0)
    fds_after = min((s.fds for s in quiet_after), default=0)
    threads_before = max((s.threads for s in quiet_before), default=0)
    threads_after = max((s.threads for s in poller.samples), default=0)
    books = [exactly_once(loop, target.received) for loop, target in zip(loops, smtp, strict=True)]
    bound = BACKOFF_MAX + PROBE_INTERVAL + SLACK
    outcome.update(
        faults=chaos.counts(),
        exits=exits,
        exit_code=code,
        mails_acknowledged=sum(b.acknowledged for b in books),
        mails_refused=sum(b.refused for b in books),
        mails_lost=sum(len(b.lost) for b in books),
        mails_duplicated=sum(len(b.duplicated) for b in books),
        mails_altered=sum(len(b.altered) for b in books),
        resets_in_data=sum(t.resets for t in smtp),
        status_polls=len(poller.samples),
        status_unanswered=poller.unanswered,
        worst_status_latency_s=round(poller.worst_latency, 3),
        back_after_last_fault_s=None if back is None else round(back, 2),
        back_bound_s=bound,
        fds=(fds_before, fds_after),
        threads_before_and_peak=(threads_before, threads_after),
        rss_growth_kb=rss_end - rss_warm if quiet_after else None,
        internal_errors_supervisor_then_tunnels=internal,
    )
    assert exits == 0, f"the supervisor exited during the chaos:\n{log[-8000:]}"
    assert code == 0, log[-4000:]
    assert back is not None, f"not every forward came back: {stuck}\n{log[-4000:]}"
    for book in books:
        assert book.acknowledged > 0, book
        assert not book.lost and not book.duplicated and not book.altered, book
    assert poller.unanswered == 0, outcome
    assert poller.worst_latency < 1.0, outcome
    assert back <= bound, outcome
    # sshd, targets and signals only ever misbehave as the world does: none of it is a bug.
    assert not any(internal), outcome
    assert fds_after <= fds_before, outcome
    assert threads_after <= 1 + EXECUTOR_CAP, outcome
    assert rss_end - rss_warm < RSS_BUDGET_KB, outcome


@pytest.mark.timeout(300)
def test_chaos_with_probes(make_relay: Any, fdir: Path, outcome: dict[str, Any]) -> None:
    run_chaos(make_relay, fdir, outcome, 45)  # the default suite stays near 10 minutes


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_chaos_with_probes_10_minutes(make_relay: Any, fdir: Path, outcome: dict[str, Any]) -> None:
    run_chaos(make_relay, fdir, outcome, 600)
