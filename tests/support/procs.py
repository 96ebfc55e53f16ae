"""Run `tunnelkeeper run` as a real process and watch it through its log and control socket."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tunnelkeeper import control
from tunnelkeeper.errors import ControlError
from tunnelkeeper.state import SupervisorStatus

from .sshd import wait_until


def fetch(socket_path: Path, timeout: float = 2.0) -> SupervisorStatus | None:
    try:
        return asyncio.run(control.fetch_status(socket_path, timeout))
    except ControlError:
        return None


class SupervisorProcess:
    """`python -m tunnelkeeper run -c CONFIG` in the background, stderr to a file."""

    def __init__(self, config: Path, *extra: str, env: dict[str, str] | None = None) -> None:
        """`env`: variables to add to this process's environment for it (SSH_AUTH_SOCK...)."""
        self.config = config
        self.log_path = config.parent / f"tunnelkeeper-{time.monotonic_ns()}.log"
        self.socket = config.parent / "control.sock"
        args = [sys.executable, "-m", "tunnelkeeper", "run", "-c", str(config), "--no-dashboard"]
        if os.getuid() == 0:
            args.append("--allow-root")
        args += list(extra)
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                args,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **env} if env else None,
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def status(self) -> SupervisorStatus | None:
        return fetch(self.socket)

    def status_now(self) -> SupervisorStatus:
        """The status it answers now; not answering fails the test, with the log."""
        st = self.status()
        assert st is not None, f"no status answered\nlog:\n{self.log()}"
        return st

    def wait_status(self, predicate, timeout: float, what: str) -> SupervisorStatus:
        def check() -> SupervisorStatus | None:
            if self.proc.poll() is not None:
                raise AssertionError(f"supervisor exited {self.proc.returncode}:\n{self.log()}")
            st = self.status()
            return st if st is not None and predicate(st) else None

        try:
            return wait_until(check, timeout, 0.05, what)
        except AssertionError as exc:
            raise AssertionError(
                f"{exc}\nlast status: {self.status()}\nlog:\n{self.log()}"
            ) from None

    def wait_forward(
        self, state: str, timeout: float, forward: str | None = None, tunnel: int = 0
    ) -> SupervisorStatus:
        def ok(st: SupervisorStatus) -> bool:
            fwds = [f for f in st.tunnels[tunnel].forwards if forward in (None, f.name)]
            return bool(fwds) and all(f.state == state for f in fwds)

        return self.wait_status(ok, timeout, f"forward {forward or '*'} {state}")

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 15.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode


def history_json(cfg: Path, *args: str) -> dict[str, Any]:
    """`tunnelkeeper history --json` for `cfg`, which must succeed."""
    out = subprocess.run(
        [sys.executable, "-m", "tunnelkeeper", "history", "--json", "-c", str(cfg), *args],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)
