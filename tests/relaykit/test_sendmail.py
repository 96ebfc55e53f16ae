"""The real sendmail 8.17: a throwaway sendmail.cf with the generated mailers and mailertable."""

from __future__ import annotations

import re
import smtplib
import subprocess
from pathlib import Path
from typing import Any

from tests.support.sendmail import (
    DAEMON_MC,
    RELAY_NAME,
    build_relay,
    mailer_line,
    parsed,
    port_open,
    stop_tree,
)
from tunnelkeeper.config import Config, load

from .conftest import need_tool, run


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
