"""PROXY protocol against a real Postfix smtpd (Debian's package, unpacked) with
`smtpd_upstream_proxy_protocol = haproxy`: through a real sshd reverse forward, Postfix logs
and judges the relay's address, not this host's."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import smtplib
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.postfix import unpacked_postfix
from tests.support.relay_address import RELAY_ADDRESS, forward_config, forwarded
from tests.support.sendmail import port_open, stop_tree
from tests.support.sshd import free_port, wait_until

pytestmark = pytest.mark.timeout(60)


@dataclass
class Postfix:
    port: int
    log: Path

    def said(self) -> str:
        return self.log.read_text(errors="replace")


@contextlib.contextmanager
def postfix_smtpd() -> Iterator[Postfix]:
    """Postfix's master with one smtpd on a free loopback port that reads a PROXY header
    first and rejects every client by name and address; its log on stdout, into a file."""
    if os.geteuid() != 0 and not os.environ.get("CI"):
        pytest.skip("Postfix's master runs as root")
    root = unpacked_postfix()
    # Its own folder, one that mail_owner can reach (pytest's tmp_path is 0700 root's).
    folder = Path(tempfile.mkdtemp(prefix="tk-postfix-", dir="/tmp"))
    folder.chmod(0o755)
    try:
        yield from _run_postfix(root, folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _run_postfix(root: Path, folder: Path) -> Iterator[Postfix]:
    lib = root / "usr" / "lib" / "postfix"
    port = free_port()
    etc, queue, data = folder / "etc", folder / "queue", folder / "data"
    for path in (etc, queue, data):
        path.mkdir(parents=True)
    shutil.chown(data, "daemon", "mail")  # master's lock file: owned by mail_owner
    # What `postfix start` would create: master's pid folder, the service sockets' folders.
    (queue / "pid").mkdir(mode=0o755)
    for name, mode in (("private", 0o700), ("public", 0o710)):
        (queue / name).mkdir(mode=mode)
        shutil.chown(queue / name, "daemon", "mail")
    (etc / "main.cf").write_text(
        f"""\
compatibility_level = 3.6
queue_directory = {queue}
data_directory = {data}
daemon_directory = {lib / "sbin"}
shlib_directory = {lib}
command_directory = {root / "usr" / "sbin"}
meta_directory = {root / "etc" / "postfix"}
mail_owner = daemon
setgid_group = mail
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
myhostname = mail.example.org
mydestination =
local_recipient_maps =
import_environment = MAIL_CONFIG MAIL_DEBUG MAIL_LOGTAG TZ LANG=C LD_LIBRARY_PATH={lib}
maillog_file = /dev/stdout
smtpd_peername_lookup = no
smtpd_upstream_proxy_protocol = haproxy
smtpd_client_restrictions = reject
"""
    )
    (etc / "master.cf").write_text(
        f"""\
127.0.0.1:{port} inet n - n - - smtpd
postlog unix-dgram n - n - 1 postlogd
anvil unix - - n - 1 anvil
rewrite unix - - n - - trivial-rewrite
proxymap unix - - n - - proxymap
"""
    )
    log = folder / "maillog"
    with log.open("wb") as out:  # postlogd writes every daemon's lines here
        master = subprocess.Popen(
            [lib / "sbin" / "master", "-d", "-c", etc],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "LD_LIBRARY_PATH": str(lib)},
        )
    try:
        wait_until(lambda: port_open(port) or master.poll() is not None, 15, what="postfix")
        assert master.poll() is None, log.read_text(errors="replace")
        yield Postfix(port, log)
    finally:
        stop_tree(master)


def rcpt_from_the_relay(listen: int) -> tuple[int, str]:
    with smtplib.SMTP("127.0.0.1", listen, timeout=10) as client:
        client.ehlo("shell.relay.example.net")
        client.mail("someone@relay.example.net")
        code, text = client.rcpt("victim@third-party.example")
        return code, text.decode(errors="replace")


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_postfix_judges_the_relay(relay: Any, tmp_path: Path, version: str) -> None:
    with postfix_smtpd() as postfix:
        config, listen = forward_config(tmp_path, relay, postfix.port, proxy_protocol=version)

        async def go() -> tuple[int, str]:
            async with forwarded(config):
                return await asyncio.to_thread(rcpt_from_the_relay, listen)

        code, text = asyncio.run(go())
        done = f"disconnect from unknown[{RELAY_ADDRESS}]"
        wait_until(lambda: done in postfix.said(), 10, what="postfix's log")
        said = postfix.said()
    # Postfix took the header and saw the relay (as tunnelkeeper reached it) as the client.
    assert code == 554 and f"<unknown[{RELAY_ADDRESS}]>: Client host rejected" in text, text
    assert f"connect from unknown[{RELAY_ADDRESS}]" in said, said
    assert "127.0.0.2" not in said, said  # the connection's own address: never the client
