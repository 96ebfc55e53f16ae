"""sd_notify(3) over $NOTIFY_SOCKET, without python-systemd: READY, STATUS, WATCHDOG, STOPPING."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Callable, Mapping

from ..state import SupervisorStatus

log = logging.getLogger(__name__)


class Notifier:
    """Sends sd_notify datagrams to the service manager; every method is a no-op returning False
    when not started by systemd (no $NOTIFY_SOCKET). Sending never blocks and never raises: a
    full or vanished socket is logged, since the tunnels matter more than the notification."""

    def __init__(self, address: str | None, *, watchdog_usec: int | None = None) -> None:
        self.address = address
        # systemd restarts us when no WATCHDOG=1 came within this many seconds.
        self.watchdog_interval = watchdog_usec / 1e6 if watchdog_usec else None
        self._sock: socket.socket | None = None
        self._stopping = False
        self._warned = False

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Notifier:
        """From $NOTIFY_SOCKET, $WATCHDOG_USEC and $WATCHDOG_PID (the watchdog is ours only
        when WATCHDOG_PID is unset or names this process)."""
        env = os.environ if env is None else env
        address = env.get("NOTIFY_SOCKET") or None
        if address is not None and not address.startswith(("/", "@")):
            log.debug("NOTIFY_SOCKET=%s is not a Unix socket; not notifying", address)
            address = None
        usec: int | None = None
        pid = env.get("WATCHDOG_PID")
        if pid is None or pid == str(os.getpid()):
            try:
                usec = int(env.get("WATCHDOG_USEC", "0")) or None
            except ValueError:
                log.warning("ignoring WATCHDOG_USEC=%r: not a number", env.get("WATCHDOG_USEC"))
        return cls(address, watchdog_usec=usec)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, *assignments: str) -> bool:
        """Send `KEY=value` assignments in one datagram. Returns whether it was sent."""
        if self.address is None:
            return False
        # The abstract namespace: a leading "@" stands for the NUL byte.
        target = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.setblocking(False)
            self._sock.sendto("\n".join(assignments).encode(), target)
        except OSError as exc:
            # Warn once: a watchdog that cannot ping is worth one line, not one every second.
            level = logging.DEBUG if self._warned else logging.WARNING
            log.log(level, "sd_notify to %s failed: %s", self.address, exc)
            self._warned = True
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        """READY=1: startup (or a reload) is done."""
        return self.notify("READY=1", *(() if status is None else (_status(status),)))

    def status(self, text: str) -> bool:
        """STATUS=: the one line `systemctl status` shows."""
        return self.notify(_status(text))

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def stopping(self) -> bool:
        """STOPPING=1, once: the graceful stop has begun."""
        if self._stopping:
            return False
        self._stopping = True
        return self.notify("STOPPING=1")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _status(text: str) -> str:
    # One datagram line per assignment: a newline would start a bogus one.
    return "STATUS=" + " ".join(text.split())


async def serve(
    notifier: Notifier,
    get_status: Callable[[], SupervisorStatus],
    first_attempts_done: asyncio.Event,
    *,
    poll: float = 1.0,
) -> None:
    """Keep systemd informed until cancelled: STATUS=<summary> whenever it changes, READY=1
    once `first_attempts_done` is set, WATCHDOG=1 at half the watchdog interval, and
    STOPPING=1 when cancelled. Returns at once when not under systemd. Raises nothing."""
    if not notifier.enabled:
        return
    loop = asyncio.get_running_loop()
    # Half the interval, as sd_watchdog_enabled(3) advises: one late ping is not a restart.
    ping_every = notifier.watchdog_interval / 2 if notifier.watchdog_interval else None
    next_ping = loop.time()
    ready = False
    last: str | None = None
    try:
        while True:
            if ping_every is not None and loop.time() >= next_ping:
                notifier.watchdog()
                next_ping = loop.time() + ping_every
            text = get_status().summary()
            if not ready and first_attempts_done.is_set():
                notifier.ready(text)
                ready, last = True, text
            elif text != last:
                notifier.status(text)
                last = text
            wake = poll if ping_every is None else min(poll, max(0.0, next_ping - loop.time()))
            if ready:
                await asyncio.sleep(wake)
            else:
                # Wake early when the first attempts finish: READY=1 should not lag behind.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wake):
                        await first_attempts_done.wait()
    finally:
        notifier.stopping()
        notifier.close()
