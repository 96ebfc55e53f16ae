"""`check --mail` says "delivered" only once the internal mail server has the message: the
relayed session that carried the test ended with the internal server's answer to the end of
the message. Against a real sendmail relay and a real internal sendmail delivering into a
mailbox, with and without a running supervisor; and an internal server that refuses it."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import SmtpSink
from tests.relaykit.conftest import need_tool
from tests.support.mailbox_mta import MailboxMta
from tests.support.postfix_relay import PostfixRelay
from tests.support.procs import SupervisorProcess
from tests.support.sendmail import DAEMON_MC, RELAY_NAME, build_relay
from tests.support.sendmail_relay import SendmailRelay, check_mail
from tests.support.trickle import Trickle
from tunnelkeeper.config import load

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def internal_mta() -> Iterator[MailboxMta]:
    """A real sendmail delivering postmaster@example.org into a mailbox file. Tunnelled
    connections come from 127.0.0.2, so example.org must be its own, not relayed."""
    mta = MailboxMta(["example.org"])
    try:
        yield mta.start()
    finally:
        mta.close()


@pytest.fixture
def relay_to(make_sshd: Any, tmp_path: Path) -> Iterator[Any]:
    """A real sendmail relay whose mailertable sends example.org into the tunnel, whose
    forward's target is the given internal server. It delivers in the background (sendmail's
    default: it answers the submission at once and delivers after), and its way into the
    tunnel is a slow link (Trickle) that holds the end of each message back: the token (in
    the envelope sender) passes the forward well before the internal server has the message."""
    made: list[tuple[SendmailRelay, Trickle]] = []

    def make(internal: Any) -> SendmailRelay:
        relay = SendmailRelay(tmp_path, make_sshd(), internal, mode="background")
        link = Trickle(relay.listen, delay=0.5).start()
        made.append((relay, link))
        # The relay's mailertable and mailer dial the slow link, which dials the forward.
        view = tmp_path / "relay-view.toml"
        view.write_text(
            relay.config.read_text().replace(f"127.0.0.1:{relay.listen}", f"127.0.0.1:{link.port}")
        )
        relay.relay = build_relay(
            relay.relay.folder,
            load(view),
            extra_mc=DAEMON_MC.format(port=relay.mta).replace("`interactive'", "`background'"),
        )
        return relay.start()

    yield make
    for relay, link in made:
        relay.stop()
        link.stop()


def subject(token: str) -> str:
    return f"tunnelkeeper delivery test {token}"


def test_delivered_means_in_the_internal_mailbox(
    relay_to: Any, internal_mta: MailboxMta, outcome: dict[str, Any]
) -> None:
    relay = relay_to(internal_mta)
    code, result, took = check_mail(relay.config)
    (test,) = result["mail"]
    # Read the mailbox at once: exit 0 means the internal server already has it.
    assert internal_mta.has([subject(test["token"])]), (test, internal_mta.mailbox.read_text())
    assert code == 0 and test["ok"] and test["outcome"] == "delivered", test
    assert "the internal mail server took it" in test["detail"], test
    outcome.update(seconds=test["seconds"], run_s=round(took, 1), detail=test["detail"][:160])


def test_delivered_through_a_running_supervisor_means_in_the_mailbox(
    relay_to: Any, internal_mta: MailboxMta, outcome: dict[str, Any]
) -> None:
    relay = relay_to(internal_mta)
    supervisor = SupervisorProcess(relay.config)
    try:
        supervisor.wait_forward("up", 15)
        code, result, took = check_mail(relay.config)
        (test,) = result["mail"]
        assert internal_mta.has([subject(test["token"])]), (test, supervisor.log())
    finally:
        assert supervisor.stop() == 0
    assert code == 0 and test["outcome"] == "delivered", test
    assert "the internal mail server took it" in test["detail"], test
    assert result["tunnels"][0]["forwards"][0]["state"] == "up"  # the supervisor's forward
    outcome.update(seconds=test["seconds"], run_s=round(took, 1))


@pytest.fixture
def refusing_mta() -> Iterator[SmtpSink]:
    sink = SmtpSink(data_reply="554 5.7.1 Message refused by policy").start()
    yield sink
    sink.stop()


def test_an_internal_refusal_is_not_delivered(relay_to: Any, refusing_mta: SmtpSink) -> None:
    relay = relay_to(refusing_mta)
    code, result, _ = check_mail(relay.config, timeout=15)
    (test,) = result["mail"]
    assert refusing_mta.raw, "the message never reached the internal server"
    assert code == 1 and not test["ok"] and test["outcome"] == "internal-refused", test
    assert "the internal mail server refused it" in test["detail"], test
    assert "554 5.7.1 Message refused by policy" in test["detail"], test


def test_an_internal_refusal_through_a_running_supervisor(
    relay_to: Any, refusing_mta: SmtpSink
) -> None:
    relay = relay_to(refusing_mta)
    supervisor = SupervisorProcess(relay.config)
    try:
        supervisor.wait_forward("up", 15)
        code, result, _ = check_mail(relay.config, timeout=15)
    finally:
        assert supervisor.stop() == 0
    (test,) = result["mail"]
    assert code == 1 and test["outcome"] == "internal-refused", test
    assert "554 5.7.1 Message refused by policy" in test["detail"], test


def check_mail_naming_the_relay(config: Path, name: str) -> tuple[int, dict[str, Any]]:
    """check --mail with the relay's host given by name, in a mount namespace whose
    /etc/hosts says `name` is 127.0.0.1 (the host's own file is left alone)."""
    hosts = config.parent / "hosts"
    hosts.write_text(f"127.0.0.1 localhost\n127.0.0.1 {name}\n")
    config.write_text(config.read_text().replace('host = "127.0.0.1"', f'host = "{name}"', 1))
    known = config.read_text().split("known_hosts = ", 1)[1].split("\n", 1)[0].strip('"')
    pinned = Path(known).read_text()
    Path(known).write_text(pinned + pinned.replace("[127.0.0.1]", f"[{name}]"))
    proc = subprocess.run(
        [
            *(need_tool("unshare"), "-m", "sh", "-c", 'mount --bind "$0" /etc/hosts && exec "$@"'),
            *(str(hosts), sys.executable, "-m", "tunnelkeeper", "check", "-c", str(config)),
            *("--json", "--mail", "--mail-timeout", "20"),
        ],
        capture_output=True,
        text=True,
        timeout=80,
    )
    try:
        return proc.returncode, json.loads(proc.stdout)
    except json.JSONDecodeError:
        raise AssertionError(f"exit {proc.returncode}: {proc.stdout}{proc.stderr}") from None


def test_a_postfix_relay_pipelining_into_sendmail(
    make_sshd: Any, internal_mta: MailboxMta, tmp_path: Path, outcome: dict[str, Any]
) -> None:
    """Postfix delivers from its queue manager, after it answered the submission, and
    pipelines MAIL, RCPT and DATA to the internal sendmail: the reply to the end of the
    message is still the one waited for. The relay goes by a name (the test's sender is
    tunnelkeeper-test+TOKEN@ the relay's host: Postfix takes no bare address there, the
    internal sendmail no address literal or bare "localhost")."""
    relay = PostfixRelay(make_sshd(), internal_mta.port, tmp_path)
    try:
        relay.start()
        started = time.monotonic()
        code, result = check_mail_naming_the_relay(relay.config, RELAY_NAME)
        took = time.monotonic() - started
        (test,) = result["mail"]
        assert internal_mta.has([subject(test["token"])]), (test["detail"], relay.log()[-3000:])
    finally:
        relay.stop()
    assert code == 0 and test["outcome"] == "delivered", test
    assert "the internal mail server took it (250 " in test["detail"], test
    outcome.update(seconds=test["seconds"], run_s=round(took, 1))
