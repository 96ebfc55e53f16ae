"""The real OpenSSH: `sshd -T` applies the Match block; a real sshd enforces the key line."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.support.sshd import free_port, wait_until
from tunnelkeeper.config import Config, load
from tunnelkeeper.pubkey import read_public_key
from tunnelkeeper.relaykit.openssh import authorized_keys, sshd_config

from .conftest import (
    TWO_RELAYS,
    banner,
    need_tool,
    reverse_forward,
    run,
    ssh_args,
    write_local_config,
    write_tunnel_config,
)


def sshd_t(folder: Path, block: str, user: str, *, layout: str) -> dict[str, str]:
    """`sshd -T` for `user` with the block included the Debian way or appended at the end."""
    sshd = need_tool("sshd")
    host_key = folder / "host_ed25519"
    if not host_key.exists():
        run([need_tool("ssh-keygen"), "-q", "-t", "ed25519", "-N", "", "-f", host_key])
    (folder / "conf.d").mkdir(exist_ok=True)
    # Global settings that the block must override for its user and leave alone for others.
    defaults = "X11Forwarding yes\nAllowTcpForwarding no\nPermitTTY yes\nClientAliveInterval 0\n"
    if layout == "include":
        (folder / "conf.d" / "tunnelkeeper.conf").write_text(block)
        text = f"Include {folder}/conf.d/*.conf\nHostKey {host_key}\n{defaults}"
    else:
        text = f"HostKey {host_key}\n{defaults}{block}"
    config = folder / "sshd_config"
    config.write_text(text)
    out = run(
        [sshd, "-T", "-C", f"user={user},host=internal.example.org,addr=127.0.0.1", "-f", config]
    ).stdout
    return dict(line.split(" ", 1) for line in out.splitlines() if " " in line)


EXPECTED_EXAMPLE = {
    "allowtcpforwarding": "yes",
    "permitlisten": "127.0.0.1:2525 127.0.0.1:5353",
    # The listens (probes) and relay_mta (check --mail): the example has an smtp forward.
    "permitopen": "127.0.0.1:2525 127.0.0.1:5353 127.0.0.1:25",
    "gatewayports": "no",
    "x11forwarding": "no",
    "allowagentforwarding": "no",
    "allowstreamlocalforwarding": "no",
    "permittunnel": "no",
    "permittty": "no",
    "forcecommand": "/bin/false",
    "authenticationmethods": "publickey",
    "clientaliveinterval": "3",
    "clientalivecountmax": "3",
}


@pytest.mark.parametrize("layout", ["include", "appended"])
def test_sshd_applies_the_match_block(tmp_path: Path, example: Config, layout: str) -> None:
    block = sshd_config(example)
    settings = sshd_t(tmp_path, block, "tunnel", layout=layout)
    assert {key: settings.get(key) for key in EXPECTED_EXAMPLE} == EXPECTED_EXAMPLE
    # Other accounts keep the global settings: the block does not leak past its Match.
    others = sshd_t(tmp_path, block, "alice", layout=layout)
    assert (others["x11forwarding"], others["allowtcpforwarding"]) == ("yes", "no")
    assert (others["permitlisten"], others["forcecommand"]) == ("any", "none")


def test_sshd_two_accounts(tmp_path: Path, two_relays: Config) -> None:
    block = sshd_config(two_relays)
    tk = sshd_t(tmp_path, block, "tk", layout="include")
    assert tk["permitlisten"] == "127.0.0.1:2525 127.0.0.1:2526 [::1]:5353 127.0.0.1:1143"
    assert (tk["clientaliveinterval"], tk["clientalivecountmax"]) == ("6", "2")
    assert tk["permitopen"] == (
        "127.0.0.1:2525 127.0.0.1:2526 [::1]:5353 127.0.0.1:1143 127.0.0.1:25"
    )
    tunnel = sshd_t(tmp_path, block, "tunnel", layout="include")
    assert tunnel["permitopen"] == "127.0.0.1:2525 127.0.0.1:5353 127.0.0.1:25"
    assert (tunnel["clientaliveinterval"], tunnel["clientalivecountmax"]) == ("1", "1")


def test_sshd_outbound_accounts(tmp_path: Path, outbound: Config) -> None:
    """Locals' targets, the NOTIFY address and relay_mta are opened; a locals-only account
    forwards locally only and listens nowhere."""
    block = sshd_config(outbound)
    tunnel = sshd_t(tmp_path, block, "tunnel", layout="include")
    assert tunnel["allowtcpforwarding"] == "yes"
    assert tunnel["permitlisten"] == "127.0.0.1:2525 127.0.0.1:5353"
    # listens, local targets, the notify address; relay_mta 10025 is a local's target too.
    assert tunnel["permitopen"] == (
        "127.0.0.1:2525 127.0.0.1:5353 127.0.0.1:25 127.0.0.1:10025 [::1]:389 127.0.0.1:53"
    )
    smart = sshd_t(tmp_path, block, "smart", layout="appended")
    assert smart["allowtcpforwarding"] == "local"
    assert smart["permitlisten"] == "none"
    assert smart["permitopen"] == "127.0.0.1:25"
    assert smart["allowstreamlocalforwarding"] == "no"


def test_relay_mta_only_with_an_smtp_forward(tmp_path: Path) -> None:
    """check --mail submits to relay_mta only for smtp forwards: a dns-only tunnel keeps
    the channel to the relay's MTA closed."""
    path = tmp_path / "tk.toml"
    path.write_text(
        '[[tunnel]]\nname = "d"\nhost = "relay.example.net"\nuser = "tunnel"\n'
        '[[tunnel.forward]]\nname = "dns"\nservice = "dns"\nlisten = 5353\ntarget = 53\n'
        'zones = ["example.org"]\n'
    )
    settings = sshd_t(tmp_path, sshd_config(load(path)), "tunnel", layout="include")
    assert settings["permitopen"] == "127.0.0.1:5353"


