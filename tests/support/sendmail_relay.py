"""A real sendmail relay for `check --mail` (its cf built from the kit's own mailers and
mailertable), and `check --mail` run as a process."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.conftest import SmtpSink
from tests.relaykit.conftest import need_tool
from tests.support.configs import write_config
from tests.support.sendmail import (
    DAEMON_MC,
    build_relay,
    sendmail_daemon,
    stop_tree,
)
from tests.support.sshd import free_port
from tunnelkeeper.config import load


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
        self.daemon = sendmail_daemon(self.relay.cf, self.mta)
        return self

    def stop(self) -> None:
        if self.daemon is not None:
            stop_tree(self.daemon)


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
