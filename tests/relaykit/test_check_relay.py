"""The kit's check-relay.sh against the real programs: sshd -T, sendmail -bt, named-checkconf.

A relay is staged in a test folder from the kit's own files (a sendmail.cf built from an .mc with
the kit's mailers, the mailertable map, a named.conf that includes the stanza, a real sshd with
the key line and the Match block, and the forwards held open by OpenSSH's ssh -R); the script
runs with its paths pointed there and must pass, then fail for each mistake an admin can make.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.sendmail import (
    DAEMON_MC,
    RELAY_NAME,
    build_relay,
    port_open,
    sendmail_daemon,
    stop_tree,
)
from tests.support.sshd import free_port, wait_until
from tunnelkeeper.config import Config
from tunnelkeeper.relaykit import dropbear
from tunnelkeeper.relaykit.bind import named_conf
from tunnelkeeper.relaykit.common import SshServer
from tunnelkeeper.relaykit.kit import relay_kit, write_kit
from tunnelkeeper.relaykit.kit_readme import CHECK_SCRIPT
from tunnelkeeper.relaykit.openssh import authorized_keys, sshd_config

from .conftest import need_tool, run, ssh_args, write_tunnel_config

pytestmark = pytest.mark.timeout(120)


@dataclass
class Staged:
    kit: Path
    env: dict[str, str]
    relay: Any
    config: Config
    listens: tuple[int, int]

    def check(self, *, via: list[str] | None = None) -> tuple[int, list[str]]:
        """Run the script as the admin would, from the kit's folder; (status, output lines)."""
        proc = subprocess.run(
            [*(via or []), "sh", CHECK_SCRIPT],
            cwd=self.kit,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.stderr == "", proc.stderr
        return proc.returncode, proc.stdout.splitlines()


class RelayMta:
    """The relay's own sendmail daemon, which the script asks for ETRN (as tunnelkeeper does)."""

    def __init__(self, folder: Path, config: Config) -> None:
        self.folder, self.config = folder, config
        self.port = free_port()
        self.daemon: subprocess.Popen[bytes] | None = None

    def start(self, extra_mc: str = "") -> RelayMta:
        self.stop()
        mc = DAEMON_MC.format(port=self.port) + extra_mc
        cf = build_relay(self.folder, self.config, extra_mc=mc).cf
        self.daemon = sendmail_daemon(cf, self.port)
        return self

    def stop(self) -> None:
        if self.daemon is not None:
            stop_tree(self.daemon)
            self.daemon = None


@pytest.fixture
def relay_mta(tmp_path: Path, example: Config) -> Iterator[RelayMta]:
    mta = RelayMta(tmp_path / "relay-mta", example)
    yield mta.start()
    mta.stop()


def stage(folder: Path, relay: Any, sshd: SshServer, mta: RelayMta) -> Staged:
    smtp, dns = free_port(), free_port()
    config = write_tunnel_config(folder / "tk.toml", relay, smtp, dns, 25)
    kit = folder / "kit"
    write_kit(relay_kit(config, sshd=sshd), kit)
    mail = build_relay(folder / "mail", config)
    # sendmail -bt wants a qualified host name: give it one in a UTS namespace of its own.
    wrapper = folder / "sendmail"
    wrapper.write_text(
        "#!/bin/sh\n"
        f'exec {need_tool("unshare")} -u sh -c \'hostname {RELAY_NAME} && exec "$0" "$@"\' '
        f'{need_tool("sendmail")} "$@"\n'
    )
    wrapper.chmod(0o755)
    named = folder / "named"
    named.mkdir()
    (named / "named.conf.tunnelkeeper").write_text(named_conf(config))
    (named / "named.conf").write_text(
        f'options {{ directory "{named}"; }};\ninclude "{named / "named.conf.tunnelkeeper"}";\n'
    )
    env = {
        "PATH": f"{os.path.dirname(need_tool('named-checkconf'))}:/usr/sbin:/usr/bin:/sbin:/bin",
        "TK_USER": relay.user,
        "TK_SENDMAIL": str(wrapper),
        "TK_SENDMAIL_CF": str(mail.cf),
        "TK_MAILERTABLE": str(mail.folder / "mailertable"),
        "TK_NAMED_CONF": str(named / "named.conf"),
        "TK_RELAY_MTA": f"127.0.0.1:{mta.port}",
    }
    return Staged(kit, env, relay, config, (smtp, dns))


@pytest.fixture
def forwards() -> Iterator[Callable[[Staged], None]]:
    """Open both of a staged kit's forwards with OpenSSH's ssh -R, as the tunnel would."""
    procs: list[subprocess.Popen[bytes]] = []

    def open_(staged: Staged) -> None:
        smtp, dns = staged.listens
        args = ["-N", "-R", f"127.0.0.1:{smtp}:127.0.0.1:9", "-R", f"127.0.0.1:{dns}:127.0.0.1:9"]
        proc = subprocess.Popen(
            ssh_args(staged.relay, *args),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        procs.append(proc)
        wait_until(lambda: port_open(smtp) and port_open(dns), 10, what="both forwards")

    yield open_
    for proc in procs:
        proc.terminate()
        proc.wait(10)


@pytest.fixture
def openssh_relay(tmp_path: Path, make_sshd: Any, forwards: Any, relay_mta: RelayMta) -> Staged:
    if os.geteuid() != 0:
        pytest.skip("the script runs as root on the relay")
    for tool in ("ssh", "sshd", "named-checkconf"):
        need_tool(tool)
    sshd = make_sshd(start=False)
    staged = stage(tmp_path, sshd, "openssh", relay_mta)
    sshd.authorized_keys.write_text(authorized_keys(staged.config))
    sshd.extra_config = sshd_config(staged.config)
    sshd.start()
    staged.env |= {
        "TK_AUTHORIZED_KEYS": str(sshd.authorized_keys),
        "TK_SSHD": need_tool("sshd"),
        "TK_SSHD_CONFIG": str(sshd.config_path),
    }
    forwards(staged)
    return staged


def failures(lines: list[str]) -> list[str]:
    assert lines and all(line.startswith(("ok ", "FAIL ")) for line in lines), lines
    return [line for line in lines if line.startswith("FAIL")]


def kit_scripts(folder: Path, config: Config) -> list[Path]:
    scripts = []
    for sshd in ("openssh", "dropbear"):
        write_kit(relay_kit(config, sshd=sshd), folder / sshd)
        scripts.append(folder / sshd / CHECK_SCRIPT)
    return scripts


def test_script_is_posix_sh(tmp_path: Path, example: Config) -> None:
    for script in kit_scripts(tmp_path, example):
        assert script.stat().st_mode & 0o777 == 0o755
        assert script.read_text().startswith("#!/bin/sh\n")
        for shell in ("sh", "dash", "bash"):
            if shutil.which(shell):
                run([shell, "-n", script])


def test_script_is_shellcheck_clean(tmp_path: Path, example: Config) -> None:
    shellcheck = need_tool("shellcheck")
    for script in kit_scripts(tmp_path, example):
        run([shellcheck, "--shell=sh", "--severity=style", script])


def test_everything_in_place_passes(openssh_relay: Staged) -> None:
    status, lines = openssh_relay.check()
    assert failures(lines) == []
    assert status == 0
    # One line for each thing the README asks for.
    text = "\n".join(lines)
    for expected in (
        "has the kit's key line",
        "sshd -T for root: permitlisten",
        "sshd -T for root: allowstreamlocalforwarding no",
        "sendmail -bt: postmaster@example.org goes to mailer tk",
        "sendmail -bt: postmaster@sub.example.org goes to mailer tk",
        "mailertable.db is newer than",
        "named-checkconf accepts",
        "named.conf has zone example.org",
        "answers ETRN @example.org: 250 2.0.0 Queuing for node @example.org started",
        f"something listens on 127.0.0.1:{openssh_relay.listens[0]}",
        f"something listens on 127.0.0.1:{openssh_relay.listens[1]}",
    ):
        assert expected in text, expected


def break_key(s: Staged) -> None:
    Path(s.env["TK_AUTHORIZED_KEYS"]).write_text(
        Path(f"{s.relay.client_key}.pub").read_text()  # the bare key, without the options
    )


def break_match_block(s: Staged) -> None:
    s.relay.extra_config = ""
    s.relay.write_config()


def break_map_age(s: Staged) -> None:
    source = Path(s.env["TK_MAILERTABLE"])
    later = time.time() + 60
    os.utime(source, (later, later))  # edited after the last makemap


def break_map_content(s: Staged) -> None:
    source = Path(s.env["TK_MAILERTABLE"])
    source.write_text("# nothing routed\n")
    run([need_tool("makemap"), "hash", source], input="")


def break_named_include(s: Staged) -> None:
    conf = Path(s.env["TK_NAMED_CONF"])
    conf.write_text(conf.read_text().splitlines()[0] + "\n")


def break_named_syntax(s: Staged) -> None:
    stanza = Path(s.env["TK_NAMED_CONF"]).with_name("named.conf.tunnelkeeper")
    stanza.write_text(stanza.read_text().replace("tcp-only yes;", "tcp-only yes"))


@pytest.mark.parametrize(
    ("mistake", "expected"),
    [
        (break_key, "has the kit's key line"),
        (break_match_block, "sshd -T for root: permitlisten"),
        (break_map_age, "mailertable.db is newer than"),
        (break_map_content, "sendmail -bt: postmaster@example.org goes to mailer tk"),
        (break_named_include, "named.conf has zone example.org"),
        (break_named_syntax, "named-checkconf accepts"),
    ],
    ids=lambda v: v.__name__ if callable(v) else "",
)
def test_each_mistake_fails(
    mistake: Callable[[Staged], None], expected: str, openssh_relay: Staged
) -> None:
    mistake(openssh_relay)
    status, lines = openssh_relay.check()
    failed = failures(lines)
    assert status == 1
    assert failed and all(expected in line for line in failed[:1]), failed
    assert any(expected in line for line in failed), failed


def test_a_relay_mta_without_etrn_fails(openssh_relay: Staged, relay_mta: RelayMta) -> None:
    """PrivacyOptions noetrn: held mail would wait for the next queue run; the script says
    what sendmail answered and what to change."""
    relay_mta.start(extra_mc="define(`confPRIVACY_FLAGS', `noetrn')dnl\n")
    status, lines = openssh_relay.check()
    failed = failures(lines)
    assert status == 1 and len(failed) == 1, failed
    assert "answers ETRN @example.org with 250, not: 502 5.7.0" in failed[0], failed
    assert "no noetrn in PrivacyOptions" in failed[0]
    relay_mta.stop()  # nobody there
    status, lines = openssh_relay.check()
    assert status == 1
    assert [line for line in failures(lines) if "not: cannot connect" in line], lines


def test_tunnel_down_fails(tmp_path: Path, make_sshd: Any, relay_mta: RelayMta) -> None:
    """No forwards held open: the listeners are missing, and only they fail."""
    if os.geteuid() != 0:
        pytest.skip("the script runs as root on the relay")
    sshd = make_sshd(start=False)
    staged = stage(tmp_path, sshd, "openssh", relay_mta)
    sshd.authorized_keys.write_text(authorized_keys(staged.config))
    sshd.extra_config = sshd_config(staged.config)
    sshd.write_config()
    staged.env |= {
        "TK_AUTHORIZED_KEYS": str(sshd.authorized_keys),
        "TK_SSHD": need_tool("sshd"),
        "TK_SSHD_CONFIG": str(sshd.config_path),
    }
    status, lines = staged.check()
    assert status == 1
    assert [line.split(":")[0] for line in failures(lines)] == [
        "FAIL nothing listens on 127.0.0.1",
        "FAIL nothing listens on 127.0.0.1",
    ]


def test_dropbear_kit_passes_inside_dropbears_namespace(
    tmp_path: Path, make_dropbear: Any, forwards: Any, relay_mta: RelayMta
) -> None:
    """On a Dropbear relay the script checks the account's shell and dropbear's -K/-j/-k.
    It runs in the daemon's mount namespace, where the test account exists."""
    relay = make_dropbear()
    staged = stage(tmp_path, relay, "dropbear", relay_mta)
    relay.flags = tuple(dropbear.flags(staged.config.tunnel[0]))
    relay.set_authorized(dropbear.authorized_keys(staged.config))
    relay.start()
    forwards(staged)

    def inside() -> list[str]:  # nsenter would start in the daemon's folder otherwise
        return [need_tool("nsenter"), "-t", str(relay.proc.pid), "-m", f"--wd={staged.kit}"]

    status, lines = staged.check(via=inside())
    assert failures(lines) == [] and status == 0
    text = "\n".join(lines)
    assert f"dropbear runs with -K {dropbear.keepalive(staged.config.tunnel[0]).interval}" in text
    assert "shell /bin/sh of tktunnel is in /etc/shells" in text
    # Without -K, the check says so.
    relay.stop()
    relay.flags = ()
    relay.start()
    forwards(staged)
    status, lines = staged.check(via=inside())
    assert status == 1
    assert [line for line in failures(lines) if "-K" in line], lines


def test_postfix_relay(
    tmp_path: Path,
    openssh_relay: Staged,
    postmap: Any,
) -> None:
    """TK_MTA=postfix: postmap -q for every key instead of sendmail -bt, and the .db's age."""
    table = tmp_path / "postfix" / "transport"
    table.parent.mkdir()
    shutil.copy(openssh_relay.kit / "transport", table)
    postmap.build(table)
    wrapper = tmp_path / "postmap"
    env = "".join(f"{k}={v} " for k, v in (postmap.env or {}).items() if k == "LD_LIBRARY_PATH")
    wrapper.write_text(f'#!/bin/sh\nexec env {env}{postmap.binary} -c {postmap.config_dir} "$@"\n')
    wrapper.chmod(0o755)
    openssh_relay.env |= {
        "TK_MTA": "postfix",
        "TK_TRANSPORT": str(table),
        "TK_POSTMAP": str(wrapper),
        "TK_SENDMAIL": "/nonexistent",  # not consulted for a Postfix relay
    }
    status, lines = openssh_relay.check()
    assert failures(lines) == [] and status == 0
    assert "ok postmap -q .example.org: smtp:[127.0.0.1]:" in "\n".join(lines)
    later = time.time() + 60
    os.utime(table, (later, later))  # edited after the last postmap
    status, lines = openssh_relay.check()
    assert status == 1
    assert [line for line in failures(lines) if "transport.db is newer than" in line], lines