def test_fingerprint_matches_ssh_keygen(two_relays: Config) -> None:
    for tunnel in two_relays.tunnel:
        pub = Path(f"{tunnel.identity}.pub")
        listed = run([need_tool("ssh-keygen"), "-l", "-f", pub]).stdout.split()
        assert listed[1] == read_public_key(tunnel).fingerprint


def test_ssh_keygen_reads_the_authorized_keys_file(tmp_path: Path) -> None:
    """ssh-keygen parses authorized_keys with options; every key line must come through."""
    keys = tmp_path / "authorized_keys"
    keys.write_text(authorized_keys(load(TWO_RELAYS)))
    listed = run([need_tool("ssh-keygen"), "-l", "-f", keys]).stdout.splitlines()
    assert len(listed) == 2


# -- a real sshd with the generated line and block ------------------------------------------


def test_real_sshd_allows_exactly_the_configured_forwards(
    tmp_path: Path, make_sshd: Any, smtp_sink: Any
) -> None:
    need_tool("ssh")
    sshd = make_sshd(start=False)
    smtp_listen, dns_listen, other = free_port(), free_port(), free_port()
    config = write_tunnel_config(
        tmp_path / "tk.toml", sshd, smtp_listen, dns_listen, smtp_sink.port
    )
    sshd.authorized_keys.write_text(authorized_keys(config))
    sshd.extra_config = sshd_config(config)  # the harness appends it after its own settings
    sshd.start()

    with reverse_forward(sshd, smtp_listen, smtp_sink.port):
        # A configured listen: sshd listens, and connections reach the internal mail server.
        assert banner(smtp_listen).startswith(b"220 mail.example.org")

        # Any other listen port is refused.
        refused = run(
            ssh_args(sshd, "-N", "-R", f"127.0.0.1:{other}:127.0.0.1:{smtp_sink.port}"),
            check=False,
            timeout=20,
        )
        assert refused.returncode != 0
        assert "remote port forwarding failed" in refused.stderr

        # direct-tcpip (the end-to-end probe's way in) to the listen works, elsewhere it does not.
        probe = run(
            ssh_args(sshd, "-W", f"127.0.0.1:{smtp_listen}"),
            input="QUIT\r\n",
            check=False,
            timeout=20,
        )
        assert probe.stdout.startswith("220 mail.example.org"), probe.stderr
        elsewhere = run(
            ssh_args(sshd, "-W", f"127.0.0.1:{sshd.port}"), input="", check=False, timeout=20
        )
        assert elsewhere.stdout == "", "PermitOpen let a probe elsewhere"
        assert "administratively prohibited" in elsewhere.stderr

        # No command runs: restrict + command="/bin/false" + ForceCommand.
        marker = tmp_path / "ran"
        shell = run(ssh_args(sshd, "-T", command=f"touch {marker}"), check=False, timeout=20)
        assert shell.returncode == 1, shell.stderr  # /bin/false's status, not ssh's 255
        assert not marker.exists()


