"""The real sendmail 8.17 as a relay for the tests: a throwaway sendmail.cf from a minimal .mc
with the generated mailers and mailertable, and a daemon's start and stop; and InternalSendmail,
the internal MTA as a site runs it, for the boundary checks."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.relaykit.conftest import need_tool, run
from tests.support.polling import port_open as port_open  # its users import it from here too
from tests.support.sshd import wait_until
from tunnelkeeper.config import Config, load
from tunnelkeeper.relaykit.mailertable import mailertable
from tunnelkeeper.relaykit.sendmail import mailer_definitions, mailer_definitions_m4

CF_M4 = Path("/usr/share/sendmail/cf/m4/cf.m4")
RELAY_NAME = "relay.example.net"


def mc_text(folder: Path, mailers: str, extra: str = "") -> str:
    """A minimal relay .mc: mailertable on, maps and queue in `folder`, no DNS, no syslog."""
    return f"""\
divert(-1)
divert(0)dnl
include(`{CF_M4}')dnl
VERSIONID(`tunnelkeeper relay-kit test')dnl
OSTYPE(`linux')dnl
dnl Maps under /tmp sit in a sticky, world-writable tree: sendmail refuses them otherwise.
define(`confDONT_BLAME_SENDMAIL', `TrustStickyBit')dnl
dnl "hosts files" keeps sendmail off DNS, which tests must not need.
define(`confSERVICE_SWITCH_FILE', `{folder}/service.switch')dnl
define(`confCW_FILE', `-o {folder}/local-host-names')dnl
FEATURE(`use_cw_file')dnl
define(`ALIAS_FILE', `{folder}/aliases')dnl
define(`QUEUE_DIR', `{folder}/queue')dnl
define(`confPID_FILE', `{folder}/sendmail.pid')dnl
define(`confSTATUS_FILE', `{folder}/statistics')dnl
{extra}FEATURE(`mailertable', `hash -o {folder}/mailertable')dnl
MAILER(`local')dnl
MAILER(`smtp')dnl
{mailers}"""


@dataclass
class Relay:
    folder: Path
    cf: Path
    port: int = 0  # the daemon's port, once one runs from this cf

    def bt(self, commands: str) -> str:
        """`sendmail -bt` under its own UTS namespace, so that it can qualify its host name."""
        unshare = need_tool("unshare")
        sendmail = need_tool("sendmail")
        proc = run(
            [
                unshare,
                "-u",
                "sh",
                "-c",
                f'hostname {RELAY_NAME} && exec "$0" -C "$1" -bt',
                sendmail,
                self.cf,
            ],
            input=commands,
            timeout=30,
        )
        return proc.stdout


def build_relay(
    folder: Path, config: Config, *, m4_mailers: bool = True, extra_mc: str = ""
) -> Relay:
    """sendmail.cf from an .mc (+ the generated mailers), and the generated mailertable map."""
    if os.geteuid() != 0 and not os.environ.get("CI"):
        pytest.skip("sendmail -C with maps and unshare -u need root")
    need_tool("m4")
    makemap = need_tool("makemap")
    need_tool("sendmail")
    if not CF_M4.exists():
        need_tool(str(CF_M4))  # sendmail-cf
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "queue").mkdir(mode=0o700, exist_ok=True)
    (folder / "service.switch").write_text("hosts files\n")
    (folder / "aliases").write_text("postmaster: root\n")
    mc = folder / "relay.mc"
    mc.write_text(mc_text(folder, mailer_definitions_m4(config) if m4_mailers else "", extra_mc))
    cf = folder / "sendmail.cf"
    cf.write_text(run([need_tool("m4"), mc]).stdout)
    if not m4_mailers:
        with cf.open("a") as out:
            out.write(mailer_definitions(config))
    source = folder / "mailertable"
    source.write_text(mailertable(config))
    run([makemap, "hash", folder / "mailertable"], input=source.read_text())
    return Relay(folder, cf)


def parsed(output: str) -> list[str]:
    """The `mailer M, host H, user U` verdicts of `/parse`, in order."""
    return re.findall(r"^mailer [^\s(]+, .*$", output, flags=re.MULTILINE)


def mailer_line(output: str, name: str) -> str:
    match = re.search(rf"^mailer \d+ \({name}\): .*$", output, flags=re.MULTILINE)
    assert match, f"mailer {name} not defined:\n{output}"
    return match.group(0)


DAEMON_MC = """\
dnl The relay accepts mail for the routed domain from anyone, as a real MX does.
RELAY_DOMAIN(`example.org')dnl
dnl Without DNS no sender domain resolves; a real relay does not need this.
FEATURE(`accept_unresolvable_domains')dnl
dnl No MSA on port 587 (on every address): only the one loopback listener.
FEATURE(`no_default_msa')dnl
DAEMON_OPTIONS(`Port={port}, Addr=127.0.0.1, Name=MTA')dnl
dnl Deliver while the client waits, so that the test need not run the queue.
define(`confDELIVERY_MODE', `interactive')dnl
"""


def stop_tree(proc: subprocess.Popen[bytes]) -> None:
    """End the daemon and every child it forked (children are its own, by pid)."""
    from tests.support.sshd import descendants

    for pid in [*descendants(proc.pid), proc.pid]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.wait(10)


INTERNAL_NAME = "mail.example.org"
# The internal MTA as a site runs it: no DNS in a test, one loopback listener, nothing else.
INTERNAL_MC = """\
FEATURE(`accept_unresolvable_domains')dnl
FEATURE(`no_default_msa')dnl
DAEMON_OPTIONS(`Port={port}, Addr=127.0.0.1, Name=MTA')dnl
"""


class InternalSendmail:
    """A real sendmail daemon on 127.0.0.1:`port`, the internal MTA; `access` (the text of its
    access map) switches FEATURE(access_db) on."""

    def __init__(self, folder: Path, config_path: Path, port: int, access: str | None) -> None:
        self.port = port
        mc = INTERNAL_MC.format(port=port)
        if access is not None:
            mc += f"FEATURE(`access_db', `hash -o -T<TMPF> {folder}/access')dnl\n"
        self.cf = build_relay(folder, load(config_path), extra_mc=mc).cf
        if access is not None:
            (folder / "access").write_text(access)
            subprocess.run(
                [need_tool("makemap"), "hash", str(folder / "access")],
                input=access,
                text=True,
                check=True,
                timeout=30,
            )
        self.daemon = subprocess.Popen(
            [
                *(need_tool("unshare"), "-u", "sh", "-c"),
                f'hostname {INTERNAL_NAME} && exec "$0" -C "$1" -bD',
                *(need_tool("sendmail"), str(self.cf)),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(lambda: port_open(port), 15, what="the internal sendmail to listen")

    def stop(self) -> None:
        stop_tree(self.daemon)


def sendmail_daemon(
    cf: Path | str, port: int, *flags: str, name: str = RELAY_NAME
) -> subprocess.Popen[bytes]:
    """`sendmail -C cf -bD [flags]` under host name `name` (a UTS namespace of its own), once it
    listens on `port`."""
    daemon = subprocess.Popen(
        [
            *(need_tool("unshare"), "-u", "sh", "-c"),
            f'hostname {name} && exec "$0" -C "$@"',
            *(need_tool("sendmail"), str(cf), "-bD", *flags),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_until(lambda: port_open(port), 15, what="sendmail to listen")
    return daemon
