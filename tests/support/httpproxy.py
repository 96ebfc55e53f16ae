"""HTTP CONNECT proxies on 127.0.0.1 for tests: a real tinyproxy, and one that never answers."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import threading
from pathlib import Path

from .polling import until_listening
from .sshd import free_port

TINYPROXY = shutil.which("tinyproxy") or "/usr/bin/tinyproxy"


class Tinyproxy:
    """One tinyproxy in `root`, listening on 127.0.0.1 only, allowing CONNECT only to
    `connect_ports` (any other port gets tinyproxy's own "403 Access violation"), with Basic
    auth when `auth` = (user, password) is given (no credentials: "407 Proxy Authentication
    Required"). Runs as the current user; its config, pid and log files live in `root`."""

    def __init__(
        self,
        root: Path,
        connect_ports: tuple[int, ...],
        *,
        auth: tuple[str, str] | None = None,
        idle_timeout: int = 600,
        port: int | None = None,
    ) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.connect_ports = connect_ports
        self.auth = auth
        self.idle_timeout = idle_timeout
        self.config_path = root / "tinyproxy.conf"
        self.log_path = root / "tinyproxy.log"
        self.pid_path = root / "tinyproxy.pid"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def write_auth_file(self, path: Path, *, newline: bool = True) -> Path:
        """`user:password` (what proxy_auth_file holds), mode 0600."""
        assert self.auth is not None
        path.write_text(f"{self.auth[0]}:{self.auth[1]}" + ("\n" if newline else ""))
        path.chmod(0o600)
        return path

    def write_config(self) -> None:
        lines = [
            f"Port {self.port}",
            "Listen 127.0.0.1",
            "BindSame no",
            f"Timeout {self.idle_timeout}",
            f'PidFile "{self.pid_path}"',
            f'LogFile "{self.log_path}"',
            "LogLevel Info",
            "MaxClients 100",
            "Allow 127.0.0.1",
            "DisableViaHeader Yes",
            *(f"ConnectPort {port}" for port in self.connect_ports),
        ]
        if os.getuid() == 0:
            # As root tinyproxy would warn and stay root anyway; say so, so nothing changes
            # under its feet (the log and pid files are root's in a root-only folder).
            lines += ["User root", "Group root"]
        if self.auth is not None:
            lines.append(f"BasicAuth {self.auth[0]} {self.auth[1]}")
        self.config_path.write_text("\n".join(lines) + "\n")

    def start(self, timeout: float = 10.0) -> None:
        self.write_config()
        out = (self.root / "tinyproxy.out").open("ab")
        self.proc = subprocess.Popen(
            [TINYPROXY, "-d", "-c", str(self.config_path)],
            stdout=out,
            stderr=out,
            stdin=subprocess.DEVNULL,
        )
        out.close()
        until_listening(self.proc, self.port, timeout, "tinyproxy", self.log_text)

    def stop(self) -> None:
        """The proxy goes away: the port refuses connections, open tunnels through it break."""
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None

    def log_text(self) -> str:
        text = ""
        for path in (self.log_path, self.root / "tinyproxy.out"):
            with contextlib.suppress(FileNotFoundError):
                text += path.read_text(errors="replace")
        return text

    def connects(self) -> int:
        """CONNECT requests tinyproxy logged (every attempt, granted or not)."""
        return self.log_text().count("Request (file descriptor")


class HangingProxy:
    """A proxy port that accepts connections, reads what comes, and never answers: a proxy
    wedged upstream or a firewall that swallows the reply. Its own event loop in a thread."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.accepted = 0
        self._writers: set[asyncio.StreamWriter] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _swallow(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self._writers.add(writer)
        with contextlib.suppress(OSError):
            while await reader.read(4096):
                pass
        self._writers.discard(writer)
        writer.close()

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        server = await asyncio.start_server(self._swallow, "127.0.0.1", self.port)
        self._ready.set()
        await self._stop.wait()
        server.close()
        for writer in list(self._writers):
            writer.close()  # else wait_closed() waits for the clients to give up
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(server.wait_closed(), 5)

    def start(self) -> HangingProxy:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_until_complete, args=(self._main(),), daemon=True
        )
        self._thread.start()
        if not self._ready.wait(5):
            raise RuntimeError("the hanging proxy did not start")
        return self

    def stop(self) -> None:
        if self._loop is None or self._thread is None or self._stop is None:
            return
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(5)
        self._loop.close()
        self._loop = None
