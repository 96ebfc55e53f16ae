"""A real internal mail server for the tests: a sendmail daemon on 127.0.0.1 that takes
example.org (and the names given) as its own and delivers postmaster's mail into an mbox file,
as an internal host's MTA delivers to a mailbox. It can be stopped and started again.

The `internal_mta` fixture (offered by tests/conftest.py) is one such server, and ListenWatch
times when a relay's listen port first answers, against the mailbox's arrival times."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.relaykit.conftest import need_tool
from tests.support.sendmail import CF_M4, port_open, stop_tree
from tests.support.sshd import free_port, wait_until

NAME = "mail.example.org"

MC = """\
divert(-1)
divert(0)dnl
include(`{cf_m4}')dnl
VERSIONID(`tunnelkeeper test: the internal mail server')dnl
OSTYPE(`linux')dnl
define(`confDONT_BLAME_SENDMAIL', `TrustStickyBit')dnl
define(`confSERVICE_SWITCH_FILE', `{folder}/service.switch')dnl
define(`confCW_FILE', `-o {folder}/local-host-names')dnl
FEATURE(`use_cw_file')dnl
define(`ALIAS_FILE', `{folder}/aliases')dnl
define(`QUEUE_DIR', `{folder}/queue')dnl
define(`confPID_FILE', `{folder}/sendmail.pid')dnl
define(`confSTATUS_FILE', `{folder}/statistics')dnl
FEATURE(`accept_unresolvable_domains')dnl
FEATURE(`no_default_msa')dnl
DAEMON_OPTIONS(`Port={port}, Addr=127.0.0.1, Name=MTA')dnl
define(`confDELIVERY_MODE', `interactive')dnl
MAILER(`local')dnl
MAILER(`smtp')dnl
"""


class MailboxMta:
    """`start()`, `stop()`, and the mailbox: what it delivered, and when each arrived."""

    def __init__(self, local_names: list[str]) -> None:
        if os.geteuid() != 0 and not os.environ.get("CI"):
            pytest.skip("a sendmail daemon with its own cf needs root")
        for tool in ("m4", "sendmail", "unshare"):
            need_tool(tool)
        if not CF_M4.exists():
            need_tool(str(CF_M4))
        self.port = free_port()
        # File deliveries run as sendmail's default user: a folder it can reach, not tmp_path.
        self.folder = Path(tempfile.mkdtemp(prefix="tk-mailbox-", dir="/tmp"))
        self.folder.chmod(0o755)
        box = self.folder / "box"
        box.mkdir(mode=0o755)
        self.mailbox = box / "mailbox"
        self.mailbox.touch(mode=0o600)
        shutil.chown(self.mailbox, "daemon")
        (self.folder / "queue").mkdir(mode=0o700)
        (self.folder / "service.switch").write_text("hosts files\n")
        (self.folder / "local-host-names").write_text("\n".join([NAME, *local_names]) + "\n")
        (self.folder / "aliases").write_text(
            f"postmaster: {self.mailbox}\nroot: {self.mailbox}\nMAILER-DAEMON: {self.mailbox}\n"
        )
        mc = self.folder / "internal.mc"
        mc.write_text(MC.format(cf_m4=CF_M4, folder=self.folder, port=self.port))
        self.cf = self.folder / "internal.cf"
        self.cf.write_text(
            subprocess.run(
                [need_tool("m4"), str(mc)], capture_output=True, text=True, check=True, timeout=30
            ).stdout
        )
        self._sendmail("-bi")  # the aliases map
        self.daemon: subprocess.Popen[bytes] | None = None
        self.seen: dict[str, float] = {}  # subject -> time.monotonic() it was first seen

    def _sendmail(self, *args: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [
                *(need_tool("unshare"), "-u", "sh", "-c"),
                f'hostname {NAME} && exec "$0" -C "$@"',
                *(need_tool("sendmail"), str(self.cf), *args),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def start(self) -> MailboxMta:
        """Start the daemon; return once it listens."""
        self.daemon = self._sendmail("-bD")
        wait_until(lambda: port_open(self.port), 15, 0.01, "the internal sendmail to listen")
        return self

    def stop(self) -> None:
        if self.daemon is not None:
            stop_tree(self.daemon)
            self.daemon = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)

    def has(self, subjects: list[str]) -> bool:
        """Whether every one of `subjects` is in the mailbox (noting when each first was)."""
        text = self.mailbox.read_text(errors="replace")
        now = time.monotonic()
        for subject in subjects:
            if f"Subject: {subject}\n" in text:
                self.seen.setdefault(subject, now)
        return all(s in self.seen for s in subjects)

    def count(self, subject: str) -> int:
        return self.mailbox.read_text(errors="replace").count(f"Subject: {subject}\n")


@pytest.fixture
def internal_mta() -> Iterator[MailboxMta]:
    """The internal mail server: a real sendmail delivering into a mailbox file."""
    mta = MailboxMta(["example.org", "host.sub.example.org"])
    try:
        yield mta.start()
    finally:
        mta.close()


class ListenWatch:
    """When the relay's listen port first accepted a connection (the forward up), polled
    every 5 ms from a thread: a finer clock than the status the supervisor publishes."""

    def __init__(self, port: int, timeout: float = 30.0) -> None:
        self.port, self.timeout = port, timeout
        self.at: float | None = None
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if port_open(self.port):
                self.at = time.monotonic()
                return
            time.sleep(0.005)

    def up(self) -> float:
        self._thread.join(self.timeout)
        assert self.at is not None, f"nothing listened on {self.port}"
        return self.at
