"""The rigs of the connection-path tests are what they claim, proven with OpenSSH's own client
and raw sockets: so a failure in the path tests is tunnelkeeper's, not the rig's."""

from __future__ import annotations

import base64
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.certs import describe
from tests.support.firewall_kit import Rigs, http_connect, openssh, socks5_connect
from tests.support.keyfiles import encrypted_copy, is_encrypted, passphrase_file
from tests.support.sshd import SSH_KEYGEN, keygen

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def rigs(fdir: Path) -> Iterator[Rigs]:
    kit = Rigs(fdir)
    yield kit
    kit.close()


def test_tinyproxy_connects_only_to_the_relay_port_and_asks_for_auth(rigs: Rigs) -> None:
    relay = rigs.relay()
    open_proxy = rigs.tinyproxy(relay.port)
    status, beyond = http_connect(open_proxy.port, "127.0.0.1", relay.port)
    assert " 200 " in status and beyond.startswith(b"SSH-2.0-OpenSSH"), (status, beyond)
    status, _ = http_connect(open_proxy.port, "127.0.0.1", relay.port + 1)
    assert " 403 " in status, status
    open_proxy.stop()

    guarded = rigs.tinyproxy(relay.port, auth=("tk", "s3cret"))
    status, _ = http_connect(guarded.port, "127.0.0.1", relay.port)
    assert " 407 " in status, status
    good = base64.b64encode(b"tk:s3cret").decode()
    status, beyond = http_connect(guarded.port, "localhost", relay.port, good)
    assert " 200 " in status and beyond.startswith(b"SSH-2.0-"), (status, beyond)
    assert f"CONNECT localhost:{relay.port}" in guarded.log_text()  # the proxy resolved it


def test_hanging_proxy_accepts_and_never_answers(rigs: Rigs) -> None:
    proxy = rigs.hanging_proxy()
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=1) as sock:
        sock.sendall(b"CONNECT 127.0.0.1:22 HTTP/1.1\r\n\r\n")
        with pytest.raises(TimeoutError):
            sock.recv(1)
    assert proxy.accepted == 1


def test_ssh_dynamic_forward_is_socks5_resolving_names(rigs: Rigs) -> None:
    relay = rigs.relay()
    socks = rigs.socks(relay)
    code, beyond = socks5_connect(socks.port, "localhost", relay.port)
    assert code == 0 and beyond.startswith(b"SSH-2.0-OpenSSH"), (code, beyond)
    assert f"localhost:{relay.port}" in socks.requests()  # the name went to the proxy
    # The carrier may open nothing else: a refused channel closes the SOCKS connection.
    code, _ = socks5_connect(socks.port, "127.0.0.1", socks.carrier.port)
    assert code != 0


def test_bastions_pass_the_key_to_the_next_hop_only(rigs: Rigs) -> None:
    relay = rigs.relay()
    inner = rigs.bastion(relay, "inner")
    outer = rigs.bastion(inner, "outer")
    chain = rigs.known_hosts(outer, inner, relay)
    one = openssh(relay, key=relay.client_key, jump=(inner,), known_hosts=chain)
    assert one.returncode == 0, one.stderr
    two = openssh(relay, key=relay.client_key, jump=(outer, inner), known_hosts=chain)
    assert two.returncode == 0, two.stderr
    # The outer bastion does not open a channel to the relay itself.
    skip = openssh(relay, key=relay.client_key, jump=(outer,), known_hosts=chain)
    assert skip.returncode != 0
    assert "administratively prohibited" in skip.stderr or "open failed" in skip.stderr


def test_agent_signs_for_a_key_whose_private_file_is_gone(rigs: Rigs, fdir: Path) -> None:
    relay = rigs.relay()
    agent = rigs.agent(relay.client_key)
    pub = Path(f"{relay.client_key}.pub").read_text().split()[1]
    assert any(pub in line for line in agent.public_keys())
    relay.client_key.unlink()  # IdentityFile then names the .pub: the agent key to use
    agent_opt = ("-o", f"IdentityAgent={agent.socket}")
    ok = openssh(relay, key=relay.client_key, extra=agent_opt, env=agent.env())
    assert ok.returncode == 0, ok.stderr
    agent.kill()
    gone = openssh(relay, key=relay.client_key, extra=agent_opt, env=agent.env())
    assert gone.returncode != 0


@pytest.mark.parametrize(
    ("validity", "principal", "logs_in"),
    [
        ("-5m:+1h", "self", True),
        ("20200101:20200102", "self", False),
        ("-5m:+1h", "somebody-else", False),
    ],
    ids=["valid", "expired", "wrong-principal"],
)
def test_relay_trusts_only_certificates(
    rigs: Rigs, validity: str, principal: str, logs_in: bool
) -> None:
    relay = rigs.relay(start=False)
    ca = rigs.user_ca()
    ca.trust_in(relay)
    relay.start()
    plain = openssh(relay, key=relay.client_key)
    assert plain.returncode != 0  # the bare key is listed nowhere
    name = relay.user if principal == "self" else principal
    cert = ca.sign(relay.client_key, name, validity)
    assert cert.name.endswith("-cert.pub") and name in describe(cert)
    result = openssh(relay, key=relay.client_key, extra=("-o", f"CertificateFile={cert}"))
    assert (result.returncode == 0) is logs_in, result.stderr + relay.log_text()[-2000:]


def test_encrypted_copy_needs_its_passphrase(fdir: Path) -> None:
    key = keygen(fdir / "client_rsa")
    locked = encrypted_copy(key, fdir / "locked_rsa", "correct horse")
    assert is_encrypted(locked) and not is_encrypted(key)
    opened = subprocess.run(
        [SSH_KEYGEN, "-y", "-P", "correct horse", "-f", str(locked)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert opened.stdout.split()[1] == Path(f"{key}.pub").read_text().split()[1]
    secret = passphrase_file(fdir / "passphrase", "correct horse")
    assert secret.read_text() == "correct horse\n" and secret.stat().st_mode & 0o077 == 0
