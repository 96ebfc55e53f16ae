"""Another user for the tests of file and socket modes: a forked child that runs as nobody."""

from __future__ import annotations

import json
import os
import select
import time
from collections.abc import Callable
from typing import Any

NOBODY = 65534


def as_nobody(fn: Callable[[], Any], timeout: float = 15.0) -> Any:
    """Run `fn` in a forked child that dropped to uid/gid nobody; return what it returned."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            try:
                result = {"value": fn()}
            except Exception as exc:
                result = {"error": type(exc).__name__, "errno": getattr(exc, "errno", None)}
            os.write(write_end, json.dumps(result).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    try:
        ready, _, _ = select.select([read_end], [], [], timeout)
        assert ready, "the child running as nobody did not answer"
        data = b""
        while chunk := os.read(read_end, 65536):
            data += chunk
    finally:
        os.close(read_end)
        deadline = time.monotonic() + timeout
        while os.waitpid(pid, os.WNOHANG) == (0, 0):
            if time.monotonic() > deadline:
                os.kill(pid, 9)
                os.waitpid(pid, 0)
                break
            time.sleep(0.01)
    return json.loads(data)
