"""The tunnel's public key file, `<identity>.pub`, read and checked in one place: for the relay
kit's authorized_keys lines and for matching the key an ssh-agent offers."""

from __future__ import annotations

import base64
import binascii
import hashlib
import struct
from dataclasses import dataclass
from pathlib import Path

from .config import Tunnel
from .errors import ConfigError


@dataclass(frozen=True)
class PublicKey:
    """An OpenSSH public key line: `ssh-rsa AAAA… comment`."""

    kind: str
    blob: str
    comment: str

    @property
    def fingerprint(self) -> str:
        """The SHA256 fingerprint as `ssh-keygen -l` prints it."""
        digest = hashlib.sha256(base64.b64decode(self.blob)).digest()
        return "SHA256:" + base64.b64encode(digest).decode("ascii").rstrip("=")

    def __str__(self) -> str:
        return " ".join(part for part in (self.kind, self.blob, self.comment) if part)


def public_key_path(tunnel: Tunnel) -> Path:
    return Path(f"{tunnel.identity}.pub")


def read_public_key(tunnel: Tunnel) -> PublicKey:
    """The tunnel's public key from `<identity>.pub`; ConfigError naming the file otherwise."""
    path = public_key_path(tunnel)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"public key not found (tunnel {tunnel.name!r}): create the key pair with "
            "`tunnelkeeper keygen`, or put the .pub file beside the identity",
            path=str(path),
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the public key: {exc}", path=str(path)) from None
    lines = [line.strip() for line in text.splitlines()]
    fields = next((line.split(None, 2) for line in lines if line and not line.startswith("#")), [])
    if len(fields) < 2 or not _blob_matches(fields[0], fields[1]):
        raise ConfigError(
            "not an OpenSSH public key (expected one line like 'ssh-rsa AAAA… comment')",
            path=str(path),
        )
    return PublicKey(fields[0], fields[1], fields[2] if len(fields) > 2 else "")


def _blob_matches(kind: str, blob: str) -> bool:
    """Whether `blob` is base64 of a key blob that starts with the length-prefixed `kind`."""
    try:
        raw = base64.b64decode(blob, validate=True)
    except (binascii.Error, ValueError):
        return False
    if len(raw) < 4:
        return False
    (size,) = struct.unpack(">I", raw[:4])
    return raw[4 : 4 + size] == kind.encode("ascii", "replace")
