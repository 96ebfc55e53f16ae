"""The standby: a second authenticated connection to the relay, held ready so that the forwards
move onto it at once when the live connection dies."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from . import config, ssh
from .errors import TunnelkeeperError
from .state import StandbyState

log = logging.getLogger(__name__)

STANDBY_RETRY = 5.0  # seconds between attempts while the standby cannot connect


class Standby:
    """`keep()` holds the connection (a task of the live connection's); `take()` hands it over."""

    def __init__(
        self,
        cfg: config.Tunnel,
        connect: Callable[[config.Tunnel], Awaitable[ssh.RelayConnection]],
    ) -> None:
        self._cfg = cfg
        self._connect = connect
        self._conn: ssh.RelayConnection | None = None
        self._state: StandbyState = "off"

    @property
    def ready(self) -> bool:
        return self._conn is not None and not self._conn.is_closing

    @property
    def state(self) -> StandbyState:
        return "ready" if self.ready else self._state

    def take(self) -> ssh.RelayConnection | None:
        """The ready connection, now the caller's (None: none is ready)."""
        conn, self._conn = self._conn, None
        if conn is not None and conn.is_closing:
            return None
        return conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    async def keep(self) -> None:
        """Connect, wait until the connection is lost (or taken and lost), connect again."""
        name = self._cfg.name
        while True:
            if not self.ready:
                self._state = "connecting"
                try:
                    self._conn = await self._connect(self._cfg)
                except TunnelkeeperError as exc:
                    log.warning("tunnel %s: standby connection failed: %s", name, exc)
                    await asyncio.sleep(STANDBY_RETRY)
                    continue
                log.info("tunnel %s: standby connection ready", name)
            assert self._conn is not None
            reason = await self._conn.wait_lost()
            log.warning("tunnel %s: standby connection lost: %s", name, reason)
            self._conn = None
