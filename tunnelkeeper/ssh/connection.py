"""One authenticated SSH connection to a relay: connect, listen, open channels, notice its end.

Every method that touches the wire returns data or raises a tunnelkeeper error; nothing that
asyncssh or the socket layer raises gets past this module.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import asyncssh

from ..config import Endpoint, Hop, Tunnel, host_port
from ..errors import (
    ChannelDenied,
    Disconnected,
    ForwardFull,
    ForwardRefused,
    ProxyFailed,
    TargetUnavailable,
    TunnelError,
)
from ..peertext import peer_text, quoted
from ..resources import Resource
from .credentials import Credentials, credentials
from .hostkeys import HostKeyVerdict, KnownHosts, accept_first_contact, pin, read_known_hosts
from .keys import read_secret
from .streams import Stream, StreamPair
from .translate import WIRE_ERRORS, handshake_error, lost_reason
from .transport import PacketSizedReads, ThroughHop, Watch

log = logging.getLogger(__name__)

# AES-GCM runs in OpenSSL's constant-time hardware path; asyncssh's chacha20 is slower here.
CIPHERS = (
    "aes128-gcm@openssh.com",
    "aes256-gcm@openssh.com",
    "chacha20-poly1305@openssh.com",
    "aes128-ctr",
    "aes256-ctr",
)
# Never sign with SHA-1 (ssh-rsa): OpenSSH >= 8.8 refuses it anyway.
SIGNATURE_ALGS = (
    "rsa-sha2-512",
    "rsa-sha2-256",
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
)
# The SSH window is what one forwarded connection can make us buffer when its target stops
# reading: max_connections × (WINDOW + the local socket's 64 KiB) is the worst case per
# forward. 1 MiB keeps loopback throughput at parity with ssh -R (BENCHMARKS.md, figure 1).
WINDOW = 1024 * 1024
MAX_PACKET = 32768

ChannelSession = Any  # duck-typed asyncssh SSHTCPSession, see forward.Splice
Acceptor = Callable[[str, int], Awaitable[ChannelSession]]
BugReport = Callable[[BaseException], object]


class _Client(asyncssh.SSHClient):
    """Host-key policy and connection-loss bookkeeping for one connection."""

    def __init__(self, tunnel: Tunnel, known: KnownHosts, verdict: HostKeyVerdict) -> None:
        self._tunnel = tunnel
        self._known = known
        self.verdict = verdict
        self.conn: asyncssh.SSHClientConnection | None = None
        self.lost: Exception | None = None
        self.lost_event = asyncio.Event()

    def connection_made(self, conn: asyncssh.SSHClientConnection) -> None:
        self.conn = conn

    def validate_host_public_key(
        self, host: str, addr: str, port: int, key: asyncssh.SSHKey
    ) -> bool:
        # Called only for keys that are neither trusted nor revoked.
        self.verdict.offered = key
        if accept_first_contact(self._tunnel, self._known):
            self.verdict.new_key = key
            return True
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = exc
        self.lost_event.set()

    @property
    def relay_version(self) -> str | None:
        if self.conn is None:
            return None
        version = self.conn.get_extra_info("server_version")
        return peer_text(version) if version else None


class RelayConnection(Resource):
    """One authenticated SSH connection to a relay. `async with` closes it."""

    def __init__(
        self, tunnel: Tunnel, step: _Step, hops: list[asyncssh.SSHClientConnection]
    ) -> None:
        self.tunnel = tunnel
        self._conn = step.conn
        self._client = step.client
        self._watch = step.watch
        self._hops = hops  # the jump hosts' connections, first hop first
        self.host_key = step.host_key
        self.cipher = peer_text(str(step.conn.get_extra_info("send_cipher", "?")))
        self.relay_version = step.client.relay_version
        self.relay_address = _relay_address(tunnel, step.conn, direct=not hops)

    @property
    def is_closing(self) -> bool:
        return self._client.lost_event.is_set()

    def close(self) -> None:
        for conn in (self._conn, *reversed(self._hops)):
            try:
                conn.close()
            except WIRE_ERRORS as exc:
                log.debug("closing a connection of the path: %s", exc)

    async def wait_closed(self) -> None:
        for conn in (self._conn, *reversed(self._hops)):
            try:
                await conn.wait_closed()
            except WIRE_ERRORS as exc:
                log.debug("waiting for a connection of the path to close: %s", exc)

    async def wait_lost(self) -> TunnelError:
        """Wait until the connection ends; return why, as the most specific TunnelError."""
        await self._client.lost_event.wait()
        return lost_reason(self._client.lost, self.tunnel, self._watch.silent_for())

    async def listen(
        self, listen: Endpoint, accept: Acceptor, on_bug: BugReport | None = None
    ) -> Listener:
        """Ask the relay to listen on `listen`; each connection is handed to `accept`.

        A TargetUnavailable from `accept` refuses that channel (ForwardFull as a resource
        shortage); any other exception is a bug, handed to `on_bug`, and refuses it too.
        Raises ForwardRefused when the relay says no (port held, permitlisten), or a
        TunnelError when the connection fails meanwhile.
        """

        async def factory(orig_host: str, orig_port: int) -> ChannelSession:
            try:
                return await accept(orig_host, orig_port)
            except ForwardFull as exc:
                raise asyncssh.ChannelOpenError(asyncssh.OPEN_RESOURCE_SHORTAGE, str(exc)) from exc
            except TargetUnavailable as exc:
                raise asyncssh.ChannelOpenError(asyncssh.OPEN_CONNECT_FAILED, str(exc)) from exc
            except Exception as exc:
                if on_bug is not None:
                    on_bug(exc)
                raise asyncssh.ChannelOpenError(
                    asyncssh.OPEN_CONNECT_FAILED, "internal error"
                ) from exc

        try:
            # A relay session that answers keepalives but never this (an sshd session
            # orphaned by a restart does that) must not hold the forward forever.
            async with asyncio.timeout(self.tunnel.connect_timeout):
                listener = await self._conn.create_server(
                    factory, listen.host, listen.port, window=WINDOW, max_pktsize=MAX_PACKET
                )
        except TimeoutError:
            raise Disconnected(
                f"{self.tunnel.host}:{self.tunnel.port}: no answer to the request to listen on "
                f"{listen} within {self.tunnel.connect_timeout:g}s"
            ) from None
        except asyncssh.ChannelListenError as exc:
            if self.is_closing:
                raise self._failed(self._client.lost) from exc
            raise ForwardRefused(f"relay refused to listen on {listen}") from exc
        except WIRE_ERRORS as exc:
            raise self._failed(exc) from exc
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
            if self.is_closing:
                raise self._failed(self._client.lost) from exc
            said = quoted("it", exc.reason)
            if exc.code == asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED:
                raise ChannelDenied(f"relay forbids channels to {dest} ({said})") from exc
            raise TargetUnavailable(f"relay could not reach {dest} ({said})") from exc
        except TimeoutError as exc:
            raise TargetUnavailable(f"no channel to {dest} within {timeout:g}s") from exc
        except WIRE_ERRORS as exc:
            raise self._failed(exc) from exc
        return StreamPair(reader, writer, f"channel to {dest}")

    def _failed(self, exc: BaseException | None) -> TunnelError:
        lost = exc if isinstance(exc, Exception) else None
        return lost_reason(lost, self.tunnel, self._watch.silent_for())


class Listener:
    """A relay-side listener; closing it sends cancel-tcpip-forward."""

    def __init__(self, listener: asyncssh.SSHListener) -> None:
        self._listener = listener

    def close(self) -> None:
        try:
            self._listener.close()
        except WIRE_ERRORS as exc:  # the connection is going away: so is the listener
            log.debug("closing a relay listener: %s", exc)

    async def wait_closed(self) -> None:
        try:
            await self._listener.wait_closed()
        except WIRE_ERRORS as exc:
            log.debug("waiting for a relay listener to close: %s", exc)


async def connect(tunnel: Tunnel) -> RelayConnection:
    """Connect (through the proxy and the jump hosts, if any), verify every host key, and
    authenticate with the tunnel's key, agent key or certificate.

    Raises the most specific TunnelError (HostKeyMismatch, AuthFailed, ConnectRefused,
    ProxyFailed, …, naming the jump host when one failed), or KeyFileError when a key file
    cannot be used.
    """
    creds = await credentials(tunnel)
    proxy_auth = (
        None
        if tunnel.proxy_auth_file is None
        else read_secret(tunnel.proxy_auth_file, "proxy_auth_file")
    )
    hops: list[asyncssh.SSHClientConnection] = []
    try:
        via: asyncssh.SSHClientConnection | None = None
        for hop in tunnel.jump:
            step = await _connect_one(
                tunnel, creds, hop.host, hop.port, hop.user or tunnel.user, via, proxy_auth, hop
            )
            hops.append(step.conn)
            via = step.conn
        final = await _connect_one(
            tunnel, creds, tunnel.host, tunnel.port, tunnel.user, via, proxy_auth, None
        )
    except BaseException as exc:
        for conn in reversed(hops):
            conn.abort()
        if _cancelled() and not isinstance(exc, asyncio.CancelledError):
            raise asyncio.CancelledError() from exc
        raise
    finally:
        creds.close()  # authentication is over: the agent is not needed again
    if _cancelled():
        for conn in (final.conn, *reversed(hops)):
            conn.abort()
        raise asyncio.CancelledError()
    return RelayConnection(tunnel, final, hops)


def _relay_address(tunnel: Tunnel, conn: asyncssh.SSHClientConnection, direct: bool) -> str | None:
    """The relay's IP address as this host reached it: the peer of our TCP connection when it
    goes straight there; through a proxy or a jump host, the configured host when it is an
    address; else None (not known here)."""
    if direct and tunnel.proxy is None:
        peer = conn.get_extra_info("peername")
        if peer:
            return str(peer[0])
    try:
        return str(ipaddress.ip_address(tunnel.host))
    except ValueError:
        return None


def _cancelled() -> bool:
    """Our task was cancelled while asyncssh connected. On Python 3.11 the asyncio.wait_for
    inside asyncssh.connect can turn a cancellation that lands as the connect fails into that
    failure, or lose it when the connect succeeds: the caller's cancel must still win, or a
    task told to stop goes on retrying."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


