"""Key files: checks on the private key and known_hosts, loading, and making new keys."""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import asyncssh

from .. import safefiles
from ..config import Tunnel, secret_path
from ..errors import ConfigError, KeyFileError
from ..pubkey import public_key_path, read_public_key


def check_identity_file(path: Path) -> None:
    """Refuse a missing, unreadable or group/other-readable private key (like OpenSSH).

    Raises KeyFileError naming the file.
    """
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise KeyFileError(
            "private key not found (create one with `tunnelkeeper keygen`)", path=str(path)
        ) from None
    except OSError as exc:
        raise KeyFileError(f"cannot read private key: {exc.strerror}", path=str(path)) from None
    if not stat.S_ISREG(mode):
        raise KeyFileError("private key is not a regular file", path=str(path))
    if mode & 0o077:
        raise KeyFileError(
            f"private key is accessible by group or others (mode {stat.S_IMODE(mode):04o}); "
            f"run: chmod 600 {path}",
            path=str(path),
        )
    try:
        with path.open("rb"):
            pass
    except OSError as exc:
        raise KeyFileError(f"cannot read private key: {exc.strerror}", path=str(path)) from None


def read_known_hosts_text(path: Path) -> str | None:
    """The text of known_hosts, or None when it does not exist.

    Only a regular file is read, opened without blocking (a FIFO put there would otherwise
    stall the event loop). Raises KeyFileError naming the file.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise KeyFileError(f"cannot read known_hosts: {exc.strerror}", path=str(path)) from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise KeyFileError("known_hosts is not a regular file", path=str(path))
        with os.fdopen(fd, "rb", closefd=False) as fh:
            data = fh.read(4 * 1024 * 1024)
    except OSError as exc:
        raise KeyFileError(f"cannot read known_hosts: {exc.strerror}", path=str(path)) from None
    finally:
        os.close(fd)
    return data.decode("utf-8", "replace")


def check_known_hosts(path: Path, policy: str) -> None:
    """Under `strict`, the pinned host keys must exist and be readable. Raises KeyFileError."""
    if read_known_hosts_text(path) is None and policy == "strict":
        raise KeyFileError(
            "known_hosts not found: pin the relay's host key (ssh-keyscan -p PORT HOST > "
            "this file, then compare its fingerprint with the relay admin's) or set "
            'host_key_policy = "accept-new" for first contact',
            path=str(path),
        )


# Parsed keys by path, with the (inode, size, mtime) they were read at. Parsing validates the
# RSA key (a primality check in OpenSSL: ~0.2 s for 4096 bits) and blocks the event loop, so
# every reconnect, standby and tunnel sharing the file would stall the others without it.
_identities: dict[Path, tuple[tuple[int, int, int, int], asyncssh.SSHKey]] = {}


def read_secret(path: Path, key: str) -> str:
    """A passphrase or proxy credential (a bare name is a systemd credential): its text less
    one trailing newline. Raises KeyFileError or ConfigError naming the file."""
    return safefiles.read_secret(secret_path(path, key), key)


def load_identity(path: Path, passphrase: str | None = None) -> asyncssh.SSHKey:
    """Read the private key (again only when the file changed). Raises KeyFileError with a hint
    for encrypted or foreign keys."""
    check_identity_file(path)
    try:
        st = path.stat()
    except OSError as exc:
        raise KeyFileError(f"cannot read private key: {exc.strerror}", path=str(path)) from None
    version = (st.st_ino, st.st_size, st.st_mtime_ns, hash(passphrase))
    cached = _identities.get(path)
    if cached is not None and cached[0] == version:
        return cached[1]
    try:
        key = asyncssh.read_private_key(str(path), passphrase)
    except (asyncssh.KeyEncryptionError, asyncssh.KeyImportError, ValueError) as exc:
        # Without a passphrase asyncssh reports an encrypted key as a KeyImportError
        # ("Passphrase must be specified ..."), so the message is the only sign of it.
        if passphrase is not None and isinstance(exc, asyncssh.KeyEncryptionError):
            raise KeyFileError(
                "the passphrase in passphrase_file does not decrypt this key", path=str(path)
            ) from None
        if isinstance(exc, asyncssh.KeyEncryptionError) or "passphrase" in str(exc).lower():
            raise KeyFileError(
                "private key is encrypted: give its passphrase in passphrase_file (a bare name "
                "is a systemd credential), or set agent = true to sign with ssh-agent",
                path=str(path),
            ) from None
        raise KeyFileError(f"not a usable private key: {exc}", path=str(path)) from None
    except OSError as exc:
        raise KeyFileError(f"cannot read private key: {exc.strerror}", path=str(path)) from None
    if key.algorithm == b"ssh-dss":
        raise KeyFileError(
            "DSA keys are refused by OpenSSH since 7.0 and would only fail at the relay; make "
            "an RSA key with `tunnelkeeper keygen`",
            path=str(path),
        )
    _identities[path] = (version, key)
    return key


@dataclass(frozen=True)
class NewKey:
    private_openssh: bytes
    public_line: str
    fingerprint: str


def tunnel_identity(tunnel: Tunnel) -> asyncssh.SSHKey:
    """The tunnel's private key, decrypted with its passphrase_file when it has one. Raises
    KeyFileError or ConfigError naming the file."""
    passphrase = (
        None
        if tunnel.passphrase_file is None
        else read_secret(tunnel.passphrase_file, "passphrase_file")
    )
    return load_identity(tunnel.identity, passphrase)


def generate_rsa_key(bits: int, comment: str, passphrase: str | None = None) -> NewKey:
    """A new RSA key; with `passphrase`, the private key is encrypted (OpenSSH's bcrypt KDF).

    Raises KeyFileError when encryption is asked for and the bcrypt package is missing.
    """
    key = asyncssh.generate_private_key("ssh-rsa", comment=comment, key_size=bits)
    try:
        private = key.export_private_key("openssh", passphrase)
    except asyncssh.KeyExportError as exc:
        raise KeyFileError(f"cannot encrypt the key: {exc} (pip install bcrypt)") from None
    return NewKey(
        private_openssh=private,
        public_line=key.export_public_key("openssh").decode().strip(),
        fingerprint=key.get_fingerprint("sha256"),
    )


def preflight(tunnels: Sequence[Tunnel]) -> None:
    """What `run` and `check` refuse at start (exit 2): unusable keys, unpinned strict relays.

    Raises KeyFileError naming the file.
    """
    for tunnel in tunnels:
        if tunnel.agent:
            agent_public_key(tunnel)
        else:
            tunnel_identity(tunnel)
        if tunnel.proxy_auth_file is not None:
            read_secret(tunnel.proxy_auth_file, "proxy_auth_file")
        check_known_hosts(tunnel.known_hosts, tunnel.host_key_policy)


def agent_public_key(tunnel: Tunnel) -> asyncssh.SSHKey:
    """identity + ".pub" (read by pubkey.read_public_key): what the agent's key must match.
    Raises KeyFileError."""
    path = public_key_path(tunnel)
    try:
        return asyncssh.import_public_key(str(read_public_key(tunnel)))
    except ConfigError as exc:
        reason = exc.detail
    except (asyncssh.KeyImportError, ValueError) as exc:
        reason = str(exc)
    raise KeyFileError(
        f"agent = true needs the public key beside the identity: {reason}", path=str(path)
    )
