"""The real sendmail 8.17: a throwaway sendmail.cf with the generated mailers and mailertable."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import smtplib
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tunnelkeeper.config import Config, load
from tunnelkeeper.relaykit.mailertable import mailertable
from tunnelkeeper.relaykit.sendmail import mailer_definitions, mailer_definitions_m4

from .conftest import need_tool, run

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


def test_example_routes_domains_through_the_tunnel_mailer(tmp_path: Path, example: Config) -> None:
    relay = build_relay(tmp_path / "relay", example)
    out = relay.bt(
        "/parse user@example.org\n"
        "/parse user@host.sub.example.org\n"
        "/parse postmaster@example.com\n"
        "/parse user@example.net\n"
        "=M\n"
    )
    assert parsed(out) == [
        "mailer tk2525, host [127.0.0.1], user user@example.org",
        "mailer tk2525, host [127.0.0.1], user user@host.sub.example.org",
        "mailer tk2525, host [127.0.0.1], user postmaster@example.com",
        # A domain outside the map goes the usual way, untouched.
        "mailer esmtp, host example.net, user user@example.net",
    ]
    # The port is nowhere in the map: it comes from the mailer's A=, as sendmail parsed it.
    tk = mailer_line(out, "tk2525")
    assert tk.endswith("A=TCP $h 2525")
    flags = re.search(r" F=(\S+) ", tk)
    assert flags and "0" in flags.group(1)
    # Otherwise the very esmtp mailer of this sendmail.
    esmtp = mailer_line(out, "esmtp")
    assert re.sub(r"^mailer \d+ \(tk2525\): |F=\S+ |A=.*", "", tk) == re.sub(
        r"^mailer \d+ \(esmtp\): |F=\S+ |A=.*", "", esmtp
    )
    esmtp_flags = re.search(r" F=(\S+) ", esmtp)
    assert esmtp_flags and set(flags.group(1)) == set(esmtp_flags.group(1)) | {"0"}


def test_two_relays_ports_and_subdomains_off(tmp_path: Path, two_relays: Config) -> None:
    relay = build_relay(tmp_path / "relay", two_relays)
    out = relay.bt(
        "/parse a@lists.example.org\n"
        "/parse a@x.lists.example.org\n"
        "/parse a@example.com\n"
        "/parse a@host.example.com\n"
        "=M\n"
    )
    assert parsed(out) == [
        "mailer tk2525, host [127.0.0.1], user a@lists.example.org",
        "mailer tk2525, host [127.0.0.1], user a@x.lists.example.org",
        "mailer tk2526, host [127.0.0.1], user a@example.com",
        # subdomains = false for example.com: its subdomains are not routed.
        "mailer esmtp, host host.example.com, user a@host.example.com",
    ]
    assert mailer_line(out, "tk2526").endswith("A=TCP $h 2526")


def test_cf_lines_appended_to_sendmail_cf(tmp_path: Path, example: Config) -> None:
    relay = build_relay(tmp_path / "relay", example, m4_mailers=False)
    out = relay.bt("/parse user@example.org\n=M\n")
    assert parsed(out) == ["mailer tk2525, host [127.0.0.1], user user@example.org"]
    assert mailer_line(out, "tk2525").endswith("A=TCP $h 2525")


def test_local_domain_ignores_the_mailertable(tmp_path: Path, example: Config) -> None:
    """The README's warning: a domain in class w is delivered locally, mailertable or not."""
    relay = build_relay(tmp_path / "relay", example)
    (relay.folder / "local-host-names").write_text("example.org\n")
    out = relay.bt("/parse user@example.org\n")
    assert parsed(out) == ["mailer local, user user"]


def test_makemap_reads_every_line(tmp_path: Path, two_relays: Config) -> None:
    """makemap skips the # header and keeps each key once: dump the built map."""
    relay = build_relay(tmp_path / "relay", two_relays)
    dump = run([need_tool("makemap"), "-u", "hash", relay.folder / "mailertable"]).stdout
    entries = sorted(tuple(line.split()) for line in dump.splitlines())
    assert entries == sorted(
        [
            ("example.org", "tk2525:[127.0.0.1]"),
            (".example.org", "tk2525:[127.0.0.1]"),
            ("lists.example.org", "tk2525:[127.0.0.1]"),
            (".lists.example.org", "tk2525:[127.0.0.1]"),
            ("example.com", "tk2526:[127.0.0.1]"),
        ]
    )


# -- a real sendmail daemon delivering through the mailertable --------------------------------

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


def test_sendmail_daemon_delivers_through_the_tunnel_port(tmp_path: Path, smtp_sink: Any) -> None:
    """Mail for example.org, sent to the relay's port 25 stand-in, arrives at the sink that
    stands in for the relay end of the tunnel, by way of mailertable and the tk<port> mailer."""
    from tests.support.sshd import free_port, wait_until

    config_file = tmp_path / "tk.toml"
    config_file.write_text(
        "[[tunnel]]\n"
        'name = "relay1"\nhost = "relay.example.net"\nuser = "tunnel"\n'
        "[[tunnel.forward]]\n"
        f'name = "smtp"\nservice = "smtp"\nlisten = {smtp_sink.port}\ntarget = 25\n'
        'domains = ["example.org"]\n'
    )
    config = load(config_file)
    mta_port = free_port()
    relay = build_relay(tmp_path / "relay", config, extra_mc=DAEMON_MC.format(port=mta_port))
    daemon = subprocess.Popen(
        [
            need_tool("unshare"),
            "-u",
            "sh",
            "-c",
            f'hostname {RELAY_NAME} && exec "$0" -C "$1" -bD',
            need_tool("sendmail"),
            relay.cf,
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_until(
            lambda: port_open(mta_port) or daemon.poll() is not None, 15, what="sendmail to listen"
        )
        assert daemon.poll() is None, daemon.stdout.read() if daemon.stdout else ""
        with smtplib.SMTP("127.0.0.1", mta_port, timeout=20) as client:
            client.sendmail(
                "sender@example.net",
                ["postmaster@host.sub.example.org"],
                b"Subject: through the tunnel\r\n\r\nhello\r\n",
            )
        wait_until(lambda: smtp_sink.raw, 15, what="the sink to receive the message")
    finally:
        stop_tree(daemon)
    message = smtp_sink.raw[0].decode(errors="replace")
    assert "Subject: through the tunnel" in message
    assert f"by {RELAY_NAME}" in message  # sendmail's Received: line: it went through the relay


def port_open(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
    except OSError:
        return False
    return True
