"""What signs for us at the relay: the private key (decrypted with its passphrase_file), or the
agent's key that matches identity + ".pub", each with its OpenSSH user certificate if any."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncssh
from asyncssh.public_key import CERT_TYPE_USER, SSHOpenSSHCertificate

from ..config import Tunnel
from ..errors import AuthFailed, KeyFileError
from ..peertext import peer_text
from .keys import agent_public_key, tunnel_identity

log = logging.getLogger(__name__)


def certificate_path(tunnel: Tunnel) -> Path | None:
    """The user certificate: `certificate`, else identity + "-cert.pub" when it exists."""
    if tunnel.certificate is not None:
        return tunnel.certificate
    beside = Path(f"{tunnel.identity}-cert.pub")
    return beside if beside.exists() else None


def read_certificate(tunnel: Tunnel) -> asyncssh.SSHCertificate | None:
    """Read (again, at every attempt: a renewed certificate needs no restart) and check the
    certificate. Raises AuthFailed for an expired or not yet valid one, KeyFileError for one
    that cannot be read."""
    path = certificate_path(tunnel)
    if path is None:
        return None
    try:
        cert = asyncssh.read_certificate(str(path))
    except (OSError, asyncssh.KeyImportError, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or exc
        raise KeyFileError(f"cannot read the certificate: {reason}", path=str(path)) from None
    if not isinstance(cert, SSHOpenSSHCertificate):
        raise KeyFileError("not an OpenSSH user certificate", path=str(path))
    try:
        cert.validate(CERT_TYPE_USER, None)
    except ValueError as exc:
        when = getattr(cert, "_valid_before", None)  # asyncssh keeps the validity private
        until = f" (valid until {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(when))})"
        raise AuthFailed(
            f"user certificate {path}: {str(exc).lower()}"
            + (until if isinstance(when, int) and when < 2**63 else "")
            + "; have it renewed (ssh-keygen -s CA -I ID -n PRINCIPAL -V ...)"
        ) from None
    return cert


@dataclass
class Credentials:
    """client_keys for asyncssh.connect, and the agent connection they sign through."""

    keys: list[Any] = field(default_factory=list)
    agent: Any = None

    def close(self) -> None:
        if self.agent is not None:
            self.agent.close()
            self.agent = None


async def credentials(tunnel: Tunnel) -> Credentials:
    """The keys to offer. Raises KeyFileError for unusable key files, AuthFailed for an agent
    that is gone or lacks the key, or an expired certificate."""
    cert = read_certificate(tunnel)
    if not tunnel.agent:
        key = tunnel_identity(tunnel)
        return Credentials(keys=[(key, cert) if cert is not None else key])
    wanted = agent_public_key(tunnel)
    sock = os.environ.get("SSH_AUTH_SOCK")
    if not sock:
        raise AuthFailed("agent = true, but SSH_AUTH_SOCK is not set: no ssh-agent to sign with")
    try:
        agent = await asyncssh.connect_agent(sock)
    except (OSError, asyncssh.Error, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or peer_text(str(exc))
        raise AuthFailed(f"ssh-agent at {sock} is not reachable: {reason}") from None
    try:
        found = await agent.get_keys([wanted.public_data])
    except (OSError, asyncssh.Error, ValueError) as exc:
        agent.close()
        raise AuthFailed(f"ssh-agent at {sock} did not answer: {peer_text(str(exc))}") from None
    plain = [k for k in found if k.public_data == wanted.public_data]
    if not plain:
        agent.close()
        raise AuthFailed(
            f"ssh-agent at {sock} holds no key matching {tunnel.identity}.pub "
            f"({wanted.get_fingerprint('sha256')}): ssh-add it"
        )
    if cert is not None:
        plain[0].set_certificate(cert)
    return Credentials(keys=plain[:1], agent=agent)
