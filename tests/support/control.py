"""A real control server on its own loop in a thread, and a config whose supervisor it plays."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

from tunnelkeeper.control import ControlServer
from tunnelkeeper.state import SupervisorStatus


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
