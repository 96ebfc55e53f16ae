"""Fixtures for the observability tests: short socket paths, a control server on its own loop."""

from __future__ import annotations

import asyncio
import shutil
import socket
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tunnelkeeper.control import ControlServer
from tunnelkeeper.state import SupervisorStatus

from .obs_snapshots import healthy


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A folder with a short path: AF_UNIX socket paths must stay under 108 bytes."""
    path = Path(tempfile.mkdtemp(prefix="tko-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


class ThreadedControlServer:
    """A real ControlServer on an event loop in a background thread, serving `status`."""

    def __init__(self, path: Path, status: SupervisorStatus) -> None:
        self.path = path
        self.status = status
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="control-server", daemon=True)

    def start(self) -> ThreadedControlServer:
        self._thread.start()
        if not self._ready.wait(5):
            raise TimeoutError("control server did not start within 5 s")
        if self._error is not None:
            raise self._error
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(5)

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # handed to the test thread by start()
            self._error = exc
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with ControlServer(self.path, lambda: self.status):
            self._ready.set()
            await self._stop.wait()


@pytest.fixture
def control_server(short_tmp: Path) -> Iterator[ThreadedControlServer]:
    server = ThreadedControlServer(short_tmp / "run" / "control.sock", healthy()).start()
    yield server
    server.stop()


def write_config(folder: Path, control_socket: Path) -> Path:
    """A valid one-tunnel config whose supervisor answers on `control_socket`."""
    path = folder / "tunnelkeeper.toml"
    path.write_text(
        f"""\
[supervisor]
control_socket = "{control_socket}"

[[tunnel]]
name = "relay1"
host = "relay.example.net"
user = "tunnel"

  [[tunnel.forward]]
  name = "smtp"
  service = "smtp"
  listen = "127.0.0.1:2525"
  target = "127.0.0.1:25"
  domains = ["example.org"]
""",
        encoding="utf-8",
    )
    return path


@pytest.fixture
def config_for(short_tmp: Path) -> Callable[[Path], Path]:
    return lambda sock: write_config(short_tmp, sock)
