"""The border: asyncssh and OSError exceptions become tunnelkeeper errors, classified by our own
checks; whatever the relay said is only ever detail, escaped."""

from __future__ import annotations

import asyncio
import socket

import asyncssh

from ..config import Tunnel
from ..errors import (
    AuthFailed,
    ConnectRefused,
    ConnectTimeout,
    Disconnected,
    HostKeyMismatch,
    HostKeyRevoked,
    HostKeyUnknown,
    KeepaliveTimeout,
    ResolveFailed,
    TunnelError,
)
from ..peertext import peer_text, quoted
from .hostkeys import HostKeyVerdict

# What may escape asyncssh or the socket layer on any call that touches the wire.
WIRE_ERRORS = (asyncssh.Error, OSError, EOFError, asyncio.IncompleteReadError)


def auth_hint(relay_version: str | None, tunnel: Tunnel, user: str) -> str:
    """Where to look when the relay refuses our key, by what kind of server it is."""
    if relay_version and "dropbear" in relay_version.lower():
        return (
            "the relay runs Dropbear, which rejects OpenSSH-only key options (port-forwarding, "
            "permitlisten) by refusing the whole authorized_keys line: write it with "
            "`tunnelkeeper authorized-keys --sshd dropbear`"
        )
    return (
        f"the server's sshd log says why: look for 'Failed publickey for {user}', "
        "'Authentication refused' (StrictModes: owner or mode of the account's home, ~/.ssh "
        "or authorized_keys) or 'bad options' (journalctl -u ssh, or /var/log/auth.log)"
    )


def handshake_error(
    exc: BaseException,
    tunnel: Tunnel,
    verdict: HostKeyVerdict,
    pinned: bool,
    relay_version: str | None,
    silent_for: float,
    where: str,
    user: str,
    who: str = "relay",
) -> TunnelError:
    """Why connecting to `where` (host:port of `who`: the relay or a jump host) failed, as the
    most specific TunnelError."""
    if isinstance(exc, TunnelError):  # ours already (a proxy's failure, say)
        return exc
    if verdict.rejected is not None:  # our host-key check said no: no credentials were sent
        offered = verdict.offered
        seen = f" (it offered {offered.get_fingerprint('sha256')})" if offered else ""
        if verdict.rejected == "revoked":
            return HostKeyRevoked(
                f"{where}: host key is marked @revoked in {tunnel.known_hosts}{seen}; "
                "no credentials were sent"
            )
        if pinned:
            return HostKeyMismatch(
                f"{where}: host key does not match {tunnel.known_hosts}{seen}; "
                "no credentials were sent"
            )
        # Under accept-new, nothing pinned and still refused: known_hosts names the relay, in
        # @revoked lines only (for another key), so this was no first contact.
        why = ""
        if tunnel.host_key_policy == "accept-new":
            why = "; it names this host only in @revoked lines, so accept-new pins nothing"
        return HostKeyUnknown(f"{where}: no host key pinned in {tunnel.known_hosts}{seen}{why}")
    if isinstance(exc, asyncssh.PermissionDenied):
        return AuthFailed(
            f"{where}: {who} refused key {tunnel.identity} for user {user}; "
            + auth_hint(relay_version, tunnel, user)
        )
    if isinstance(exc, socket.gaierror):
        return ResolveFailed(f"{where}: name does not resolve ({exc.strerror})")
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return ConnectTimeout(f"{where}: no answer within {tunnel.connect_timeout:g}s")
    if isinstance(exc, ConnectionRefusedError):
        return ConnectRefused(f"{where}: connection refused")
    if isinstance(exc, OSError) and not isinstance(exc, ConnectionResetError | BrokenPipeError):
        return ConnectRefused(f"{where}: {exc.strerror or exc}")
    if isinstance(exc, UnicodeDecodeError | ValueError) and not isinstance(exc, OSError):
        # asyncssh's parsing of what the relay sent (a binary banner, say) gave up.
        return Disconnected(f"{where}: the relay sent what is not SSH ({peer_text(str(exc))})")
    if isinstance(exc, asyncssh.ConnectionLost | ConnectionResetError | BrokenPipeError):
        # Closed on us before we were in. sshd does this past MaxStartups, after a line
        # ("Exceeded MaxStartups") that asyncssh does not pass on; so say what it may be.
        return Disconnected(
            f"{where}: the relay closed the connection during the SSH handshake (sshd "
            "overloaded, e.g. MaxStartups reached, or not an SSH server)"
        )
    return lost_reason(exc if isinstance(exc, Exception) else None, tunnel, silent_for, where)


def lost_reason(
    exc: Exception | None, tunnel: Tunnel, silent_for: float, where: str = ""
) -> TunnelError:
    """Why a connection ended. Keepalive timeout only on our own evidence: the relay has sent
    nothing for as long as the keepalives allow."""
    prefix = f"{where}: " if where else ""
    budget = tunnel.keepalive_interval * tunnel.keepalive_count_max
    if silent_for >= budget and not _relay_spoke(exc):
        return KeepaliveTimeout(
            f"{prefix}relay stopped answering keepalives (silent for {silent_for:.1f}s)"
        )
    if _relay_spoke(exc):
        assert isinstance(exc, asyncssh.DisconnectError)
        return Disconnected(f"{prefix}relay disconnected: {quoted('it', exc.reason)}")
    if exc is None:
        return Disconnected(f"{prefix}connection closed")
    return Disconnected(f"{prefix}{peer_text(str(exc)) or type(exc).__name__}")


def _relay_spoke(exc: BaseException | None) -> bool:
    """A DISCONNECT message from the relay (asyncssh's ConnectionLost is its own verdict)."""
    return isinstance(exc, asyncssh.DisconnectError) and not isinstance(
        exc, asyncssh.ConnectionLost
    )
