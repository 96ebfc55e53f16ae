"""The traffic of one forwarder: what it carries and holds open, counted by its splices."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from .mailwatch import Handover, Watches

if TYPE_CHECKING:  # dnspython is loaded only where a dns forward is configured
    from .dnsgate import ZonePolicy

log = logging.getLogger(__name__)


class Connection(Protocol):
    """What a forwarder's traffic holds of an open connection: a way to end it at once."""

    def abort(self) -> None: ...


class ForwardTraffic:
    """What one forwarder (a forward or a local) carries and holds open: counts, bytes, the
    open splices and whether there are none, the tokens check --mail watches for, and where a
    bug in a splice is reported. The forwarder reads it into frozen snapshots."""

    open_everywhere = 0  # local sockets held by every forward of the process together

    def __init__(self) -> None:
        self.active = 0
        self.total = 0
        self.refused = 0  # channels turned away: max_connections or descriptors reached
        self.bytes_in = 0  # relay -> target
        self.bytes_out = 0  # target -> relay
        self.splices: set[Connection] = set()
        self.idle = asyncio.Event()
        self.idle.set()
        self.on_bug: Callable[[BaseException], object] | None = None
        # check --mail: tokens looked for in what the relay sends, only while a test runs.
        self.watches: Watches = {}
        self.dns: ZonePolicy | None = None  # a dns forward's gate policy: see dnsgate

    def watch(self, token: bytes) -> asyncio.Future[Handover]:
        """A future set once the SMTP session that carried `token` relay -> target handed its
        message over: the target's reply to the end of that message, or the session's end
        before one. Only sessions that begin while the watch is pending are read."""
        future: asyncio.Future[Handover] = asyncio.get_running_loop().create_future()
        self.watches[token] = future
        future.add_done_callback(
            lambda done: self.watches.pop(token) if self.watches.get(token) is done else None
        )
        return future

    def opened(self, splice: Connection) -> None:
        self.splices.add(splice)
        self.active += 1
        self.total += 1
        ForwardTraffic.open_everywhere += 1
        self.idle.clear()

    def closed(self, splice: Connection) -> None:
        if splice in self.splices:
            self.splices.discard(splice)
            self.active -= 1
            ForwardTraffic.open_everywhere -= 1
            if not self.active:
                self.idle.set()

    def bug(self, exc: BaseException) -> None:
        if self.on_bug is not None:
            self.on_bug(exc)
        else:
            log.error("a forwarded connection failed on a bug", exc_info=exc)

    def abort_all(self) -> None:
        for splice in list(self.splices):
            splice.abort()
