"""`tunnelkeeper smarthost`: the real sendmail 8.17 routes through the lines it writes; a real
internal sendmail daemon sends a message out through an smtp local and a real sshd."""

from __future__ import annotations

import contextlib
import json
import os
import smtplib
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.procs import SupervisorProcess
from tests.support.sendmail import CF_M4, Relay, mailer_line, parsed, stop_tree
from tests.support.sshd import free_port, port_open, wait_until
from tunnelkeeper.cli import main
from tunnelkeeper.config import Config, load
from tunnelkeeper.relaykit.openssh import authorized_keys, sshd_config
from tunnelkeeper.relaykit.smarthost import postfix_relayhost, sendmail_mc

from .conftest import OUTBOUND, need_tool, run, ssh_args, wait_listening, write_local_config

# Not the sink's greeting name: sendmail refuses to send to a server that greets as itself.
INTERNAL_NAME = "internal.example.org"


@pytest.fixture
def as_root() -> None:
    if os.geteuid() != 0 and not os.environ.get("CI"):
        pytest.skip("sendmail -C with a private cf and unshare -u need root")


def internal_mc(folder: Path, smarthost: str, extra: str = "") -> str:
    """A minimal internal-host .mc: the generated lines before the MAILER lines, everything in
    `folder`, no DNS, and a local mailer that delivers nothing anywhere."""
    return f"""\
divert(-1)
divert(0)dnl
include(`{CF_M4}')dnl
VERSIONID(`tunnelkeeper smarthost test')dnl
OSTYPE(`linux')dnl
define(`confDONT_BLAME_SENDMAIL', `TrustStickyBit')dnl
define(`confSERVICE_SWITCH_FILE', `{folder}/service.switch')dnl
define(`confCW_FILE', `-o {folder}/local-host-names')dnl
FEATURE(`use_cw_file')dnl
define(`ALIAS_FILE', `{folder}/aliases')dnl
define(`QUEUE_DIR', `{folder}/queue')dnl
define(`confPID_FILE', `{folder}/sendmail.pid')dnl
define(`confSTATUS_FILE', `{folder}/statistics')dnl
dnl Nothing is ever delivered on this host: local mail (a bounce, say) goes to /bin/true.
define(`LOCAL_MAILER_PATH', `/bin/true')dnl
{extra}{smarthost}MAILER(`local')dnl
MAILER(`smtp')dnl
"""


def build_internal(folder: Path, smarthost: str, extra: str = "") -> Relay:
    """sendmail.cf for the internal mail server, from the minimal .mc and `smarthost`."""
    need_tool("sendmail")
    m4 = need_tool("m4")
    if not CF_M4.exists():
        need_tool(str(CF_M4))  # sendmail-cf
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "queue").mkdir(mode=0o700, exist_ok=True)
    (folder / "service.switch").write_text("hosts files\n")
    (folder / "aliases").write_text("")
    (folder / "local-host-names").write_text(f"{INTERNAL_NAME}\nexample.org\n")
    mc = folder / "internal.mc"
    mc.write_text(internal_mc(folder, smarthost, extra))
    cf = folder / "sendmail.cf"
    cf.write_text(run([m4, mc]).stdout)
    return Relay(folder, cf)


def test_sendmail_routes_everything_not_local_to_the_local_port(
    as_root: None, tmp_path: Path, outbound: Config
) -> None:
    internal = build_internal(tmp_path / "internal", sendmail_mc(outbound, "submission"))
    out = internal.bt(
        "3,0 user@example.com\n"
        "/parse someone@example.net\n"
        "/parse user@[192.0.2.1]\n"
        "/parse postmaster@example.org\n"
        "=M\n"
    )
    assert "$# relay $@ [ 127 . 0 . 0 . 1 ] $: user < @ example . com >" in out
    assert parsed(out) == [
        "mailer relay, host [127.0.0.1], user someone@example.net",
        # relay: in SMART_HOST: an address literal takes the tunnel too, not esmtp to port 25.
        "mailer relay, host [127.0.0.1], user user@[192.0.2.1]",
        "mailer local, user postmaster",
    ]
    # The port is in the relay mailer's arguments, as this sendmail parsed them.
    assert mailer_line(out, "relay").endswith("A=TCP $h 2587")
    assert mailer_line(out, "esmtp").endswith("A=TCP $h")


def test_sendmail_ipv6_listen(as_root: None, tmp_path: Path) -> None:
    config_file = tmp_path / "tk.toml"
    config_file.write_text(
        '[[tunnel]]\nname = "v6"\nhost = "relay.example.net"\nuser = "tunnel"\n'
        '[[tunnel.local]]\nname = "smarthost"\nservice = "smtp"\nlisten = "[::1]:2526"\n'
        "target = 25\n"
    )
    text = sendmail_mc(load(config_file))
    internal = build_internal(tmp_path / "internal", text)
    out = internal.bt("/parse someone@example.net\n=M\n")
    assert "define(`SMART_HOST', `relay:[IPv6:::1]')dnl" in text
    # sendmail prints host names in lower case.
    assert parsed(out) == ["mailer relay, host [ipv6:::1], user someone@example.net"]
    assert mailer_line(out, "relay").endswith("A=TCP $h 2526")
    assert postfix_relayhost(load(config_file)).endswith("\nrelayhost = [::1]:2526\n")


