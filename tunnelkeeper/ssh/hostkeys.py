"""Host-key policy: known_hosts read as OpenSSH reads it, the verdict on the relay's key, and
pinning on first contact under `accept-new`."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import asyncssh

from ..config import Tunnel
from ..errors import HostKeyUnknown, KeyFileError
from .keys import read_known_hosts_text

log = logging.getLogger(__name__)


@dataclass
class KnownHosts:
    """What known_hosts says about one relay: trusted keys, trusted CAs, revoked keys."""

    trusted: list[asyncssh.SSHKey] = field(default_factory=list)
    cas: list[asyncssh.SSHKey] = field(default_factory=list)
    revoked: list[asyncssh.SSHKey] = field(default_factory=list)

    @property
    def names_host(self) -> bool:
        """Some line, of any kind, names this relay: then it is no first contact."""
        return bool(self.trusted or self.cas or self.revoked)

    def as_asyncssh(self) -> tuple[list[asyncssh.SSHKey], ...]:
        return (self.trusted, self.cas, self.revoked)


def known_hosts_name(host: str, port: int) -> str:
    return host if port == 22 else f"[{host}]:{port}"


_LINE = re.compile(r"^(\s*(?:@\S+\s+)?)(\S+)(.*)$", re.DOTALL)


def _lowercase_names(text: str) -> str:
    """Lower-case every plain host pattern (OpenSSH matches names case-insensitively; hashed
    `|1|` names are hashes of the lower-cased name already)."""
    out = []
    for line in text.splitlines():
        match = _LINE.match(line)
        if match is None or match[2].startswith(("#", "|")):
            out.append(line)
        else:
            out.append(match[1] + match[2].lower() + match[3])
    return "\n".join(out) + "\n"


def read_known_hosts(tunnel: Tunnel, host: str, port: int) -> KnownHosts:
    """The known_hosts lines that name `host:port` (the relay or one of its jump hosts).
    Raises HostKeyUnknown when the file is missing under `strict`, or cannot be read."""
    path = tunnel.known_hosts
    try:
        text = read_known_hosts_text(path)
    except KeyFileError as exc:
        raise HostKeyUnknown(str(exc)) from None
    if text is None:
        if tunnel.host_key_policy == "strict":
            raise HostKeyUnknown(f"known_hosts {path} not found")
        return KnownHosts()
    try:
        known = asyncssh.import_known_hosts(_lowercase_names(text))
    except (ValueError, asyncssh.KeyImportError) as exc:
        raise HostKeyUnknown(f"cannot read known_hosts {path}: {exc}") from None
    host = host.lower()
    trusted, cas, revoked, *_ = known.match(host, "", port)
    # When no trusted key or CA names [host]:port, asyncssh looks again under the bare host
    # and returns only that look's @revoked keys: a key revoked for [host]:port alone would be
    # taken as trusted (a bare-host line) or as first contact (none). OpenSSH refuses a key
    # revoked under the name it looked up first; so do we.
    _, _, revoked_here, *_ = known.match(f"[{host}]:{port}", "", None)
    revoked = [*revoked, *(key for key in revoked_here if key not in revoked)]
    return KnownHosts(list(trusted), list(cas), revoked)


class HostKeyVerdict:
    """Our own record of how the relay's host key was judged, so that the error kind of a
    failed handshake comes from our checks and never from what the relay says."""

    def __init__(self) -> None:
        self.offered: asyncssh.SSHKey | None = None
        self.new_key: asyncssh.SSHKey | None = None  # accepted as first contact: pin it
        self.rejected: str | None = None  # "revoked" | "untrusted": our check said no

    def wrap(self, validate: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
        """Wrap asyncssh's validate_server_host_key to see our check's outcome."""

        def checked(key_data: bytes) -> Any:
            try:
                return validate(key_data)
            except asyncssh.HostKeyNotVerifiable as exc:
                # Raised here, by our side, from asyncssh's own check of the key.
                self.rejected = "revoked" if "revoked" in str(exc).lower() else "untrusted"
                raise

        return checked


def accept_first_contact(tunnel: Tunnel, known: KnownHosts) -> bool:
    """Called for a plain key that is not trusted: accept it only under `accept-new` when no
    known_hosts line names the relay at all."""
    return tunnel.host_key_policy == "accept-new" and not known.names_host


def pin(tunnel: Tunnel, key: asyncssh.SSHKey, host: str, port: int) -> None:
    """Append the key of `host:port` to known_hosts (accept-new, first contact).

    Raises HostKeyUnknown when it cannot be written: going on unpinned would make every
    later connection a first contact again.
    """
    line = f"{known_hosts_name(host.lower(), port)} "
    line += key.export_public_key("openssh").decode().strip() + "\n"
    path = tunnel.known_hosts
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "a", encoding="ascii") as fh:
            fh.write(line)
    except OSError as exc:
        raise HostKeyUnknown(
            f"accept-new: cannot pin the relay's host key {key.get_fingerprint('sha256')} in "
            f"{path} ({exc.strerror or exc}); make the file writable, or pin it by hand "
            f"(ssh-keyscan -p {port} {host} >> {path})"
        ) from None
    log.warning(
        "%s: pinned new host key %s of %s in %s (accept-new, first contact)",
        tunnel.name,
        key.get_fingerprint("sha256"),
        known_hosts_name(host, port),
        path,
    )