@dataclass
class _Step:
    """One authenticated SSH connection of the path: a jump host, or the relay itself."""

    conn: asyncssh.SSHClientConnection
    client: _Client
    watch: Watch
    host_key: str


async def _connect_one(
    tunnel: Tunnel,
    creds: Credentials,
    host: str,
    port: int,
    user: str,
    via: asyncssh.SSHClientConnection | None,
    proxy_auth: str | None,
    hop: Hop | None,
) -> _Step:
    known = read_known_hosts(tunnel, host, port)
    verdict = HostKeyVerdict()
    client = _Client(tunnel, known, verdict)
    watch = Watch()
    transport: PacketSizedReads | ThroughHop
    if via is None:
        transport = PacketSizedReads(
            verdict, watch, tunnel.proxy, proxy_auth, tunnel.connect_timeout
        )
    else:
        transport = ThroughHop(via, verdict, watch)
    name = host_port(host, port)
    where = name if hop is None else f"jump host {name}"
    try:
        conn = await asyncssh.connect(
            host,
            port,
            tunnel=transport,
            username=user,
            client_factory=lambda: client,
            client_keys=creds.keys,
            known_hosts=known.as_asyncssh(),
            # Only a CA known: offer plain keys too, so a relay without a certificate fails
            # on our host-key check (with its key named) rather than on a bare handshake.
            server_host_key_algs="default" if known.cas and not known.trusted else (),
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
    except (*WIRE_ERRORS, TimeoutError, TunnelError, ValueError) as exc:
        proxying = isinstance(transport, PacketSizedReads) and transport.in_proxy
        if isinstance(exc, TimeoutError) and proxying:  # asyncssh's timeout ended the proxy's
            raise ProxyFailed(
                f"proxy {tunnel.proxy}: timed out, no answer within {tunnel.connect_timeout:g}s"
            ) from exc
        # ValueError: asyncssh parsing garbage from the relay (UnicodeDecodeError included).
        error = handshake_error(
            exc,
            tunnel,
            verdict,
            pinned=bool(known.trusted or known.cas),
            relay_version=client.relay_version,
            silent_for=watch.silent_for(),
            where=where,
            user=user,
            who="relay" if hop is None else "the jump host",
        )
        if hop is None:  # the relay said who it is before it failed (a jump host is not it)
            error.relay_version = client.relay_version
        raise error from exc
    try:
        host_key = conn.get_server_host_key()
        fingerprint = host_key.get_fingerprint("sha256") if host_key else "?"
        if verdict.new_key is not None:
            pin(tunnel, verdict.new_key, host, port)
    except BaseException:
        conn.abort()
        raise
    return _Step(conn, client, watch, fingerprint)
