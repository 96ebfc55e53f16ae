"""A slow link on the relay for the tests: a TCP proxy on 127.0.0.1 that passes bytes both
ways, but holds the end of each SMTP message (the line "." after the data) back for `delay`
seconds, as a relay across a slow or lossy link would deliver it. The relay's MTA dials it
instead of the forward's listen port, so a mail session is still going when its first bytes
have passed the tunnel."""

from __future__ import annotations

import socket
import threading
import time

END_OF_DATA = b"\r\n.\r\n"


class Trickle:
    """`start()`, `stop()`; `port` is where to connect, `target` the port it passes to."""

    def __init__(self, target: int, delay: float = 0.5) -> None:
        self.target, self.delay = target, delay
        self.held = 0  # how many message ends it held back
        self._server = socket.create_server(("127.0.0.1", 0))
        self._server.settimeout(0.2)
        self.port: int = self._server.getsockname()[1]
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._socks: list[socket.socket] = []

    def start(self) -> Trickle:
        self._spawn()
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(5)
        for sock in self._socks:
            sock.close()
        self._server.close()

    def _spawn(self, *args: socket.socket | bool) -> None:
        run = self._accept if not args else lambda: self._pump(*args)  # type: ignore[arg-type]
        thread = threading.Thread(target=run, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._server.accept()
            except TimeoutError:
                continue
            server = socket.create_connection(("127.0.0.1", self.target), timeout=5)
            for sock in (client, server):
                sock.settimeout(0.2)
                self._socks.append(sock)
            self._spawn(client, server, True)
            self._spawn(server, client, False)

    def _pump(self, src: socket.socket, dst: socket.socket, outbound: bool) -> None:
        tail = b""
        try:
            while not self._stop.is_set():
                try:
                    data = src.recv(65536)
                except TimeoutError:
                    continue
                if not data:
                    dst.shutdown(socket.SHUT_WR)
                    return
                found = (tail + data).find(END_OF_DATA)
                cut = found + 2 - len(tail)  # where the line "." starts in `data`
                if outbound and found >= 0 and cut >= 0:
                    dst.sendall(data[:cut])
                    self.held += 1
                    time.sleep(self.delay)
                    data = data[cut:]
                dst.sendall(data)
                tail = (tail + data)[-(len(END_OF_DATA) - 1) :]
        except OSError:  # the other side went away: so does this one
            src.close()
            dst.close()
