"""The one way a test waits for a condition it cannot await: poll it, bounded in time, and fail
with an AssertionError that names what was awaited. `until` on an event loop, `until_blocking`
in plain threads (subprocess rigs, tmux screens)."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")
Said = str | Callable[[], str]  # what is awaited; a callable is asked only on failure


def _failure(timeout: float, what: Said) -> AssertionError:
    said = what() if callable(what) else what
    return AssertionError(f"timed out after {timeout}s waiting for {said}")


async def until(
    predicate: Callable[[], T],
    timeout: float = 5.0,
    what: Said = "the condition",
    *,
    interval: float = 0.01,
) -> T:
    """Poll `predicate` every `interval` s until it returns something true, and return that.

    Raises AssertionError naming `what` once `timeout` seconds have passed.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if loop.time() >= deadline:
            raise _failure(timeout, what)
        await asyncio.sleep(interval)


def until_blocking(
    predicate: Callable[[], T],
    timeout: float = 5.0,
    what: Said = "the condition",
    *,
    interval: float = 0.05,
) -> T:
    """`until` for code that is not on an event loop: sleeps the thread between polls."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise _failure(timeout, what)
        time.sleep(interval)


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def until_listening(
    proc: subprocess.Popen[Any],
    port: int,
    timeout: float,
    name: str,
    log: Callable[[], str],
    host: str = "127.0.0.1",
) -> None:
    """Wait for a daemon we started to listen on `port`; fail at once, with its log, if it
    exits first, or after `timeout` seconds."""

    def listening() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited {proc.returncode}:\n{log()}")
        return port_open(port, host)

    until_blocking(listening, timeout, lambda: f"{name} to listen on {port}:\n{log()}")


async def wait(predicate: Any, timeout: float, what: str) -> None:
    await until(predicate, timeout, what, interval=0.002)  # a fine grain: outages are timed


async def wait_listening(port: int) -> None:
    """`until` something listens on 127.0.0.1:`port` (a server started on this event loop)."""

    def listening() -> bool:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        except OSError:
            return False
        return True

    await until(listening, 5.0, f"a listener on port {port}", interval=0.02)
