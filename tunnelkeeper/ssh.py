"""The only module that imports asyncssh: connection options, host-key policy, key loading,
and the translation of asyncssh and OSError exceptions into tunnelkeeper's error tree."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import stat
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

import asyncssh

from .config import Endpoint, Tunnel
from .errors import (
    AuthFailed,
    ChannelDenied,
    ConnectRefused,
    ConnectTimeout,
    Disconnected,
    ForwardRefused,
    HostKeyMismatch,
    HostKeyUnknown,
    KeepaliveTimeout,
    KeyFileError,
    ResolveFailed,
    TargetUnavailable,
    TunnelError,
)

log = logging.getLogger(__name__)

# AES-GCM runs in OpenSSL's constant-time hardware path; asyncssh's chacha20 is slower here.
CIPHERS = (
    "aes128-gcm@openssh.com",
    "aes256-gcm@openssh.com",
    "chacha20-poly1305@openssh.com",
    "aes128-ctr",
    "aes256-ctr",
)
# SPEC §5: never sign with SHA-1 (ssh-rsa); OpenSSH >= 8.8 refuses it anyway.
SIGNATURE_ALGS = (
    "rsa-sha2-512",
    "rsa-sha2-256",
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
)
WINDOW = 4 * 1024 * 1024
MAX_PACKET = 32768
_TCP_QUICKACK: int | None = getattr(socket, "TCP_QUICKACK", None)  # Linux only
READ_CHUNK = 36 * 1024  # one of sshd's 32 KiB channel packets with its framing

ChannelSession = Any  # duck-typed asyncssh SSHTCPSession, see forward.Splice
Acceptor = Callable[[str, int], Awaitable[ChannelSession]]


class Stream(Protocol):
    """What probes need of a byte stream: asyncio-like reader/writer in one object."""

    async def read(self, n: int) -> bytes: ...
    async def readline(self) -> bytes: ...
    async def readexactly(self, n: int) -> bytes: ...
    def write(self, data: bytes) -> None: ...
    async def drain(self) -> None: ...
    def close(self) -> None: ...


# -- keys -------------------------------------------------------------------------------------


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


def check_known_hosts(path: Path, policy: str) -> None:
    """Under `strict`, the pinned host keys must exist and be readable. Raises KeyFileError."""
    try:
        with path.open("rb"):
            pass
    except FileNotFoundError:
        if policy == "strict":
            raise KeyFileError(
                "known_hosts not found: pin the relay's host key (ssh-keyscan -p PORT HOST > "
                "this file, then compare its fingerprint with the relay admin's) or set "
                'host_key_policy = "accept-new" for first contact',
                path=str(path),
            ) from None
    except OSError as exc:
        raise KeyFileError(f"cannot read known_hosts: {exc.strerror}", path=str(path)) from None


# Parsed keys by path, with the (inode, size, mtime) they were read at. Parsing validates the
# RSA key (a primality check in OpenSSL: ~0.2 s for 4096 bits) and blocks the event loop, so
# every reconnect, standby and tunnel sharing the file would stall the others without it.
_identities: dict[Path, tuple[tuple[int, int, int], asyncssh.SSHKey]] = {}


def load_identity(path: Path) -> asyncssh.SSHKey:
    """Read the private key (again only when the file changed). Raises KeyFileError with a hint
    for encrypted or foreign keys."""
    check_identity_file(path)
    try:
        st = path.stat()
    except OSError as exc:
        raise KeyFileError(f"cannot read private key: {exc.strerror}", path=str(path)) from None
    version = (st.st_ino, st.st_size, st.st_mtime_ns)
    cached = _identities.get(path)
    if cached is not None and cached[0] == version:
        return cached[1]
    try:
        key = asyncssh.read_private_key(str(path))
    except (asyncssh.KeyEncryptionError, asyncssh.KeyImportError, ValueError) as exc:
        # Without a passphrase asyncssh reports an encrypted key as a KeyImportError
        # ("Passphrase must be specified ..."), so the message is the only sign of it.
        if isinstance(exc, asyncssh.KeyEncryptionError) or "passphrase" in str(exc).lower():
            raise KeyFileError(
                "private key is encrypted; tunnelkeeper runs unattended and reads no passphrase "
                "and no ssh-agent: it needs an unencrypted key readable only by its user. Make "
                "one with `tunnelkeeper keygen`, or decrypt a copy with `ssh-keygen -p -N '' "
                "-f COPY` and point identity at that copy (mode 0600)",
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


def public_key_fingerprint(public_line: str) -> str:
    return str(asyncssh.import_public_key(public_line).get_fingerprint("sha256"))


# -- host keys --------------------------------------------------------------------------------


def _known_hosts_name(host: str, port: int) -> str:
    return host if port == 22 else f"[{host}]:{port}"


class _Client(asyncssh.SSHClient):
    """Host-key policy and connection-loss bookkeeping for one connection."""

    def __init__(self, tunnel: Tunnel, pinned: list[asyncssh.SSHKey]) -> None:
        self._tunnel = tunnel
        self._pinned = pinned
        self.offered_key: asyncssh.SSHKey | None = None
        self.new_key: asyncssh.SSHKey | None = None
        self.lost: Exception | None = None
        self.lost_event = asyncio.Event()

    def validate_host_public_key(
        self, host: str, addr: str, port: int, key: asyncssh.SSHKey
    ) -> bool:
        # Called only for keys not among the pinned ones.
        self.offered_key = key
        if not self._pinned and self._tunnel.host_key_policy == "accept-new":
            self.new_key = key
            return True
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = exc
        self.lost_event.set()


def _pinned_keys(tunnel: Tunnel) -> list[asyncssh.SSHKey]:
    try:
        known = asyncssh.read_known_hosts(str(tunnel.known_hosts))
    except FileNotFoundError:
        if tunnel.host_key_policy == "strict":
            raise HostKeyUnknown(f"known_hosts {tunnel.known_hosts} not found") from None
        return []
    except (OSError, ValueError) as exc:
        raise HostKeyUnknown(f"cannot read known_hosts {tunnel.known_hosts}: {exc}") from None
    keys, *_ = known.match(tunnel.host, "", tunnel.port)
    return list(keys)


def _pin(tunnel: Tunnel, key: asyncssh.SSHKey) -> None:
    line = f"{_known_hosts_name(tunnel.host, tunnel.port)} "
    line += key.export_public_key("openssh").decode().strip() + "\n"
    path = tunnel.known_hosts
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="ascii") as fh:
        fh.write(line)
    log.warning(
        "%s: pinned new host key %s in %s (accept-new, first contact)",
        tunnel.name,
        key.get_fingerprint("sha256"),
        path,
    )


# -- connection -------------------------------------------------------------------------------


class RelayConnection:
    """One authenticated SSH connection to a relay. `async with` closes it."""

    def __init__(
        self, tunnel: Tunnel, conn: asyncssh.SSHClientConnection, client: _Client, host_key: str
    ) -> None:
        self.tunnel = tunnel
        self._conn = conn
        self._client = client
        self.host_key = host_key
        self.cipher = str(conn.get_extra_info("send_cipher", "?"))

    async def __aenter__(self) -> RelayConnection:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
        await self.wait_closed()

    @property
    def is_closing(self) -> bool:
        return self._client.lost_event.is_set()

    def close(self) -> None:
        self._conn.close()

    async def wait_closed(self) -> None:
        await self._conn.wait_closed()

    async def wait_lost(self) -> TunnelError:
        """Wait until the connection ends; return why, as the most specific TunnelError."""
        await self._client.lost_event.wait()
        return _lost_reason(self._client.lost)

    async def listen(self, listen: Endpoint, accept: Acceptor) -> Listener:
        """Ask the relay to listen on `listen`; each connection is handed to `accept`.

        Raises ForwardRefused when the relay says no (port held, permitlisten), or a
        TunnelError when the connection fails meanwhile.
        """

        async def factory(orig_host: str, orig_port: int) -> ChannelSession:
            try:
                return await accept(orig_host, orig_port)
            except TargetUnavailable as exc:
                raise asyncssh.ChannelOpenError(asyncssh.OPEN_CONNECT_FAILED, str(exc)) from exc

        try:
            listener = await self._conn.create_server(
                factory, listen.host, listen.port, window=WINDOW, max_pktsize=MAX_PACKET
            )
        except asyncssh.ChannelListenError as exc:
            raise ForwardRefused(f"relay refused to listen on {listen}") from exc
        except (asyncssh.Error, OSError) as exc:
            raise _translate(exc, self.tunnel) from exc
        return Listener(listener)

    async def open_stream(self, dest: Endpoint, timeout: float) -> Stream:
        """A direct-tcpip channel from the relay to `dest`.

        Raises ChannelDenied when the relay forbids it, TargetUnavailable when nothing answers
        there, TunnelError when the connection itself fails.
        """
        try:
            async with asyncio.timeout(timeout):
                reader, writer = await self._conn.open_connection(
                    dest.host, dest.port, window=WINDOW, max_pktsize=MAX_PACKET
                )
        except asyncssh.ChannelOpenError as exc:
            if exc.code == asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED:
                raise ChannelDenied(f"relay forbids channels to {dest}: {exc.reason}") from exc
            raise TargetUnavailable(f"relay could not reach {dest}: {exc.reason}") from exc
        except TimeoutError as exc:
            raise TargetUnavailable(f"no channel to {dest} within {timeout:g}s") from exc
        except (asyncssh.Error, OSError) as exc:
            raise _translate(exc, self.tunnel) from exc
        return StreamPair(reader, writer)


class Listener:
    """A relay-side listener; closing it sends cancel-tcpip-forward."""

    def __init__(self, listener: asyncssh.SSHListener) -> None:
        self._listener = listener

    def close(self) -> None:
        self._listener.close()

    async def wait_closed(self) -> None:
        with contextlib.suppress(asyncssh.Error, OSError):  # the connection is going away
            await self._listener.wait_closed()


class StreamPair:
    """A reader and writer (asyncio's or asyncssh's, which share the API) as one Stream."""

    def __init__(self, reader: Any, writer: Any) -> None:
        self._reader = reader
        self._writer = writer

    async def read(self, n: int) -> bytes:
        return bytes(await self._reader.read(n))

    async def readline(self) -> bytes:
        return bytes(await self._reader.readline())

    async def readexactly(self, n: int) -> bytes:
        try:
            return bytes(await self._reader.readexactly(n))
        except asyncio.IncompleteReadError as exc:
            raise EOFError("stream ended early") from exc

    def write(self, data: bytes) -> None:
        self._writer.write(data)

    async def drain(self) -> None:
        await self._writer.drain()

    def close(self) -> None:
        self._writer.close()


async def connect(tunnel: Tunnel) -> RelayConnection:
    """Connect, verify the relay's host key, authenticate with the tunnel's key.

    Raises the most specific TunnelError (HostKeyMismatch, AuthFailed, ConnectRefused, …),
    or KeyFileError when the private key cannot be used.
    """
    key = load_identity(tunnel.identity)
    pinned = _pinned_keys(tunnel)
    client = _Client(tunnel, pinned)
    try:
        conn = await asyncssh.connect(
            tunnel.host,
            tunnel.port,
            tunnel=_PacketSizedReads(),
            username=tunnel.user,
            client_factory=lambda: client,
            client_keys=[key],
            known_hosts=(pinned, [], []),
            agent_path=None,
            config=None,
            password=None,
            kbdint_auth=False,
            gss_auth=False,
            host_based_auth=False,
            encryption_algs=CIPHERS,
            signature_algs=SIGNATURE_ALGS,
            keepalive_interval=tunnel.keepalive_interval,
            keepalive_count_max=tunnel.keepalive_count_max,
            connect_timeout=tunnel.connect_timeout,
            login_timeout=tunnel.connect_timeout,
        )
    except (asyncssh.Error, OSError, TimeoutError) as exc:
        raise _translate(exc, tunnel, client, pinned) from exc
    host_key = conn.get_server_host_key()
    fingerprint = host_key.get_fingerprint("sha256") if host_key else "?"
    if client.new_key is not None:
        _pin(tunnel, client.new_key)
    return RelayConnection(tunnel, conn, client, fingerprint)


class _PacketSizedReads:
    """asyncssh's `tunnel` hook used for a plain TCP connection, so that asyncssh is fed what
    the socket gives in pieces of about one relay packet.

    asyncssh re-slices its whole input buffer for each packet it takes off the front: a
    256 KiB read (eight of sshd's 32 KiB packets) is copied about seven times over before it
    is used up. Fed packet-sized pieces, each byte is copied about once: 10 % less CPU per
    forwarded byte (benchmarks/fig1_throughput).
    """

    async def create_connection(
        self, session_factory: Callable[[], Any], host: str, port: int
    ) -> tuple[asyncio.BaseTransport, Any]:
        conn = session_factory()
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_connection(lambda: _Chunker(conn), host, port)
        return transport, conn


class _Chunker(asyncio.Protocol):
    """Passes everything to asyncssh's connection, data in READ_CHUNK pieces, and acknowledges
    what it read at once.

    sshd keeps Nagle on for a session without a terminal: when it sends two messages in a row
    and we have nothing to answer the first with, the second waits for our delayed ACK (40 ms
    on Linux). That stalled the reply to our first tcpip-forward after every login (the
    relay's debug and host-key messages come just before it) and every CHANNEL_OPEN that
    followed a channel's CHANNEL_CLOSE. TCP_QUICKACK after each read sends a pending ACK now;
    when asyncssh answered anything, the ACK went with it and this sends nothing.
    """

    def __init__(self, conn: Any) -> None:
        self._conn = conn
        self._transport: asyncio.BaseTransport | None = None
        self._sock: Any = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport
        if _TCP_QUICKACK is not None:
            self._sock = transport.get_extra_info("socket")
        self._conn.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if len(data) <= READ_CHUNK:
            self._conn.data_received(data)
        else:
            view = memoryview(data)
            for start in range(0, len(data), READ_CHUNK):
                if self._transport is not None and self._transport.is_closing():
                    return  # asyncssh closed the connection on what it has read so far
                self._conn.data_received(view[start : start + READ_CHUNK])
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.setsockopt(socket.IPPROTO_TCP, _TCP_QUICKACK, 1)

    def eof_received(self) -> bool | None:
        return self._conn.eof_received()  # type: ignore[no-any-return]

    def connection_lost(self, exc: Exception | None) -> None:
        self._conn.connection_lost(exc)

    def pause_writing(self) -> None:
        self._conn.pause_writing()

    def resume_writing(self) -> None:
        self._conn.resume_writing()


def _translate(
    exc: BaseException,
    tunnel: Tunnel,
    client: _Client | None = None,
    pinned: list[asyncssh.SSHKey] | None = None,
) -> TunnelError:
    where = f"{tunnel.host}:{tunnel.port}"
    if isinstance(exc, asyncssh.HostKeyNotVerifiable) or (
        isinstance(exc, asyncssh.KeyExchangeFailed) and pinned and "host key" in str(exc).lower()
    ):
        offered = client.offered_key if client else None
        seen = f" (it offered {offered.get_fingerprint('sha256')})" if offered else ""
        if pinned:
            return HostKeyMismatch(
                f"{where}: host key does not match {tunnel.known_hosts}{seen}; "
                "no credentials were sent"
            )
        return HostKeyUnknown(f"{where}: no host key pinned in {tunnel.known_hosts}{seen}")
    if isinstance(exc, asyncssh.PermissionDenied):
        return AuthFailed(f"{where}: relay refused key {tunnel.identity} for user {tunnel.user}")
    if isinstance(exc, socket.gaierror):
        return ResolveFailed(f"{tunnel.host}: name does not resolve ({exc.strerror})")
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return ConnectTimeout(f"{where}: no answer within {tunnel.connect_timeout:g}s")
    if isinstance(exc, ConnectionRefusedError):
        return ConnectRefused(f"{where}: connection refused")
    if isinstance(exc, OSError) and not isinstance(exc, ConnectionResetError | BrokenPipeError):
        return ConnectRefused(f"{where}: {exc.strerror or exc}")
    if client is not None and isinstance(exc, asyncssh.ConnectionLost | ConnectionResetError):
        # Closed on us before we were in. sshd does this past MaxStartups, after a line
        # ("Exceeded MaxStartups") that asyncssh does not pass on; so say what it may be.
        return Disconnected(
            f"{where}: the relay closed the connection during the SSH handshake (sshd "
            "overloaded, e.g. MaxStartups reached, or not an SSH server)"
        )
    return _lost_reason(exc if isinstance(exc, Exception) else None, where)


def _lost_reason(exc: Exception | None, where: str = "") -> TunnelError:
    prefix = f"{where}: " if where else ""
    text = str(exc) if exc else "connection closed"
    if "keepalive" in text.lower():
        return KeepaliveTimeout(f"{prefix}relay stopped answering keepalives")
    if isinstance(exc, asyncssh.DisconnectError):
        return Disconnected(f"{prefix}{exc.reason or text}")
    return Disconnected(f"{prefix}{text}")


def preflight(tunnels: Sequence[Tunnel]) -> None:
    """What `run` and `check` refuse at start (exit 2): unusable keys, unpinned strict relays.

    Raises KeyFileError naming the file.
    """
    for tunnel in tunnels:
        load_identity(tunnel.identity)
        check_known_hosts(tunnel.known_hosts, tunnel.host_key_policy)


# -- an embedded relay --------------------------------------------------------------------------


class _RelayServer(asyncssh.SSHServer):
    def __init__(self, relay: EmbeddedRelay) -> None:
        self._relay = relay
        self._conn: asyncssh.SSHServerConnection | None = None

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self._conn = conn
        self._relay.connections.add(conn)

    def connection_lost(self, exc: Exception | None) -> None:
        self._relay.connections.discard(self._conn)

    def server_requested(self, listen_host: str, listen_port: int) -> bool:
        # Like `GatewayPorts no`: a client may only ever listen on loopback.
        return listen_host in ("127.0.0.1", "localhost", "::1") and listen_port != 0

    def connection_requested(
        self, dest_host: str, dest_port: int, orig_host: str, orig_port: int
    ) -> bool:
        return self._relay.allow_direct and dest_host in ("127.0.0.1", "localhost", "::1")


class EmbeddedRelay:
    """A small in-process SSH relay on 127.0.0.1, for `tunnelkeeper demo` and fault tests.

    It accepts only the given authorized key, lets clients listen on loopback only, and
    can drop every connection at once to show recovery.
    """

    def __init__(
        self, host_key: bytes, authorized_keys: str, *, port: int = 0, allow_direct: bool = True
    ) -> None:
        self._host_key = asyncssh.import_private_key(host_key)
        self._authorized = asyncssh.import_authorized_keys(authorized_keys)
        self._port = port
        self.allow_direct = allow_direct
        self.connections: set[asyncssh.SSHServerConnection | None] = set()
        self._acceptor: asyncssh.SSHAcceptor | None = None

    @property
    def host_public_line(self) -> str:
        return self._host_key.export_public_key("openssh").decode().strip()

    @property
    def port(self) -> int:
        assert self._acceptor is not None, "relay not started"
        return int(self._acceptor.get_port())

    async def __aenter__(self) -> EmbeddedRelay:
        self._acceptor = await asyncssh.listen(
            "127.0.0.1",
            self._port,
            server_factory=lambda: _RelayServer(self),
            server_host_keys=[self._host_key],
            authorized_client_keys=self._authorized,
            allow_pty=False,
            x11_forwarding=False,
            agent_forwarding=False,
            keepalive_interval=5,
            keepalive_count_max=3,
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.drop_all()
        if self._acceptor is not None:
            self._acceptor.close()
            await self._acceptor.wait_closed()

    def drop_all(self) -> int:
        """Cut every client connection, as a crashed or restarted relay would."""
        conns = [c for c in self.connections if c is not None]
        for conn in conns:
            conn.abort()
        return len(conns)
