"""A real Dropbear: which key options it takes, what the generated line allows, its flags."""

from __future__ import annotations

import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.sshd import free_port, port_open, wait_until
from tunnelkeeper.relaykit import dropbear, openssh

from .conftest import (
    banner,
    need_tool,
    reverse_forward,
    run,
    ssh_args,
    write_local_config,
    write_tunnel_config,
)

pytestmark = pytest.mark.timeout(90)


def relay_with_line(make_dropbear: Any, tmp_path: Path, sink_port: int, **kwargs: Any) -> Any:
    """A started Dropbear whose account has the generated Dropbear file for a two-forward
    config; returns (relay, smtp listen, dns listen)."""
    relay = make_dropbear(**kwargs)
    smtp, dns = free_port(), free_port()
    config = write_tunnel_config(tmp_path / "tk.toml", relay, smtp, dns, sink_port)
    relay.set_authorized(dropbear.authorized_keys(config))
    relay.start()
    return relay, smtp, dns


def listeners(port: int) -> set[str]:
    """The local addresses something listens on at `port`, from `ss`."""
    out = run([need_tool("ss"), "-Hltn", f"sport = :{port}"]).stdout
    return {line.split()[3].rsplit(":", 1)[0] for line in out.splitlines() if line.strip()}


def test_dropbear_accepts_the_generated_line_and_it_confines(
    make_dropbear: Any, smtp_sink: Any, tmp_path: Path
) -> None:
    need_tool("ssh")
    relay, smtp, _dns = relay_with_line(make_dropbear, tmp_path, smtp_sink.port)
    with reverse_forward(relay, smtp, smtp_sink.port):
        assert banner(smtp).startswith(b"220 mail.example.org")
        assert f"Pubkey auth succeeded for '{relay.user}'" in relay.log_text()

        # direct-tcpip (the probes' way in) to a listen works; permitopen refuses the rest.
        probe = run(ssh_args(relay, "-W", f"127.0.0.1:{smtp}"), input="QUIT\r\n", check=False)
        assert probe.stdout.startswith("220 mail.example.org"), probe.stderr
        elsewhere = run(ssh_args(relay, "-W", f"127.0.0.1:{smtp_sink.port}"), check=False)
        assert elsewhere.stdout == "" and "administratively prohibited" in elsewhere.stderr

        # command="/bin/false" replaces any command: it runs nothing and exits 1.
        marker = tmp_path / "ran"
        shell = run(ssh_args(relay, "-T", command=f"touch {marker}"), check=False)
        assert shell.returncode == 1, shell.stderr
        assert not marker.exists()

        # Unix-socket forwards are refused outright (Dropbear has none).
        sock = tmp_path / "squat.sock"
        unix = run(
            ssh_args(relay, "-N", "-R", f"{sock}:127.0.0.1:{smtp_sink.port}"),
            check=False,
            timeout=20,
        )
        assert unix.returncode != 0 and "remote port forwarding failed" in unix.stderr
        assert not sock.exists()

        # A privileged port is refused for an account other than root.
        low = run(ssh_args(relay, "-N", "-R", "127.0.0.1:25:127.0.0.1:9"), check=False)
        assert low.returncode != 0 and "remote port forwarding failed" in low.stderr


def test_dropbear_line_opens_a_locals_target(
    make_dropbear: Any, smtp_sink: Any, tmp_path: Path
) -> None:
    """A tunnel with only a [[tunnel.local]]: its target (the relay's MTA) is permitopen'd."""
    need_tool("ssh")
    relay = make_dropbear()
    config = write_local_config(tmp_path / "tk.toml", relay, free_port(), smtp_sink.port)
    relay.set_authorized(dropbear.authorized_keys(config))
    relay.start()
    relayed = run(
        ssh_args(relay, "-W", f"127.0.0.1:{smtp_sink.port}"), input="QUIT\r\n", check=False
    )
    assert relayed.stdout.startswith("220 mail.example.org"), relayed.stderr
    elsewhere = run(ssh_args(relay, "-W", f"127.0.0.1:{relay.port}"), check=False)
    assert elsewhere.stdout == "" and "administratively prohibited" in elsewhere.stderr


