"""Opening a connection to a forward's target: from the forward's `source` address, with Nagle
off, and with the PROXY protocol header as its first bytes when the forward sends one.

Every way tunnelkeeper reaches a target from this host (a forwarded connection, a probe that
falls back to the target) goes through `dial`, so they all come from the same address.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import socket
import sys
from collections.abc import Callable

from ..config import Endpoint
from ..errors import SourceUnavailable, TargetUnavailable

# Linux: reserve the local port at connect time, not at bind time, so that binding to
# `source` before connecting does not use up the ephemeral ports of that address early.
_BIND_NO_PORT: int | None = getattr(
    socket, "IP_BIND_ADDRESS_NO_PORT", 24 if sys.platform == "linux" else None
)


async def dial(
    factory: Callable[[], asyncio.Protocol],
    target: Endpoint,
    source: str | None,
    timeout: float,
    header: bytes = b"",
) -> asyncio.Transport:
    """Connect to `target` from `source` (None: the kernel's choice) and write `header` first.

    Raises SourceUnavailable when `source` is not an address of this host, TargetUnavailable
    when the target does not answer within `timeout`.
    """
    sock = await connect_socket(target, source, timeout)
    try:
        transport, _ = await asyncio.get_running_loop().create_connection(factory, sock=sock)
    except OSError as exc:
        sock.close()
        raise TargetUnavailable(f"target {target} unavailable: {exc.strerror or exc}") from exc
    if header:
        transport.write(header)
    return transport


async def connect_socket(target: Endpoint, source: str | None, timeout: float) -> socket.socket:
    """A non-blocking socket connected to `target` from `source` (None: the kernel's choice).

    Raises SourceUnavailable when `source` is not an address of this host, TargetUnavailable
    when the target does not answer within `timeout`.
    """
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(timeout):
            addrs = await _addresses(loop, target, source)
            return await _connect(loop, addrs, source, target)
    except (OSError, TimeoutError) as exc:
        reason = getattr(exc, "strerror", None) or "no answer"
        raise TargetUnavailable(f"target {target} unavailable: {reason}") from exc


async def _addresses(
    loop: asyncio.AbstractEventLoop, target: Endpoint, source: str | None
) -> list[tuple[int, tuple[str, int]]]:
    try:
        ip = ipaddress.ip_address(target.host)
    except ValueError:
        pass
    else:  # the usual case: no resolver round trip
        family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
        return [(family, (target.host, target.port))]
    want = 0 if source is None else _family(source)
    infos = await loop.getaddrinfo(target.host, target.port, family=want, type=socket.SOCK_STREAM)
    return [(info[0], (str(info[4][0]), int(info[4][1]))) for info in infos]


async def _connect(
    loop: asyncio.AbstractEventLoop,
    addrs: list[tuple[int, tuple[str, int]]],
    source: str | None,
    target: Endpoint,
) -> socket.socket:
    failure: OSError = OSError(errno.EHOSTUNREACH, "no address to connect to")
    for family, addr in addrs:
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            # The first bytes the target sends (an SMTP greeting) go out at once.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if source is not None:
                _bind(sock, source, target)
            await loop.sock_connect(sock, addr)
        except OSError as exc:
            sock.close()
            failure = exc
            continue
        except BaseException:
            sock.close()
            raise
        return sock
    raise failure


def _bind(sock: socket.socket, source: str, target: Endpoint) -> None:
    if _BIND_NO_PORT is not None and sock.family == socket.AF_INET:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_IP, _BIND_NO_PORT, 1)
    try:
        sock.bind((source, 0))
    except OSError as exc:
        if exc.errno == errno.EADDRNOTAVAIL:
            why = f"source {source} is not an address of this host"
        else:
            why = f"cannot use source {source}: {exc.strerror or exc}"
        raise SourceUnavailable(
            f"target {target}: {why} (set the forward's `source` to one of this host's "
            'addresses, or to "" for the kernel\'s choice)'
        ) from exc


def _family(address: str) -> int:
    return socket.AF_INET6 if ":" in address else socket.AF_INET


def source_usable(source: str) -> str | None:
    """Whether this host can send from `source`: None when it can, else why not (a bind test,
    nothing is sent)."""
    with socket.socket(_family(source), socket.SOCK_STREAM) as sock:
        try:
            sock.bind((source, 0))
        except OSError as exc:
            if exc.errno == errno.EADDRNOTAVAIL:
                return f"source {source} is not an address of this host"
            return f"cannot use source {source}: {exc.strerror or exc}"
    return None
