"""Opening a connection to a forward's target: from the forward's `source` address, and with
the PROXY protocol header as its first bytes when the forward sends one.

Every way tunnelkeeper reaches a target from this host (a forwarded connection, a probe that
falls back to the target) goes through here, so they all come from the same address.
"""

from __future__ import annotations

import asyncio
import errno
import socket
from collections.abc import Callable
from typing import TypeVar

from ..config import Endpoint
from ..errors import SourceUnavailable, TargetUnavailable

P = TypeVar("P", bound=asyncio.BaseProtocol)


async def dial(
    factory: Callable[[], P],
    target: Endpoint,
    source: str | None,
    timeout: float,
    header: bytes = b"",
) -> tuple[asyncio.Transport, P]:
    """Connect to `target` from `source` (None: the kernel's choice), `header` first.

    The loop's own create_connection does it (uvloop's is about twice as fast as a socket
    connected by hand and then wrapped); both turn Nagle off on TCP sockets.

    Raises SourceUnavailable when `source` is not an address of this host, TargetUnavailable
    when the target does not answer within `timeout`.
    """
    loop = asyncio.get_running_loop()
    local = None if source is None else (source, 0)
    try:
        async with asyncio.timeout(timeout):
            transport, protocol = await loop.create_connection(
                factory, target.host, target.port, local_addr=local
            )
    except (OSError, TimeoutError) as exc:
        if source is not None and getattr(exc, "errno", None) == errno.EADDRNOTAVAIL:
            why = source_unusable(source)  # or connect() ran out of ports: a bind test tells
            if why is not None:
                raise SourceUnavailable(
                    f"target {target}: {why} (set the forward's `source` to one of this "
                    "host's addresses, or to \"\" for the kernel's choice)"
                ) from exc
        reason = getattr(exc, "strerror", None) or "no answer"
        raise TargetUnavailable(f"target {target} unavailable: {reason}") from exc
    if header:
        transport.write(header)
    return transport, protocol


def source_unusable(source: str) -> str | None:
    """Why this host cannot send from `source`, or None when it can (a bind test; nothing is
    sent)."""
    family = socket.AF_INET6 if ":" in source else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((source, 0))
        except OSError as exc:
            if exc.errno == errno.EADDRNOTAVAIL:
                return f"source {source} is not an address of this host"
            return f"cannot use source {source}: {exc.strerror or exc}"
    return None
