"""A real SOCKS5 proxy on 127.0.0.1 for tests: OpenSSH's `ssh -D` through an sshd of its own.

`ssh -D` is a SOCKS4/SOCKS5 server (no auth) that opens each requested connection as a
direct-tcpip channel; sshd at the far end resolves the names it is given, so it is a
socks5h-style proxy. A failed channel open closes the client's connection.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from .polling import until_listening
from .sshd import Sshd, free_port

SSH = shutil.which("ssh") or "/usr/bin/ssh"


class SshSocks:
    """`ssh -N -D 127.0.0.1:PORT` logged into `carrier` (an Sshd whose authorized_keys lets
    its client key open channels), which makes the onward connections."""

    def __init__(self, root: Path, carrier: Sshd) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.carrier = carrier
        self.port = free_port()
        self.log_path = root / "ssh-socks.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"socks5://127.0.0.1:{self.port}"

    def start(self, timeout: float = 15.0) -> None:
        argv = [
            SSH,
            "-N",
            "-D",
            f"127.0.0.1:{self.port}",
            "-p",
            str(self.carrier.port),
            "-i",
            str(self.carrier.client_key),
            "-l",
            self.carrier.user,
            "-F",
            "/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            f"UserKnownHostsFile={self.carrier.known_hosts}",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "ExitOnForwardFailure=yes",
            "-o",
            "ServerAliveInterval=5",
            "-E",
            str(self.log_path),
            "127.0.0.1",
        ]
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        until_listening(self.proc, self.port, timeout, "ssh -D", self.log_text)

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None

    def requests(self) -> list[str]:
        """The destinations SOCKS clients asked for, "host:port" with the name as sent, from
        the carrier sshd's log (it resolves them)."""
        out = []
        for line in self.carrier.log_text().splitlines():
            # server_request_direct_tcpip: originator 127.0.0.1 port 4, target localhost port 22
            if "server_request_direct_tcpip:" in line and ", target " in line:
                words = line.split(", target ", 1)[1].split()
                out.append(f"{words[0]}:{words[2]}")
        return out

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