def test_dropbear_cannot_limit_listen_ports(
    make_dropbear: Any, smtp_sink: Any, tmp_path: Path
) -> None:
    """What the comment lines warn about: any other port above 1023 is granted, on loopback
    whatever address was asked for (127.0.0.2 here: without -a it becomes localhost)."""
    need_tool("ssh")
    relay, _smtp, _dns = relay_with_line(make_dropbear, tmp_path, smtp_sink.port)
    other = free_port()
    with reverse_forward(relay, other, smtp_sink.port):
        assert banner(other).startswith(b"220")
    elsewhere = free_port()
    proc = subprocess.Popen(
        ssh_args(relay, "-N", "-R", f"127.0.0.2:{elsewhere}:127.0.0.1:{smtp_sink.port}"),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_until(lambda: listeners(elsewhere), 10, what="the forward's listener")
        assert listeners(elsewhere) <= {"127.0.0.1", "[::1]"}
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.mark.parametrize(
    "option",
    [
        "port-forwarding",
        'permitlisten="127.0.0.1:2525"',
        'from="127.0.0.1"',
        "no-user-rc",
    ],
)
def test_dropbear_refuses_the_whole_line_for_an_openssh_option(
    option: str, make_dropbear: Any
) -> None:
    need_tool("ssh")
    relay = make_dropbear()
    relay.set_authorized(f"no-pty,{option} {relay.public_key()}\n")
    relay.start()
    login = run(ssh_args(relay, "-N", "-o", "ConnectTimeout=5"), check=False, timeout=20)
    assert login.returncode == 255 and "Permission denied (publickey)" in login.stderr
    assert "Bad public key options at" in relay.log_text()


def test_dropbear_restrict_turns_off_the_tunnel(make_dropbear: Any, smtp_sink: Any) -> None:
    """`restrict` is accepted but implies no-port-forwarding, so the line cannot use it."""
    need_tool("ssh")
    relay = make_dropbear()
    relay.set_authorized(f"restrict {relay.public_key()}\n")
    relay.start()
    forward = run(
        ssh_args(relay, "-N", "-R", f"127.0.0.1:{free_port()}:127.0.0.1:{smtp_sink.port}"),
        check=False,
        timeout=20,
    )
    assert "remote port forwarding failed" in forward.stderr
    assert "Pubkey auth succeeded" in relay.log_text()


def test_dropbear_refuses_the_openssh_line(
    make_dropbear: Any, smtp_sink: Any, tmp_path: Path
) -> None:
    """The issue's report: the line written for OpenSSH is refused whole."""
    need_tool("ssh")
    relay = make_dropbear()
    config = write_tunnel_config(tmp_path / "tk.toml", relay, free_port(), free_port(), 25)
    relay.set_authorized(openssh.authorized_keys(config))
    relay.start()
    login = run(ssh_args(relay, "-N"), check=False, timeout=20)
    assert "Permission denied (publickey)" in login.stderr
    assert re.search(r"Bad public key options at \S*/authorized_keys:\d+", relay.log_text())


def test_dropbear_refuses_a_shell_not_in_etc_shells(make_dropbear: Any) -> None:
    """Why the kit's README gives the account /bin/sh and not /usr/sbin/nologin."""
    need_tool("ssh")
    relay = make_dropbear(shell="/usr/sbin/nologin")
    relay.set_authorized(f'no-pty,command="/bin/false" {relay.public_key()}\n')
    relay.start()
    login = run(ssh_args(relay, "-N"), check=False, timeout=20)
    assert "Permission denied" in login.stderr
    assert f"User '{relay.user}' has invalid shell, rejected" in relay.log_text()


# -- the daemon's flags, as the kit's README describes them -----------------------------------


def test_dropbear_flags_j_and_k(make_dropbear: Any, smtp_sink: Any, tmp_path: Path) -> None:
    """-j refuses the probes' direct-tcpip channels; -k refuses the tunnel's remote forwards."""
    need_tool("ssh")
    relay, smtp, _ = relay_with_line(
        make_dropbear, tmp_path / "j", smtp_sink.port, name="j", flags=("-j",)
    )
    with reverse_forward(relay, smtp, smtp_sink.port):
        probe = run(ssh_args(relay, "-W", f"127.0.0.1:{smtp}"), check=False, timeout=20)
        assert probe.stdout == "" and "administratively prohibited" in probe.stderr
    relay, smtp, _ = relay_with_line(
        make_dropbear, tmp_path / "k", smtp_sink.port, name="k", flags=("-k",)
    )
    forward = run(
        ssh_args(relay, "-N", "-R", f"127.0.0.1:{smtp}:127.0.0.1:{smtp_sink.port}"),
        check=False,
        timeout=20,
    )
    assert "remote port forwarding failed" in forward.stderr
    assert not port_open(smtp)


def test_dropbear_flag_a_binds_the_address_asked_for(
    make_dropbear: Any, smtp_sink: Any, tmp_path: Path
) -> None:
    need_tool("ssh")
    relay, _, _ = relay_with_line(make_dropbear, tmp_path, smtp_sink.port, flags=("-a",))
    port = free_port()
    proc = subprocess.Popen(
        ssh_args(relay, "-N", "-R", f"127.0.0.2:{port}:127.0.0.1:{smtp_sink.port}"),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_until(lambda: listeners(port), 10, what="the forward's listener")
        assert listeners(port) == {"127.0.0.2"}
    finally:
        proc.terminate()
        proc.wait(10)


def test_dropbear_keepalive_frees_a_frozen_clients_listener(
    make_dropbear: Any, smtp_sink: Any, tmp_path: Path
) -> None:
    """-K K drops a client silent for KEEPALIVE_LIMIT x K seconds: the kit's arithmetic."""
    need_tool("ssh")
    interval = 1
    relay, smtp, _ = relay_with_line(
        make_dropbear, tmp_path, smtp_sink.port, flags=("-K", str(interval))
    )
    proc = subprocess.Popen(
        ssh_args(
            relay,
            "-N",
            "-o",
            "ServerAliveInterval=0",
            "-R",
            f"127.0.0.1:{smtp}:127.0.0.1:{smtp_sink.port}",
        ),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: port_open(smtp), 10, what="the forward")
        proc.send_signal(signal.SIGSTOP)
        frozen = time.monotonic()
        wait_until(lambda: not listeners(smtp), 10, 0.05, "the listener freed")
        freed = time.monotonic() - frozen
    finally:
        proc.send_signal(signal.SIGCONT)
        proc.kill()
        proc.wait(10)
    print(f"dropbear -K {interval}: frozen client's listener freed after {freed:.2f}s")
    assert "Keepalive timeout" in relay.log_text()
    # Within KEEPALIVE_LIMIT periods (plus Dropbear's whole-second clock), and not at once.
    assert interval <= freed <= dropbear.KEEPALIVE_LIMIT * interval + 1.5
