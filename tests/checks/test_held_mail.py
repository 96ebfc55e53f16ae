"""ETRN on return, against a real sendmail relay run as Debian runs it (`-bD -q10m`: a queue
run every ten minutes, and none by hand anywhere here), a real sshd and the internal server
behind the tunnel: mail the relay held while the way in was broken reaches the internal server
within seconds of the way being whole again."""

from __future__ import annotations

import json
import os
import smtplib
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import SmtpSink
from tests.relaykit.conftest import ssh_args
from tests.support.configs import write_config
from tests.support.mailbox_mta import ListenWatch, MailboxMta
from tests.support.procs import SupervisorProcess, history_json
from tests.support.sendmail import (
    DAEMON_MC,
    build_relay,
    port_open,
    sendmail_daemon,
    stop_tree,
)
from tests.support.sshd import free_port, wait_until
from tunnelkeeper.config import load

pytestmark = pytest.mark.timeout(90)

QUEUE_INTERVAL = "10m"  # Debian's sendmail.conf QUEUE_INTERVAL
NOETRN = "define(`confPRIVACY_FLAGS', `noetrn')dnl\n"


class HoldingRelay:
    """sshd, and a sendmail daemon (`-bD -q10m`) that routes example.org (and its subdomains)
    into the tunnel and queues what it cannot deliver there."""

    def __init__(
        self,
        folder: Path,
        sshd: Any,
        target: int,
        *,
        probe_interval: float = 0,
        etrn: bool = True,
        extra_mc: str = "",
    ) -> None:
        self.listen, self.mta = free_port(), free_port()
        self.sshd = sshd
        forward = {
            "name": "smtp",
            "service": "smtp",
            "listen": f"127.0.0.1:{self.listen}",
            "target": f"127.0.0.1:{target}",
            "domains": ["example.org"],
            "subdomains": True,
            "etrn": etrn,
        }
        sshd.set_authorized(
            options="restrict,port-forwarding,"
            f'permitlisten="127.0.0.1:{self.listen}",permitopen="127.0.0.1:{self.listen}",'
            f'permitopen="127.0.0.1:{self.mta}"'
        )
        self.config = write_config(
            folder / "tk.toml",
            sshd,
            [forward],
            relay_mta=f"127.0.0.1:{self.mta}",
            probe_interval=probe_interval,
        )
        mc = DAEMON_MC.format(port=self.mta) + extra_mc
        self.relay = build_relay(folder / "relay", load(self.config), extra_mc=mc)
        self.queue = self.relay.folder / "queue"
        self.daemon: subprocess.Popen[bytes] | None = None

    def start(self) -> HoldingRelay:
        self.daemon = sendmail_daemon(self.relay.cf, self.mta, f"-q{QUEUE_INTERVAL}")
        return self

    def stop(self) -> None:
        if self.daemon is not None:
            stop_tree(self.daemon)

    def held(self) -> int:
        """Messages in the relay's queue."""
        return len(list(self.queue.glob("qf*")))

    def send(self, rcpt: str, n: int) -> list[str]:
        """Hand `n` messages for `rcpt` to the relay's MTA, as the Internet would; they are
        accepted, and held (the tunnel or the internal server is not there): wait for that."""
        subjects = [f"held {rcpt} {i} {time.monotonic_ns()}" for i in range(n)]
        before = self.held()
        with smtplib.SMTP("127.0.0.1", self.mta, timeout=30) as client:
            for subject in subjects:
                body = f"Subject: {subject}\r\n\r\nheld while the way in was broken\r\n"
                client.sendmail("sender@example.net", [rcpt], body.encode())
        wait_until(lambda: self.held() >= before + n, 15, what=f"{n} messages held")
        return subjects


@pytest.fixture
def holding_relay(make_sshd: Any, tmp_path: Path, smtp_sink: SmtpSink) -> Iterator[Any]:
    made: list[HoldingRelay] = []

    def make(**kwargs: Any) -> HoldingRelay:
        kwargs.setdefault("target", smtp_sink.port)
        relay = HoldingRelay(tmp_path, make_sshd(), **kwargs).start()
        made.append(relay)
        return relay

    yield make
    for relay in made:
        relay.stop()


def arrived(sink: SmtpSink, subjects: list[str]) -> bool:
    got = b"".join(sink.raw).decode(errors="replace")
    return all(f"Subject: {s}" in got for s in subjects)


def forward_up(supervisor: SupervisorProcess) -> float:
    """Wait for the forward to be up; the monotonic time it was seen so."""
    supervisor.wait_forward("up", 20)
    return time.monotonic()


