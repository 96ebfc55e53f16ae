"""`check --mail` against a real sendmail as the relay's MTA (its cf built from the kit's own
mailers and mailertable) and a real sshd: the message goes to postmaster@DOMAIN on the relay,
which must hand it back through the tunnel; each way it can go wrong is named."""

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
from tests.support.configs import write_config
from tests.support.procs import SupervisorProcess
from tests.support.sendmail import DAEMON_MC, RELAY_NAME, build_relay, port_open, stop_tree
from tests.support.sshd import free_port, wait_until
from tunnelkeeper.config import load

pytestmark = pytest.mark.timeout(120)


class SendmailRelay:
    """sshd + a sendmail daemon on 127.0.0.1 that routes example.org into the tunnel."""

    def __init__(
        self, folder: Path, sshd: Any, sink: SmtpSink, mode: str = "interactive", access: str = ""
    ) -> None:
        self.listen, self.mta = free_port(), free_port()
        forward = {
            "name": "smtp",
            "service": "smtp",
            "listen": f"127.0.0.1:{self.listen}",
            "target": f"127.0.0.1:{sink.port}",
            "domains": ["example.org"],
        }
        sshd.set_authorized(
            options="restrict,port-forwarding,"
            f'permitlisten="127.0.0.1:{self.listen}",permitopen="127.0.0.1:{self.listen}",'
            f'permitopen="127.0.0.1:{self.mta}"'
        )
        self.config = write_config(
            folder / "tk.toml", sshd, [forward], relay_mta=f"127.0.0.1:{self.mta}"
        )
        mc = DAEMON_MC.format(port=self.mta).replace("`interactive'", f"`{mode}'")
        relay_folder = folder / "relay"
        if access:  # sendmail's access db: what a strict relay refuses
            mc += f"FEATURE(`access_db', `hash -o -T<TMPF> {relay_folder}/access')dnl\n"
            mc += "FEATURE(`blocklist_recipients')dnl\n"
        self.relay = build_relay(relay_folder, load(self.config), extra_mc=mc)
        if access:
            source = relay_folder / "access"
            source.write_text(access)
            subprocess.run(
                [need_tool("makemap"), "hash", str(source)],
                input=access,
                text=True,
                check=True,
                timeout=30,
            )
        self.daemon: subprocess.Popen[bytes] | None = None

    def start(self) -> SendmailRelay:
        self.daemon = subprocess.Popen(
            [
                *(need_tool("unshare"), "-u", "sh", "-c"),
                f'hostname {RELAY_NAME} && exec "$0" -C "$1" -bD',
                *(need_tool("sendmail"), str(self.relay.cf)),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(lambda: port_open(self.mta), 15, what="sendmail to listen")
        return self

    def stop(self) -> None:
        if self.daemon is not None:
            stop_tree(self.daemon)


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


def check_mail(config: Path, timeout: float = 20) -> tuple[int, dict[str, Any], float]:
    started = time.monotonic()
    proc = subprocess.run(
        [
            *(sys.executable, "-m", "tunnelkeeper", "check", "-c", str(config), "--json"),
            *("--mail", "--mail-timeout", str(timeout)),
        ],
        capture_output=True,
        text=True,
        timeout=timeout + 60,
    )
    try:
        return proc.returncode, json.loads(proc.stdout), time.monotonic() - started
    except json.JSONDecodeError:
        raise AssertionError(f"exit {proc.returncode}: {proc.stdout}{proc.stderr}") from None


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
