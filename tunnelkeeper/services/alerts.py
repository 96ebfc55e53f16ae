"""Alert hook: `on_down` when a forward stays down past `alert_after`, `on_up` when it recovers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

from ..config import SupervisorSettings
from ..state import ForwardStatus, SupervisorStatus, TunnelStatus

log = logging.getLogger(__name__)

HOOK_TIMEOUT = 30.0
# The hook is not the service: systemd must not take its datagrams for ours.
_PRIVATE_ENV = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


@dataclass
class _Track:
    down_since: float  # when this forward was first seen unhealthy
    alerted: bool = False


Alert = tuple[Literal["down", "up"], TunnelStatus, ForwardStatus]


class Alerts:
    """Which hooks a sequence of snapshots calls for: a forward unhealthy for `alert_after`
    seconds is "down" once, and "up" when it is healthy again. Pure: the caller gives the time,
    so a test can say "a minute later" without waiting a minute."""

    def __init__(self, alert_after: float) -> None:
        self.alert_after = alert_after
        self._tracks: dict[tuple[str, str], _Track] = {}

    def observe(self, status: SupervisorStatus, now: float) -> list[Alert]:
        alerts: list[Alert] = []
        seen: set[tuple[str, str]] = set()
        for tunnel in status.tunnels:
            if tunnel.state == "stopped":  # being stopped on purpose: nothing to page for
                seen.update((tunnel.name, fwd.name) for fwd in tunnel.forwards)
                continue
            for fwd in tunnel.forwards:
                key = (tunnel.name, fwd.name)
                seen.add(key)
                track = self._tracks.get(key)
                if not fwd.healthy:
                    if track is None:
                        track = self._tracks[key] = _Track(down_since=now)
                    if not track.alerted and now - track.down_since >= self.alert_after:
                        track.alerted = True
                        alerts.append(("down", tunnel, fwd))
                elif track is not None:
                    del self._tracks[key]
                    if track.alerted:
                        alerts.append(("up", tunnel, fwd))
        for key in self._tracks.keys() - seen:
            # Removed by a reload: we cannot say it recovered, so no "up" for it.
            if self._tracks.pop(key).alerted:
                log.info("%s/%s left the configuration while down; no on_up sent", *key)
        return alerts


async def watch(
    settings: SupervisorSettings,
    get_status: Callable[[], SupervisorStatus],
    poll: float = 1.0,
    *,
    hook_timeout: float = HOOK_TIMEOUT,
) -> None:
    """Watch the snapshots until cancelled and run the hooks; returns at once when neither
    `on_down` nor `on_up` is set. Hooks run in the background with a time limit, in order per
    forward; their failures are logged, never raised. Hooks still running when this is
    cancelled are killed."""
    if not settings.on_down and not settings.on_up:
        return
    loop = asyncio.get_running_loop()
    alerts = Alerts(settings.alert_after)
    hooks = _Hooks(hook_timeout)
    try:
        while True:
            for event, tunnel, fwd in alerts.observe(get_status(), loop.time()):
                argv = settings.on_down if event == "down" else settings.on_up
                hooks.fire(argv, event, tunnel, fwd)
            await asyncio.sleep(poll)
    finally:
        await hooks.cancel()


class _Hooks:
    """Hook processes in flight; those of one forward run one after another."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._tasks: set[asyncio.Task[None]] = set()
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}

    def fire(
        self, argv: tuple[str, ...], event: str, tunnel: TunnelStatus, fwd: ForwardStatus
    ) -> None:
        error, kind = _reason(tunnel, fwd)
        log.warning(
            "%s/%s %s%s",
            tunnel.name,
            fwd.name,
            "down" if event == "down" else "recovered",
            f": {error}" if event == "down" and error else "",
        )
        if not argv:
            return
        env = {k: v for k, v in os.environ.items() if k not in _PRIVATE_ENV}
        ours = {
            "TUNNELKEEPER_EVENT": event,
            "TUNNELKEEPER_TUNNEL": tunnel.name,
            "TUNNELKEEPER_FORWARD": fwd.name,
            "TUNNELKEEPER_SERVICE": fwd.service,
            "TUNNELKEEPER_ERROR": error,
            "TUNNELKEEPER_ERROR_KIND": kind,
        }
        env.update({name: clean_env_value(value) for name, value in ours.items()})
        lock = self._locks.setdefault((tunnel.name, fwd.name), asyncio.Lock())
        task = asyncio.create_task(self._run(argv, env, lock, f"on_{event}"))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(
        self, argv: tuple[str, ...], env: Mapping[str, str], lock: asyncio.Lock, what: str
    ) -> None:
        async with lock:
            try:
                proc = await asyncio.create_subprocess_exec(
                    *argv,
                    env=dict(env),
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.STDOUT,
                    # Its own session and process group: a Ctrl-C on our terminal is not meant
                    # for it, and the time limit can end it together with what it started.
                    start_new_session=True,
                )
            # Any failure to start (OSError, ValueError from a bad argv or env, ...) is the
            # hook's, not the watch's: log it and keep watching, so the next alert still fires.
            except Exception as exc:
                log.error("%s hook %s could not start: %r", what, argv[0], exc)
                return
            finished = False
            try:
                async with asyncio.timeout(self.timeout):
                    output, _ = await proc.communicate()
                finished = True
            except TimeoutError:
                log.error("%s hook %s took over %g s; killed", what, argv[0], self.timeout)
                return
            finally:
                # Timed out or cancelled: kill the whole group, so a script's children (a
                # pager's helper, or stragglers that keep its output open after it exited)
                # go with it. Its id cannot be reused while any member lives.
                if not finished:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(proc.pid, signal.SIGKILL)
                if proc.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        await proc.wait()
            text = output.decode(errors="replace").strip()
            if proc.returncode:
                last = text.splitlines()[-1] if text else "no output"
                log.error("%s hook %s exited %d: %s", what, argv[0], proc.returncode, last)
            else:
                log.debug("%s hook %s done%s", what, argv[0], f": {text}" if text else "")

    async def cancel(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


MAX_ENV_VALUE = 1024


def clean_env_value(text: str) -> str:
    """`text` as one line of plain text for the hook's environment: control characters (NUL
    among them, which no environment can hold), line separators and bidirectional overrides
    escaped as \\xNN / \\uNNNN, and at most MAX_ENV_VALUE characters."""
    out = []
    for char in text:
        if unicodedata.category(char) in ("Cc", "Cf", "Zl", "Zp"):
            code = ord(char)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
        else:
            out.append(char)
    value = "".join(out)
    return value if len(value) <= MAX_ENV_VALUE else value[: MAX_ENV_VALUE - 3] + "..."


def _reason(tunnel: TunnelStatus, fwd: ForwardStatus) -> tuple[str, str]:
    """What went wrong and its kind: the tunnel's error_kind, or `probe-failed`."""
    if fwd.failing and fwd.probe is not None:
        return fwd.error or fwd.probe.detail, "probe-failed"
    if fwd.state == "refused":
        return fwd.error or "the relay refused the listen", "forward-refused"
    if tunnel.state != "up":
        return tunnel.last_error or f"tunnel {tunnel.state}", tunnel.error_kind or ""
    return fwd.reason() or "", tunnel.error_kind or ""