def flush_cli(config: Path, *args: str) -> tuple[int, dict[str, Any], str]:
    proc = subprocess.run(
        [sys.executable, "-m", "tunnelkeeper", "flush", "-c", str(config), "--json", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    try:
        return proc.returncode, json.loads(proc.stdout or "{}"), proc.stderr
    except json.JSONDecodeError:
        raise AssertionError(f"exit {proc.returncode}: {proc.stdout}{proc.stderr}") from None


def test_mail_held_while_tunnelkeeper_was_stopped_goes_out_at_start(
    holding_relay: Any, internal_mta: MailboxMta, outcome: dict[str, Any]
) -> None:
    """(a) and (c): held for example.org and for a subdomain of it; tunnelkeeper started; every
    message in the internal mailbox within 10 s of the forward being up."""
    relay = holding_relay(target=internal_mta.port)
    subjects = relay.send("postmaster@example.org", 3)
    subjects += relay.send("postmaster@host.sub.example.org", 2)
    assert not any(internal_mta.count(s) for s in subjects)
    launched, since = time.monotonic(), time.time()
    watch = ListenWatch(relay.listen)
    supervisor = SupervisorProcess(relay.config)
    try:
        forward_up(supervisor)
        up = watch.up()
        wait_until(lambda: internal_mta.has(subjects), 10, 0.01, "the held mail in the mailbox")
        # An event in the history (and so on the dashboard), with the relay's words.
        # (The history database is the session's: other tests' flushes may be in it too.)
        flushes = wait_until(
            lambda: [
                f
                for f in history_json(relay.config)["flushes"]
                if datetime.fromisoformat(f["at"]).timestamp() >= since - 1
            ],
            5,
            0.2,
            "the flush in the history",
        )
        status = supervisor.status_now()
    finally:
        assert supervisor.stop() == 0
    event = flushes[-1]
    last = max(internal_mta.seen.values())
    outcome.update(
        held=len(subjects),
        seconds_from_forward_up=round(last - up, 2),
        seconds_from_launch=round(last - launched, 2),
    )
    assert last - up <= 10
    assert relay.held() == 0
    flush = status.tunnels[0].forwards[0].last_flush
    assert flush is not None and flush.ok, flush
    assert flush.reply.startswith("250 "), flush.reply  # "250 2.0.0 Queuing for node …"
    log = supervisor.log()
    assert "ETRN @example.org (at start): relay answered" in log, log
    assert event["ok"] and event["reply"] == flush.reply and event["forward"] == "smtp"
    for subject in subjects:  # each once: a flush does not duplicate
        assert internal_mta.count(subject) == 1
    outcome.update(reply=flush.reply)


def test_mail_held_while_the_internal_server_was_down_goes_out_when_its_probe_recovers(
    holding_relay: Any, internal_mta: MailboxMta, outcome: dict[str, Any]
) -> None:
    """(b): the tunnel up all along, the internal server down while mail arrives, then back:
    the mail is in its mailbox within one probe interval + 5 s."""
    probe_interval = 1.0
    relay = holding_relay(probe_interval=probe_interval, target=internal_mta.port)
    internal_mta.stop()
    supervisor = SupervisorProcess(relay.config)
    try:
        supervisor.wait_status(
            lambda st: (p := st.tunnels[0].forwards[0].probe) is not None and not p.ok,
            20,
            "the probe to fail (internal server down)",
        )
        subjects = relay.send("postmaster@example.org", 3)
        internal_mta.start()
        back = time.monotonic()  # it listens (polled every 10 ms)
        wait_until(lambda: internal_mta.has(subjects), probe_interval + 5, 0.01, "the held mail")
        status = supervisor.status_now()
    finally:
        assert supervisor.stop() == 0
    took = max(internal_mta.seen.values()) - back
    outcome.update(held=len(subjects), seconds_from_mta_up=round(took, 2))
    assert took <= probe_interval + 5
    assert status.tunnels[0].connects == 1  # the tunnel stayed up all along
    assert "ETRN @example.org (probe recovered): relay answered" in supervisor.log()


def test_a_relay_that_refuses_etrn_keeps_the_tunnel_up_and_says_why_once(
    holding_relay: Any, smtp_sink: SmtpSink, outcome: dict[str, Any]
) -> None:
    """(d): PrivacyOptions=noetrn on the relay. The tunnel stays up, the refusal is logged
    once, with the relay's words and what to change; `flush` says it and exits 1."""
    relay = holding_relay(extra_mc=NOETRN)
    supervisor = SupervisorProcess(relay.config)
    try:
        supervisor.wait_status(
            lambda st: st.tunnels[0].forwards[0].last_flush is not None, 20, "a flush"
        )
        code, result, _ = flush_cli(relay.config)  # a second refusal: not logged again
        status = supervisor.wait_status(
            lambda st: st.tunnels[0].forwards[0].etrn_refused == 2, 5, "the second refusal"
        )
    finally:
        assert supervisor.stop() == 0
    fwd = status.tunnels[0].forwards[0]
    assert status.tunnels[0].state == "up" and fwd.state == "up"
    assert status.tunnels[0].error_kind is None
    assert fwd.last_flush is not None and not fwd.last_flush.ok
    assert fwd.etrn_refused == 2 and fwd.etrn_accepted == 0
    (answer,) = result["flushed"]
    assert code == 1 and answer["outcome"] == "refused" and result["via"] == "supervisor"
    outcome.update(reply=answer["reply"])
    assert answer["reply"].startswith("502 "), answer
    log = supervisor.log()
    refusals = [line for line in log.splitlines() if "refused ETRN" in line]
    assert len(refusals) == 1, log
    assert answer["reply"] in refusals[0] and "noetrn" in refusals[0]


def test_flush_without_a_supervisor_uses_a_connection_of_its_own(
    holding_relay: Any, smtp_sink: SmtpSink
) -> None:
    """(e), no supervisor: the relay accepts the ETRN (its queue run then finds the tunnel's
    port closed, and the mail stays held: nobody holds the forward)."""
    relay = holding_relay()
    relay.send("postmaster@example.org", 1)
    code, result, stderr = flush_cli(relay.config)
    assert code == 0, (result, stderr)
    assert result["via"] == "own connection"
    (answer,) = result["flushed"]
    assert answer["tunnel"] == "relay1" and answer["forward"] == "smtp"
    assert answer["domain"] == "example.org" and answer["command"] == "ETRN @example.org"
    assert answer["ok"] and answer["reply"].startswith("250 "), answer
    plain = subprocess.run(
        [sys.executable, "-m", "tunnelkeeper", "flush", "-c", str(relay.config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert plain.returncode == 0, plain.stderr
    assert plain.stdout.splitlines() == [
        "through a connection of its own:",
        f"relay1/smtp example.org: ok: ETRN @example.org: {answer['reply']}",
    ]
    code, _, stderr = flush_cli(relay.config, "--tunnel", "nosuch")
    assert code == 2 and "nosuch" in stderr


def test_flush_through_the_running_supervisor_delivers_held_mail(
    holding_relay: Any, smtp_sink: SmtpSink, outcome: dict[str, Any]
) -> None:
    """(e), a supervisor running with etrn = false: the mail held before it started stays
    held until `tunnelkeeper flush`, which goes through its connection and delivers it."""
    relay = holding_relay(etrn=False)
    subjects = relay.send("postmaster@example.org", 2)
    supervisor = SupervisorProcess(relay.config)
    try:
        forward_up(supervisor)
        time.sleep(1.0)
        assert not smtp_sink.raw and relay.held() == 2  # no ETRN by itself
        started = time.monotonic()
        code, result, stderr = flush_cli(relay.config)
        wait_until(lambda: arrived(smtp_sink, subjects), 10, what="the held mail")
        took = max(smtp_sink.at) - started
        status = supervisor.wait_status(
            lambda st: st.tunnels[0].forwards[0].last_flush is not None, 5, "last_flush"
        )
    finally:
        assert supervisor.stop() == 0
    outcome.update(seconds_from_flush=round(took, 2))
    assert code == 0 and result["via"] == "supervisor", (result, stderr)
    flush = status.tunnels[0].forwards[0].last_flush
    assert flush is not None and flush.ok and flush.reply == result["flushed"][0]["reply"]


def test_ssh_r_alone_leaves_held_mail_to_the_relays_next_queue_run(
    holding_relay: Any, smtp_sink: SmtpSink, outcome: dict[str, Any]
) -> None:
    """The comparison, and proof that the rig flushes nothing by itself: OpenSSH's `ssh -R`
    (what autossh runs) holds the same forward, new mail goes straight through it, and the
    mail held before stays on the relay for the whole hold (TK_HELD_MAIL_HOLD seconds, 10 by
    default: the bound tunnelkeeper meets); the relay's next queue run, up to 10 minutes
    away, is what would deliver it."""
    hold = float(os.environ.get("TK_HELD_MAIL_HOLD", "10"))
    relay = holding_relay()
    subjects = relay.send("postmaster@example.org", 3)
    forward = f"127.0.0.1:{relay.listen}:127.0.0.1:{smtp_sink.port}"
    ssh = subprocess.Popen(
        ssh_args(relay.sshd, "-N", "-R", forward),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: port_open(relay.listen), 10, what="ssh -R's forward")
        up = time.monotonic()
        with smtplib.SMTP("127.0.0.1", relay.mta, timeout=30) as client:
            client.sendmail(
                "sender@example.net", ["postmaster@example.org"], b"Subject: new\r\n\r\n"
            )
        wait_until(lambda: arrived(smtp_sink, ["new"]), 10, what="new mail through ssh -R")
        time.sleep(max(0.0, hold - (time.monotonic() - up)))
        still = relay.held()
        delivered = [s for s in subjects if arrived(smtp_sink, [s])]
    finally:
        ssh.terminate()
        ssh.wait(10)
    outcome.update(held=len(subjects), still_held_after_s=hold, delivered=len(delivered))
    assert delivered == [] and still == len(subjects)