def test_only_dnl_comments_and_defines(outbound: Config) -> None:
    """Everything but the two defines is a dnl comment, which m4 drops whole."""
    lines = sendmail_mc(outbound, "smarthost", "out").splitlines()
    assert [line for line in lines if not line.startswith("dnl ")] == [
        "define(`SMART_HOST', `relay:[127.0.0.1]')dnl",
        "define(`RELAY_MAILER_ARGS', `TCP $h 2526')dnl",
    ]
    postfix = postfix_relayhost(outbound, "smarthost", "outonly").splitlines()
    assert [line for line in postfix if not line.startswith("#")] == [
        "relayhost = [127.0.0.1]:2527"
    ]


@pytest.mark.parametrize(
    ("argv", "names"),
    [
        ([], ["out/smarthost", "out/submission", "outonly/smarthost", "--local NAME"]),
        (["--local", "smarthost"], ["out/smarthost", "outonly/smarthost", "--tunnel NAME"]),
        (["--local", "nope"], ["'nope'", "out/smarthost", "out/submission"]),
        (["--postfix"], ["--local NAME"]),
    ],
)
def test_cli_exit_2_names_the_locals(
    argv: list[str], names: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["smarthost", "-c", str(OUTBOUND), *argv]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert str(OUTBOUND) in err
    for name in names:
        assert name in err


def test_cli_without_smtp_locals(example_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["smarthost", "-c", str(example_path)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and 'no [[tunnel.local]] with service = "smtp"' in err


def test_cli_picks_one(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["smarthost", "-c", str(OUTBOUND), "--tunnel", "outonly"]
    assert main([*argv, "--postfix"]) == 0
    assert capsys.readouterr().out.endswith("relayhost = [127.0.0.1]:2527\n")
    assert main(argv) == 0
    assert "`TCP $h 2527'" in capsys.readouterr().out


# -- a real internal sendmail daemon sending through the smarthost ----------------------------

DAEMON_MC = """\
dnl The test's sender domain does not resolve: there is no DNS here.
FEATURE(`accept_unresolvable_domains')dnl
dnl No MSA on port 587 (on every address): only the one loopback listener.
FEATURE(`no_default_msa')dnl
DAEMON_OPTIONS(`Port={port}, Addr=127.0.0.1, Name=MTA')dnl
dnl Deliver while the client waits, so that the test need not run the queue.
define(`confDELIVERY_MODE', `interactive')dnl
"""


@contextlib.contextmanager
def internal_sendmail(folder: Path, smarthost: str) -> Iterator[Relay]:
    """An internal sendmail daemon (as root, under its own host name) on a free loopback port."""
    port = free_port()
    internal = build_internal(folder, smarthost, DAEMON_MC.format(port=port))
    cf_text = internal.cf.read_text()
    # Only the one loopback listener; the relay mailer dials the smarthost port.
    assert [ln for ln in cf_text.splitlines() if ln.startswith("O DaemonPortOptions")] == [
        f"O DaemonPortOptions=Port={port}, Addr=127.0.0.1, Name=MTA"
    ]
    daemon = subprocess.Popen(
        [
            need_tool("unshare"),
            "-u",
            "sh",
            "-c",
            f'hostname {INTERNAL_NAME} && exec "$0" -C "$1" -bD',
            need_tool("sendmail"),
            internal.cf,
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_until(
            lambda: port_open(port) or daemon.poll() is not None, 15, what="sendmail to listen"
        )
        assert daemon.poll() is None, daemon.stdout.read() if daemon.stdout else ""
        internal.port = port
        yield internal
    finally:
        stop_tree(daemon)


def send_out(port: int, subject: str) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=20) as client:
        client.sendmail(
            f"alice@{INTERNAL_NAME}",
            ["bob@example.net"],
            f"Subject: {subject}\r\n\r\nout through the tunnel\r\n".encode(),
        )


def locals_relay(make_sshd: Any, tmp_path: Path, sink_port: int) -> tuple[Any, Config, int]:
    """A real sshd set up from the generated key line and Match block for a tunnel whose only
    entry is an smtp local to the sink (the relay's MTA); returns it, the config, the port."""
    if sys.platform != "linux":
        pytest.skip("unshare -u is Linux only")
    need_tool("ssh")
    sshd = make_sshd(start=False)
    local_port = free_port()
    config = write_local_config(tmp_path / "tk.toml", sshd, local_port, sink_port)
    sshd.authorized_keys.write_text(authorized_keys(config))
    sshd.extra_config = sshd_config(config)
    sshd.start()
    return sshd, config, local_port


def mailq(internal: Relay) -> str:
    """The internal sendmail's queue, with the reason each message waits."""
    proc = run(
        [
            need_tool("unshare"),
            "-u",
            "sh",
            "-c",
            f'hostname {INTERNAL_NAME} && exec "$0" -C "$1" -bp',
            need_tool("sendmail"),
            internal.cf,
        ],
        check=False,
        timeout=15,
    )
    return proc.stdout + proc.stderr


def assert_relayed(sink: Any, subject: str, internal: Relay) -> None:
    try:
        wait_until(lambda: sink.raw, 20, what="the relay's MTA to receive the message")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\ninternal queue:\n{mailq(internal)}") from None
    message = sink.raw[0].decode(errors="replace")
    assert f"Subject: {subject}" in message
    assert f"by {INTERNAL_NAME}" in message  # the internal sendmail's Received: line


@pytest.mark.timeout(90)
def test_internal_sendmail_through_openssh_local_forward(
    as_root: None, tmp_path: Path, make_sshd: Any, smtp_sink: Any
) -> None:
    """The generated lines with OpenSSH's `ssh -L` as the tunnel: sendmail dials the port, the
    relay's sshd lets the channel to its MTA through (permitopen), the MTA gets the mail."""
    sshd, config, local_port = locals_relay(make_sshd, tmp_path, smtp_sink.port)
    forward = subprocess.Popen(
        ssh_args(sshd, "-N", "-L", f"127.0.0.1:{local_port}:127.0.0.1:{smtp_sink.port}"),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_listening(local_port, forward)
        with internal_sendmail(tmp_path / "internal", sendmail_mc(config)) as internal:
            send_out(internal.port, "via ssh -L")
            assert_relayed(smtp_sink, "via ssh -L", internal)
    finally:
        forward.terminate()
        forward.wait(10)


@pytest.mark.timeout(90)
def test_internal_sendmail_through_tunnelkeeper_local(
    as_root: None, tmp_path: Path, make_sshd: Any, smtp_sink: Any
) -> None:
    """internal sendmail -> 127.0.0.1:LOCAL (tunnelkeeper's local listen) -> direct-tcpip
    through the real sshd -> the relay's MTA (the sink)."""
    _sshd, config, local_port = locals_relay(make_sshd, tmp_path, smtp_sink.port)
    sup = SupervisorProcess(config.path)
    try:
        wait_until(
            lambda: port_open(local_port) or sup.proc.poll() is not None,
            10,
            what="tunnelkeeper's local listen",
        )
        assert sup.proc.poll() is None, sup.log()
        with internal_sendmail(tmp_path / "internal", sendmail_mc(config)) as internal:
            t0 = time.monotonic()
            send_out(internal.port, "via tunnelkeeper")
            assert_relayed(smtp_sink, "via tunnelkeeper", internal)
            print(f"\nMEASURED smarthost: submitted to relayed {time.monotonic() - t0:.3f}s")
        st = sup.wait_status(
            lambda s: any(f.direction == "local" and f.connections_total for f in s.forwards),
            10,
            "the local's connection counted",
        )
        (local,) = [f for f in st.forwards if f.direction == "local"]
        assert (local.name, local.state, str(local.listen)) == (
            "smarthost",
            "up",
            f"127.0.0.1:{local_port}",
        )
    finally:
        assert sup.stop() == 0


@pytest.mark.timeout(90)
def test_check_reports_the_local(make_sshd: Any, tmp_path: Path, smtp_sink: Any) -> None:
    """With no supervisor holding it, check opens the local and probes the relay's MTA."""
    _sshd, config, _port = locals_relay(make_sshd, tmp_path, smtp_sink.port)
    plain = subprocess.run(
        [sys.executable, "-m", "tunnelkeeper", "check", "-c", str(config.path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert plain.returncode == 0, plain.stdout + plain.stderr
    line = next(ln for ln in plain.stdout.splitlines() if "smarthost" in ln)
    local_listen = str(config.tunnel[0].local[0].listen)
    assert line.startswith(
        f"  local smarthost {local_listen} -> relay -> 127.0.0.1:{smtp_sink.port}: up; probe ok"
    ), plain.stdout
    assert "via relay: 220 mail.example.org" in line
    result = subprocess.run(
        [sys.executable, "-m", "tunnelkeeper", "check", "--json", "-c", str(config.path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    local = json.loads(result.stdout)["tunnels"][0]["local"][0]
    assert local["name"] == "smarthost" and local["target"] == f"127.0.0.1:{smtp_sink.port}"
    assert local["probe"]["ok"] is True
