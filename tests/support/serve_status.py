"""Serve a synthetic snapshot on a control socket until SIGTERM: `python -m
tests.support.serve_status SOCKET NAME_FILE`; NAME_FILE names the snapshot, read anew
for every request so that a test can change what the supervisor reports."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

from tests.support.snapshots import SNAPSHOTS
from tunnelkeeper.control import ControlServer
from tunnelkeeper.state import SupervisorStatus


async def main(socket_path: Path, name_file: Path) -> None:
    def get_status() -> SupervisorStatus:
        return SNAPSHOTS[name_file.read_text().strip()]()

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    async with ControlServer(socket_path, get_status):
        await stop.wait()


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), Path(sys.argv[2])))
