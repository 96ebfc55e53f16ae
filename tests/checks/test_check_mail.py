"""`check --mail` against a real sendmail as the relay's MTA (its cf built from the kit's own
mailers and mailertable) and a real sshd: the message goes to postmaster@DOMAIN on the relay,
which must hand it back through the tunnel; each way it can go wrong is named."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import SmtpSink
from tests.support.procs import SupervisorProcess
from tests.support.sendmail import RELAY_NAME
from tests.support.sendmail_relay import SendmailRelay, check_mail
from tests.support.sshd import wait_until

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def relay_with(make_sshd: Any, tmp_path: Path, smtp_sink: SmtpSink) -> Iterator[Any]:
    made: list[SendmailRelay] = []

    def make(mode: str = "interactive", access: str = "") -> SendmailRelay:
        relay = SendmailRelay(tmp_path, make_sshd(), smtp_sink, mode, access)
        made.append(relay)
        return relay

    yield make
    for relay in made:
        relay.stop()


def test_the_test_message_comes_back_through_the_tunnel(
    relay_with: Any, smtp_sink: SmtpSink, outcome: dict[str, Any]
) -> None:
    relay = relay_with().start()
    code, result, took = check_mail(relay.config)
    (test,) = result["mail"]
    outcome.update(seconds=test["seconds"], detail=test["detail"][:100], run_s=round(took, 1))
    assert code == 0 and test["ok"] and test["outcome"] == "delivered", test
    # It really was delivered to the internal server, marked as a test.
    wait_until(lambda: smtp_sink.raw, 10, what="the internal server to have it")
    text = smtp_sink.raw[-1].decode(errors="replace")
    assert f"X-Tunnelkeeper-Test: {test['token']}" in text
    assert f"by {RELAY_NAME}" in text  # sendmail's Received: line: it came by the relay


def test_a_running_supervisor_watches_its_own_forward(
    relay_with: Any, smtp_sink: SmtpSink, outcome: dict[str, Any]
) -> None:
    relay = relay_with().start()
    supervisor = SupervisorProcess(relay.config)
    try:
        supervisor.wait_forward("up", 15)
        code, result, _ = check_mail(relay.config)
    finally:
        assert supervisor.stop() == 0
    (test,) = result["mail"]
    outcome.update(seconds=test["seconds"])
    assert code == 0 and test["outcome"] == "delivered", test
    assert result["tunnels"][0]["forwards"][0]["state"] == "up"  # the supervisor's forward


def test_queue_only_relay_is_accepted_but_not_delivered(relay_with: Any) -> None:
    relay = relay_with(mode="queue").start()
    code, result, took = check_mail(relay.config, timeout=4)
    (test,) = result["mail"]
    assert code == 1 and test["outcome"] == "not-delivered", test
    assert "queue-only" in test["detail"] and "mailertable" in test["detail"]
    assert took < 4 + 30


def test_mailertable_map_not_rebuilt(relay_with: Any) -> None:
    relay = relay_with()
    (relay.relay.folder / "mailertable.db").unlink()
    relay.relay.folder.joinpath("mailertable.db").write_bytes(b"")  # an empty, stale map
    relay.start()
    code, result, _ = check_mail(relay.config, timeout=4)
    (test,) = result["mail"]
    assert code == 1 and test["outcome"] in ("not-delivered", "refused"), test
    assert "mailertable" in test["detail"] or "refused" in test["detail"]


def test_relaying_refused_is_named(relay_with: Any) -> None:
    """Connections from the relay's own loopback (where the test message comes from) may
    relay by sendmail's defaults; a strict relay says no at RCPT, and that is what is shown."""
    relay = relay_with(access='To:example.org ERROR:"550 5.7.1 Relaying denied"\n')
    relay.start()
    code, result, _ = check_mail(relay.config, timeout=4)
    (test,) = result["mail"]
    assert code == 1, test
    assert test["outcome"] == "refused" and "relaying refused" in test["detail"], test
    assert "RCPT TO postmaster@example.org" in test["detail"] and "550" in test["detail"]
