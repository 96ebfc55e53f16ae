"""A real ssh-agent on a socket path of the test's choosing, holding the keys it is given."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

SSH_AGENT = shutil.which("ssh-agent") or "/usr/bin/ssh-agent"
SSH_ADD = shutil.which("ssh-add") or "/usr/bin/ssh-add"


class SshAgent:
    """`ssh-agent -D -a SOCKET` in the foreground; `kill()` is the agent going away (its
    socket file stays behind, as after a crash); `start()` again brings a new, empty agent up
    at the same path."""

    def __init__(self, socket_path: Path) -> None:
        self.socket = socket_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = socket_path.with_name(socket_path.name + ".log")

    def env(self) -> dict[str, str]:
        return {**os.environ, "SSH_AUTH_SOCK": str(self.socket)}

    def start(self, timeout: float = 10.0) -> SshAgent:
        with contextlib.suppress(FileNotFoundError):
            self.socket.unlink()  # a dead agent's socket: ssh-agent will not bind over it
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [SSH_AGENT, "-D", "-a", str(self.socket)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while not self.socket.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"ssh-agent did not start:\n{self.log_path.read_text()}")
            time.sleep(0.02)
        return self

    def add(self, key: Path, passphrase: str | None = None) -> None:
        """`ssh-add KEY` (an unencrypted key; `ssh-add` would ask for a passphrase)."""
        assert passphrase is None, "give the agent an unencrypted key"
        subprocess.run(
            [SSH_ADD, "-q", str(key)],
            env=self.env(),
            check=True,
            capture_output=True,
            timeout=15,
            stdin=subprocess.DEVNULL,
        )

    def public_keys(self) -> list[str]:
        """`ssh-add -L`: the public keys the agent holds."""
        out = subprocess.run(
            [SSH_ADD, "-L"], env=self.env(), capture_output=True, text=True, timeout=15
        )
        return [line for line in out.stdout.splitlines() if line.startswith("ssh-")]

    def kill(self) -> None:
        """SIGKILL: the agent is gone, its socket file is left."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self.proc = None

    def stop(self) -> None:
        self.kill()
        with contextlib.suppress(FileNotFoundError):
            self.socket.unlink()