@pytest.mark.parametrize("block", [False, True], ids=["line-only", "line-and-block"])
def test_unix_socket_forwards_need_the_match_block(
    block: bool, tmp_path: Path, make_sshd: Any, smtp_sink: Any
) -> None:
    """`restrict,port-forwarding` allows streamlocal again and permitlisten limits TCP only:
    with the line alone `ssh -R /path.sock:...` makes a socket on the relay; the block stops it."""
    need_tool("ssh")
    sshd = make_sshd(start=False)
    config = write_tunnel_config(
        tmp_path / "tk.toml", sshd, free_port(), free_port(), smtp_sink.port
    )
    sshd.authorized_keys.write_text(authorized_keys(config))
    if block:
        sshd.extra_config = sshd_config(config)
    sshd.start()
    sock = tmp_path / "squat.sock"
    proc = subprocess.Popen(
        ssh_args(sshd, "-N", "-R", f"{sock}:127.0.0.1:{smtp_sink.port}"),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        if block:
            _, stderr = proc.communicate(timeout=20)
            assert proc.returncode != 0
            assert "remote port forwarding failed for listen path" in stderr
            assert not sock.exists()
        else:
            wait_until(sock.exists, 10, what="the squatted socket")
            with socket.socket(socket.AF_UNIX) as conn:
                conn.settimeout(5)
                conn.connect(str(sock))
                assert conn.recv(100).startswith(b"220 mail.example.org")
    finally:
        proc.kill()
        proc.wait(10)


def test_every_file_says_the_block_is_required(example: Config) -> None:
    from tunnelkeeper.relaykit.kit import relay_kit

    comments = [line for line in authorized_keys(example).splitlines() if line.startswith("#")]
    assert any("Match block (tunnelkeeper sshd-config) is required" in c for c in comments)
    assert "It is required, not optional" in sshd_config(example)
    assert "Both files are required." in relay_kit(example)["README.md"]


def test_real_sshd_locals_only_account(tmp_path: Path, make_sshd: Any, smtp_sink: Any) -> None:
    """A tunnel with only a [[tunnel.local]]: channels reach its target (the relay's MTA, here
    the sink), nothing else, and no reverse listen at all, with the line and the block."""
    need_tool("ssh")
    sshd = make_sshd(start=False)
    config = write_local_config(tmp_path / "tk.toml", sshd, free_port(), smtp_sink.port)
    sshd.authorized_keys.write_text(authorized_keys(config))
    sshd.extra_config = sshd_config(config)
    sshd.start()

    relayed = run(
        ssh_args(sshd, "-W", f"127.0.0.1:{smtp_sink.port}"), input="QUIT\r\n", check=False
    )
    assert relayed.stdout.startswith("220 mail.example.org"), relayed.stderr
    elsewhere = run(ssh_args(sshd, "-W", f"127.0.0.1:{sshd.port}"), input="", check=False)
    assert elsewhere.stdout == ""
    assert "administratively prohibited" in elsewhere.stderr
    listen = free_port()
    refused = run(
        ssh_args(sshd, "-N", "-R", f"127.0.0.1:{listen}:127.0.0.1:{smtp_sink.port}"),
        check=False,
        timeout=20,
    )
    assert refused.returncode != 0
    assert "remote port forwarding failed" in refused.stderr
