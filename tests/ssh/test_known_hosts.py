"""known_hosts read as OpenSSH reads it, against a real sshd: @revoked, @cert-authority with a
real host certificate, names in any case, hashed names; accept-new pins only a host that no
line names; strict key exchange (Terrapin) negotiated."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support.configs import write_config
from tests.support.socks import SSH
from tests.support.sshd import SSH_KEYGEN, Sshd, keygen
from tunnelkeeper import config, ssh

pytestmark = pytest.mark.timeout(60)


def _check(cfg: Path) -> tuple[int, dict[str, Any]]:
    proc = subprocess.run(
        [sys.executable, "-m", "tunnelkeeper", "check", "-c", str(cfg), "--json"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    try:
        return proc.returncode, json.loads(proc.stdout)
    except json.JSONDecodeError:
        raise AssertionError(f"exit {proc.returncode}: {proc.stdout}{proc.stderr}") from None


def _host_line(sshd: Sshd, name: str = "127.0.0.1") -> str:
    kind, body = Path(f"{sshd.host_key}.pub").read_text().split()[:2]
    return f"[{name}]:{sshd.port} {kind} {body}"


def _config(tmp_path: Path, sshd: Sshd, **tunnel: Any) -> Path:
    fwd = {"name": "raw", "service": "tcp", "listen": "127.0.0.1:2599", "target": "127.0.0.1:9"}
    return write_config(tmp_path / "tk.toml", sshd, [fwd], **tunnel)


def _tunnel_of(result: dict[str, Any]) -> dict[str, Any]:
    tunnel: dict[str, Any] = result["tunnels"][0]
    return tunnel


def test_revoked_key_is_refused_even_when_also_trusted(make_sshd: Any, tmp_path: Path) -> None:
    sshd = make_sshd()
    line = _host_line(sshd)
    sshd.known_hosts.write_text(f"{line}\n@revoked {line}\n")
    code, result = _check(_config(tmp_path, sshd))
    tunnel = _tunnel_of(result)
    assert code == 2 and tunnel["error_kind"] == "host-key-revoked", tunnel
    assert "@revoked" in tunnel["last_error"]
    assert f"userauth-request for user {sshd.user}" not in sshd.log_text()  # no key was sent


def test_accept_new_pins_nothing_when_any_line_names_the_host(
    make_sshd: Any, tmp_path: Path
) -> None:
    sshd = make_sshd()
    ca = keygen(tmp_path / "ca", "ed25519")
    ca_kind, ca_body = Path(f"{ca}.pub").read_text().split()[:2]
    text = f"@cert-authority [127.0.0.1]:{sshd.port} {ca_kind} {ca_body}\n"
    sshd.known_hosts.write_text(text)
    code, result = _check(_config(tmp_path, sshd, host_key_policy="accept-new"))
    tunnel = _tunnel_of(result)
    assert code == 2 and tunnel["error_kind"] in ("host-key-mismatch", "host-key-unknown")
    assert sshd.known_hosts.read_text() == text  # nothing pinned: this was no first contact


def _openssh_accept_new(sshd: Sshd, known_hosts: Path) -> tuple[bool, str]:
    """OpenSSH's own client, `StrictHostKeyChecking accept-new`, with `known_hosts` alone:
    whether it logged in, and what it said."""
    options = {
        "StrictHostKeyChecking": "accept-new",
        "UserKnownHostsFile": known_hosts,
        "GlobalKnownHostsFile": "/dev/null",
        "BatchMode": "yes",
        "IdentitiesOnly": "yes",
        "ConnectTimeout": 10,
    }
    args = [SSH, "-F", "/dev/null", "-i", str(sshd.client_key), "-p", str(sshd.port)]
    args += [arg for name, value in options.items() for arg in ("-o", f"{name}={value}")]
    proc = subprocess.run(
        [*args, f"{sshd.user}@127.0.0.1", "true"], capture_output=True, text=True, timeout=30
    )
    return proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("lines", ["own-key", "own-key-also-trusted-portless", "another-key"])
def test_accept_new_never_pins_past_a_revoked_line(
    make_sshd: Any, tmp_path: Path, lines: str, outcome: dict[str, Any]
) -> None:
    """known_hosts names the relay only in a @revoked line (for a port other than 22, where
    asyncssh also looks the host up without the port). Its own key revoked: tunnelkeeper
    refuses it as revoked, as OpenSSH does. Another key revoked: OpenSSH 9.2 pins the key it
    is shown; tunnelkeeper does not, as a host that a line names is no first contact."""
    sshd = make_sshd()
    key = keygen(tmp_path / "old_host_key", "ed25519") if lines == "another-key" else sshd.host_key
    kind, body = Path(f"{key}.pub").read_text().split()[:2]
    text = f"@revoked [127.0.0.1]:{sshd.port} {kind} {body}\n"
    if lines == "own-key-also-trusted-portless":
        text += f"127.0.0.1 {kind} {body}\n"
    sshd.known_hosts.write_text(text)
    code, result = _check(_config(tmp_path, sshd, host_key_policy="accept-new"))
    tunnel = _tunnel_of(result)
    assert sshd.known_hosts.read_text() == text, "pinned past a @revoked line"
    assert f"userauth-request for user {sshd.user}" not in sshd.log_text()  # no key was sent
    theirs = tmp_path / "known_hosts.openssh"
    theirs.write_text(text)
    openssh_in, said = _openssh_accept_new(sshd, theirs)
    outcome.update(
        tunnelkeeper=tunnel["error_kind"], openssh="logged in" if openssh_in else "refused"
    )
    assert code == 2
    if lines == "another-key":
        assert tunnel["error_kind"] == "host-key-unknown" and "@revoked" in tunnel["last_error"]
    else:
        assert tunnel["error_kind"] == "host-key-revoked", tunnel
        assert not openssh_in and "REVOKED HOST KEY DETECTED" in said, said
        assert theirs.read_text() == text


def test_host_certificate_signed_by_a_cert_authority(make_sshd: Any, tmp_path: Path) -> None:
    sshd = make_sshd(start=False)
    ca = keygen(tmp_path / "host_ca", "ed25519")
    sign = [
        SSH_KEYGEN,
        "-q",
        "-s",
        str(ca),
        "-h",
        "-I",
        "relay",
        "-n",
        "127.0.0.1",
        "-V",
        "-5m:+1h",
    ]
    subprocess.run(
        [*sign, f"{sshd.host_key}.pub"],
        check=True,
        timeout=30,
    )
    sshd.extra_config = f"HostCertificate {sshd.host_key}-cert.pub\n"
    sshd.start()
    ca_kind, ca_body = Path(f"{ca}.pub").read_text().split()[:2]
    # Only the CA is known: the relay's own key appears nowhere.
    sshd.known_hosts.write_text(f"@cert-authority [127.0.0.1]:{sshd.port} {ca_kind} {ca_body}\n")
    code, result = _check(_config(tmp_path, sshd))
    assert _tunnel_of(result)["state"] == "up", result
    # The same certificate under a CA marked @revoked is refused.
    with sshd.known_hosts.open("a") as fh:
        fh.write(f"@revoked [127.0.0.1]:{sshd.port} {ca_kind} {ca_body}\n")
    code, result = _check(_config(tmp_path, sshd))
    assert code == 2 and _tunnel_of(result)["error_kind"] == "host-key-revoked", result


@pytest.mark.parametrize("form", ["upper-case", "hashed"])
def test_names_match_as_openssh_matches_them(make_sshd: Any, tmp_path: Path, form: str) -> None:
    sshd = make_sshd()
    if form == "upper-case":
        sshd.known_hosts.write_text(_host_line(sshd, "LocalHost") + "\n")
    else:
        sshd.known_hosts.write_text(_host_line(sshd, "localhost") + "\n")
        subprocess.run([SSH_KEYGEN, "-q", "-H", "-f", str(sshd.known_hosts)], check=True)
        assert "localhost" not in sshd.known_hosts.read_text()
    cfg = _config(tmp_path, sshd)
    cfg.write_text(cfg.read_text().replace('host = "127.0.0.1"', 'host = "LOCALHOST"'))
    _, result = _check(cfg)
    assert _tunnel_of(result)["state"] == "up", result


def test_a_known_hosts_fifo_does_not_block(make_sshd: Any, tmp_path: Path) -> None:
    sshd = make_sshd()
    sshd.known_hosts.unlink()
    os.mkfifo(sshd.known_hosts)
    proc = subprocess.run(
        [sys.executable, "-m", "tunnelkeeper", "check", "-c", str(_config(tmp_path, sshd))],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert proc.returncode == 2 and "not a regular file" in proc.stderr, proc.stderr


async def test_strict_key_exchange_is_negotiated(make_sshd: Any, tmp_path: Path) -> None:
    """Terrapin (CVE-2023-48795): both sides announce kex-strict, so it is in force."""
    sshd = make_sshd()
    cfg = config.load(_config(tmp_path, sshd)).tunnel[0]
    async with await ssh.connect(cfg) as conn:
        assert conn._conn._strict_kex is True  # asyncssh keeps it private
        assert conn.relay_version is not None and "OpenSSH" in conn.relay_version
