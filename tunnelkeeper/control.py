"""The control socket: a Unix-socket endpoint serving status snapshots, and its client.

Protocol: one JSON request line (`{"cmd": "status"}`), one JSON reply line, then close. The
socket is 0600 inside a 0700 folder of our own (refused if others may write it), a peer of
another uid is turned away (SO_PEERCRED), and an flock on `<socket>.lock` (never through a
symlink) makes a second supervisor on the same socket fail fast.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import json
import logging
import os
import socket
import stat
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from . import filetrust
from .errors import AlreadyRunning, ControlError
from .resources import Resource
from .state import SupervisorStatus

log = logging.getLogger(__name__)

MAX_REQUEST = 4096
REQUEST_TIMEOUT = 5.0


# check --mail asks a running supervisor to watch one of its forwards for a token; the
# answer is the seconds until the session that carried it handed the message over and the
# internal server's reply to its end (None: the session ended first), or None when `timeout`
# ran out.
MailWatch = Callable[[str, str, str, float], Awaitable[tuple[float, str | None] | None]]
MAX_WATCH = 600.0
# `tunnelkeeper flush` asks a running supervisor to ETRN over its connections: the answers,
# one JSON object per domain (LookupError for a tunnel it has not).
Flush = Callable[[str | None], Awaitable[list[dict[str, Any]]]]
FLUSH_TIMEOUT = 60.0  # the client's wait for every tunnel's answers


class ControlServer(Resource):
    """Serves `get_status()` on `path` while open, and `watch` for check --mail. Use as
    `async with ControlServer(...)`."""

    def __init__(
        self,
        path: Path,
        get_status: Callable[[], SupervisorStatus],
        watch: MailWatch | None = None,
        flush: Flush | None = None,
    ) -> None:
        self.path = path
        self._get_status = get_status
        self._watch = watch
        self._flush = flush
        self._server: asyncio.base_events.Server | None = None
        self._lock_fd: int | None = None

    async def start(self) -> None:
        """Take the lock and listen. Raises AlreadyRunning, ControlError on a bad path, or
        ConfigError when another user could write the socket's folder."""
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise ControlError(f"cannot create {self.path.parent}: {exc.strerror}") from exc
        # Whoever can write the folder could swap the socket or the lock for their own; an
        # existing folder is refused as it is, never quietly chmodded.
        filetrust.check_private_folder(self.path.parent, "control socket folder")
        _check_socket_path(self.path)
        self._lock_fd = _take_lock(self.path)
        if _is_socket(self.path):
            self.path.unlink()  # a stale socket left by a killed supervisor; the lock is ours
        old_umask = os.umask(0o177)
        try:
            self._server = await asyncio.start_unix_server(
                self._handle, path=str(self.path), limit=MAX_REQUEST
            )
        except OSError as exc:
            self._release()
            raise ControlError(f"cannot listen on {self.path}: {exc.strerror or exc}") from exc
        finally:
            os.umask(old_umask)
        os.chmod(self.path, 0o600)
        log.debug("control socket listening on %s", self.path)

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
            if _is_socket(self.path):
                self.path.unlink()
        self._release()

    async def wait_closed(self) -> None:
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    def _release(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            if not _same_user(writer):
                await _reply(writer, {"error": "permission denied"})
                return
            try:
                line = await asyncio.wait_for(reader.readline(), REQUEST_TIMEOUT)
                request = json.loads(line)
            # RecursionError: json's decoder recurses per bracket; "[[[[..." fits in one line.
            except (ValueError, RecursionError, asyncio.LimitOverrunError, TimeoutError):
                await _reply(writer, {"error": "bad request: send one JSON line"})
                return
            if isinstance(request, dict) and request.get("cmd") == "watch-mail":
                await self._watch_mail(request, writer)
                return
            if isinstance(request, dict) and request.get("cmd") == "flush":
                await self._flush_request(request, writer)
                return
            if not isinstance(request, dict) or request.get("cmd") != "status":
                await _reply(writer, {"error": "unknown command; known: status, watch-mail, flush"})
                return
            await _reply(writer, self._get_status().to_json())
        except (ConnectionError, OSError):
            pass  # the client went away mid-request; nothing to tell it
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()

    async def _watch_mail(self, request: dict[str, Any], writer: asyncio.StreamWriter) -> None:
        """Two reply lines: {"watching": true} once the watch is set, then {"seen": …}."""
        tunnel, forward, token = (request.get(k) for k in ("tunnel", "forward", "token"))
        timeout = request.get("timeout")
        if (
            self._watch is None
            or not all(isinstance(v, str) and v for v in (tunnel, forward, token))
            or not isinstance(timeout, int | float)
            or not 0 < timeout <= MAX_WATCH
        ):
            await _reply(writer, {"error": "watch-mail needs tunnel, forward, token, timeout"})
            return
        assert isinstance(tunnel, str) and isinstance(forward, str) and isinstance(token, str)
        try:
            waiting = asyncio.ensure_future(self._watch(tunnel, forward, token, float(timeout)))
            await asyncio.sleep(0)  # the watch is registered before the first await in it
            await _reply(writer, {"watching": True})
            handed = await waiting
        except LookupError as exc:
            await _reply(writer, {"error": str(exc)})
            return
        if handed is None:
            await _reply(writer, {"seen": False, "seconds": None, "reply": None})
        else:
            await _reply(writer, {"seen": True, "seconds": handed[0], "reply": handed[1]})

    async def _flush_request(self, request: dict[str, Any], writer: asyncio.StreamWriter) -> None:
        tunnel = request.get("tunnel")
        if self._flush is None or not (tunnel is None or isinstance(tunnel, str)):
            await _reply(writer, {"error": "flush takes a tunnel name or null"})
            return
        try:
            answers = await self._flush(tunnel)
        except LookupError as exc:
            await _reply(writer, {"error": str(exc.args[0])})
            return
        await _reply(writer, {"flushed": answers})


# sun_path holds 108 bytes on Linux, the terminating NUL included.
MAX_SOCKET_PATH = 107


def _check_socket_path(path: Path) -> None:
    """Refuse a control_socket path that cannot be a socket, or names something else: it
    is replaced only when it is a (stale) socket, never a file someone keeps there."""
    size = len(os.fsencode(path))
    if size > MAX_SOCKET_PATH:
        raise ControlError(
            f"control_socket {path} is {size} bytes long: a Unix socket path has at most "
            f"{MAX_SOCKET_PATH}; choose a shorter one"
        )
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    except OSError as exc:
        raise ControlError(f"cannot look at control_socket {path}: {exc.strerror}") from exc
    if not stat.S_ISSOCK(mode):
        raise ControlError(
            f"control_socket {path} exists and is not a socket: tunnelkeeper replaces only a "
            "stale socket of its own there, so give it a path of its own"
        )


def _is_socket(path: Path) -> bool:
    try:
        return stat.S_ISSOCK(path.lstat().st_mode)
    except OSError:
        return False


def _take_lock(path: Path) -> int:
    lock_path = path.with_name(path.name + ".lock")
    try:
        # O_NOFOLLOW: a symlink planted here must not make us create or lock its target.
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ControlError(
                f"cannot open {lock_path}: it is a symbolic link; tunnelkeeper never follows "
                "one there: remove it"
            ) from exc
        raise ControlError(f"cannot open {lock_path}: {exc.strerror}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EAGAIN, errno.EACCES):
            raise AlreadyRunning(
                f"another tunnelkeeper supervisor is already running on {path}"
            ) from None
        raise ControlError(f"cannot lock {lock_path}: {exc.strerror}") from exc
    return fd


def _same_user(writer: asyncio.StreamWriter) -> bool:
    sock = writer.get_extra_info("socket")
    if sock is None or not hasattr(socket, "SO_PEERCRED"):
        return True
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return uid in (os.geteuid(), 0)


async def _reply(writer: asyncio.StreamWriter, payload: dict[str, Any]) -> None:
    writer.write(json.dumps(payload, separators=(",", ":")).encode() + b"\n")
    await writer.drain()


async def fetch_status(path: Path, timeout: float = 5.0) -> SupervisorStatus:
    """Ask the supervisor on `path` for its status.

    Raises ControlError when nobody answers there or the reply is not a status.
    """
    line = await _ask(path, {"cmd": "status"}, timeout)
    try:
        data = json.loads(line)
        if "error" in data:
            raise ControlError(f"supervisor on {path} refused: {data['error']}")
        return SupervisorStatus.from_json(data)
    except (ValueError, KeyError, TypeError, OverflowError) as exc:
        raise ControlError(f"supervisor on {path} gave a reply that is not a status") from exc


async def request_flush(path: Path, tunnel: str | None) -> list[dict[str, Any]]:
    """Ask the supervisor on `path` to ETRN over its connections; its answers, one object per
    domain. Raises ControlError when nobody answers there, or it refuses (an unknown tunnel).
    """
    line = await _ask(path, {"cmd": "flush", "tunnel": tunnel}, FLUSH_TIMEOUT)
    try:
        data = json.loads(line)
    except ValueError as exc:
        raise ControlError(f"supervisor on {path} gave a reply that is not JSON") from exc
    if isinstance(data, dict) and isinstance(data.get("flushed"), list):
        return [a for a in data["flushed"] if isinstance(a, dict)]
    error = data.get("error") if isinstance(data, dict) else data
    raise ControlError(f"supervisor on {path} refused the flush: {error}")


async def _ask(path: Path, request: dict[str, Any], timeout: float) -> bytes:
    """One request line to the supervisor on `path`, its one reply line.

    Raises ControlError when nobody answers there within `timeout`.
    """
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_unix_connection(str(path), limit=2**24)
            try:
                writer.write(json.dumps(request, separators=(",", ":")).encode() + b"\n")
                await writer.drain()
                return await reader.readline()
            finally:
                writer.close()
    except (OSError, TimeoutError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "no answer"
        raise ControlError(f"no supervisor reachable on {path}: {reason}") from exc


class MailWatchClient:
    """check --mail's side of watch-mail: `await start()`, submit the message, `await seen()`."""

    def __init__(self, path: Path, tunnel: str, forward: str, token: str, timeout: float) -> None:
        self._path = path
        self._request = {
            "cmd": "watch-mail",
            "tunnel": tunnel,
            "forward": forward,
            "token": token,
            "timeout": timeout,
        }
        self._timeout = timeout
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def start(self) -> None:
        """Ask for the watch; return once it is set. Raises ControlError."""
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT):
                self._reader, self._writer = await asyncio.open_unix_connection(str(self._path))
                self._writer.write(json.dumps(self._request).encode() + b"\n")
                await self._writer.drain()
                reply = json.loads(await self._reader.readline())
        except (OSError, TimeoutError, ValueError) as exc:
            self.close()
            raise ControlError(f"the supervisor on {self._path} did not set the watch") from exc
        if not isinstance(reply, dict) or reply.get("watching") is not True:
            self.close()
            error = reply.get("error") if isinstance(reply, dict) else reply
            raise ControlError(f"the supervisor on {self._path} refused the watch: {error}")

    async def seen(self) -> tuple[bool, str | None]:
        """Whether the session that carried the token through the supervisor's forward handed
        the message over in time, and the internal server's answer to its end (None: the
        session ended without one). Raises ControlError."""
        assert self._reader is not None
        try:
            async with asyncio.timeout(self._timeout + REQUEST_TIMEOUT):
                reply = json.loads(await self._reader.readline())
        except (OSError, TimeoutError, ValueError) as exc:
            raise ControlError(f"the supervisor on {self._path} did not answer the watch") from exc
        finally:
            self.close()
        if not isinstance(reply, dict) or not reply.get("seen"):
            return False, None
        answer = reply.get("reply")
        return True, answer if isinstance(answer, str) else None

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
