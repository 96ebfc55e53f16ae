"""The one error tree of tunnelkeeper; every error knows the `error_kind` it reports as.

TunnelkeeperError
├── ConfigError               config: bad file, key or value (exit 2 at start)
│   ├── KeyFileError          config: private key or known_hosts missing, unreadable, too open
│   └── ChooseTunnel          config: tunnels disagree on a generated line; name one of them
├── ControlError              the control socket: nobody answering, garbled reply
│   └── AlreadyRunning        another supervisor holds the control socket
├── ProbeError                an end-to-end probe failed (the tunnel may still be up)
├── TargetUnavailable         the local target refused a connection from the relay
│   ├── ForwardFull           max_connections (or the descriptor budget) reached
│   └── SourceUnavailable     a forward's `source` is not an address of this host
├── ChannelDenied             the relay forbids a channel we asked for (probe fallback)
├── StreamLost                a channel or local connection broke while in use
├── ServiceCannotStart        a companion service cannot start (a metrics port in use)
├── InternalError             internal: a bug ended one of a tunnel's tasks
└── TunnelError               one connection to the relay failed or ended
    ├── HostKeyMismatch       host-key-mismatch: the relay's key is not the pinned one
    ├── HostKeyUnknown        host-key-unknown: nothing pinned under the strict policy
    ├── HostKeyRevoked        host-key-revoked: known_hosts marks the relay's key @revoked
    ├── AuthFailed            auth-failed: the relay refused our key
    ├── ConnectRefused        connect-refused: nothing listening / network unreachable
    ├── ConnectTimeout        timeout: no answer within connect_timeout
    ├── KeepaliveTimeout      keepalive-timeout: the relay stopped answering keepalives
    ├── Disconnected          disconnected: the connection ended for any other reason
    ├── ForwardRefused        forward-refused: the relay refused a listen (port held, denied)
    ├── ProxyFailed           proxy: the HTTP or SOCKS5 proxy refused, failed or did not answer
    └── ResolveFailed         dns: the relay's name does not resolve
"""

from __future__ import annotations


class TunnelkeeperError(Exception):
    """Base of every error tunnelkeeper raises on purpose.

    `error_kind` is set only where a tunnel's state can end in it (status --json); errors
    that never end a tunnel keep None.
    """

    error_kind: str | None = None


class ConfigError(TunnelkeeperError):
    """The configuration cannot be used; the message names file, key and fault."""

    error_kind = "config"

    def __init__(self, message: str, *, path: str | None = None, key: str | None = None) -> None:
        self.path = path
        self.key = key
        self.detail = message  # what is wrong, without the file and key
        where = ": ".join(part for part in (path, key) if part)
        super().__init__(f"{where}: {message}" if where else message)


class KeyFileError(ConfigError):
    """A private key or known_hosts file is missing, unreadable or readable by others."""


class ChooseTunnel(ConfigError):
    """Two tunnels would write one line two ways: generate for one tunnel at a time."""


class ControlError(TunnelkeeperError):
    """The control socket could not be reached or answered nonsense."""


class AlreadyRunning(ControlError):
    """Another supervisor already answers on the control socket."""


class ProbeError(TunnelkeeperError):
    """An end-to-end probe did not get the answer it expects."""


class TunnelError(TunnelkeeperError):
    """A connection to the relay failed, or a live one ended.

    `relay_version`: the relay's SSH identification (escaped) when it sent one before the
    failure (a refused key, a host key that does not match), so status can keep it.
    """

    error_kind: str | None = "disconnected"
    relay_version: str | None = None


class HostKeyMismatch(TunnelError):
    error_kind = "host-key-mismatch"


class HostKeyUnknown(TunnelError):
    error_kind = "host-key-unknown"


class HostKeyRevoked(TunnelError):
    error_kind = "host-key-revoked"


class AuthFailed(TunnelError):
    error_kind = "auth-failed"


class ConnectRefused(TunnelError):
    error_kind = "connect-refused"


class ConnectTimeout(TunnelError):
    error_kind = "timeout"


class KeepaliveTimeout(TunnelError):
    error_kind = "keepalive-timeout"


class Disconnected(TunnelError):
    error_kind = "disconnected"


class ForwardRefused(TunnelError):
    error_kind = "forward-refused"


class ProxyFailed(TunnelError):
    error_kind = "proxy"


class ResolveFailed(TunnelError):
    error_kind = "dns"


class TargetUnavailable(TunnelkeeperError):
    """The local target refused or did not answer a connection handed in from the relay."""


class ForwardFull(TargetUnavailable):
    """A forward holds max_connections already (or the process is short of descriptors)."""


class SourceUnavailable(TargetUnavailable):
    """A forward's `source` address cannot be bound here (not an address of this host)."""


class StreamLost(TunnelkeeperError):
    """A relay channel or local connection broke while a probe or splice was using it."""


class ServiceCannotStart(TunnelkeeperError):
    """A service of the supervisor cannot start at all: `run` ends (exit 1) rather than go on
    without what the configuration asked for."""


class InternalError(TunnelkeeperError):
    """A bug (an exception outside this tree) ended one of a tunnel's tasks; the tunnel is
    restarted through its backoff. `__cause__` holds the original exception."""

    error_kind = "internal"


class ChannelDenied(TunnelkeeperError):
    """The relay forbids a channel we asked for (e.g. AllowTcpForwarding remote)."""


def _kinds(cls: type[TunnelkeeperError]) -> list[str]:
    own = [cls.__dict__["error_kind"]] if cls.__dict__.get("error_kind") else []
    return own + [kind for sub in cls.__subclasses__() for kind in _kinds(sub)]


# Every error_kind a tunnel can report, read off the tree above: one place to add a kind.
ERROR_KINDS: tuple[str, ...] = tuple(dict.fromkeys(_kinds(TunnelkeeperError)))
