"""Shared fixtures: a real OpenSSH sshd on 127.0.0.1, an SMTP sink, a supervisor process."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.sshd import SSHD, Sshd, free_port


def need(tool: str) -> None:
    """Tests that need a real peer fail in CI when it is missing, and skip elsewhere."""
    if shutil.which(tool) or Path(tool).exists():
        return
    message = f"{tool} is not installed (scripts/test installs it when run as root)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(autouse=True, scope="session")
def _own_state_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Supervisors the tests start (in process or as `tunnelkeeper run`) keep their history
    database under a folder of the test session's, never in the user's ~/.local/state."""
    old = os.environ.get("XDG_STATE_HOME")
    os.environ["XDG_STATE_HOME"] = str(tmp_path_factory.mktemp("state-home"))
    yield
    if old is None:
        os.environ.pop("XDG_STATE_HOME", None)
    else:
        os.environ["XDG_STATE_HOME"] = old


@pytest.fixture
def make_sshd(tmp_path: Path) -> Iterator[Any]:
    need(SSHD)
    started: list[Sshd] = []

    def make(name: str = "relay", start: bool = True, **kwargs: Any) -> Sshd:
        sshd = Sshd(tmp_path / name, **kwargs)
        if start:
            sshd.start()
        started.append(sshd)
        return sshd

    yield make
    for sshd in started:
        sshd.signal_sessions(18)  # SIGCONT anything a test froze
        sshd.stop()


class SmtpSink:
    """aiosmtpd on 127.0.0.1: the internal mail server behind the tunnel."""

    def __init__(self, port: int | None = None) -> None:
        self.raw: list[bytes] = []
        self.at: list[float] = []  # time.monotonic() of each message's arrival
        self.port = port or free_port()
        self._controller: Any = None

    def start(self) -> SmtpSink:
        """Start (or start again after stop(): the internal server coming back)."""
        from aiosmtpd.controller import Controller

        sink = self

        class Handler:
            async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
                sink.at.append(time.monotonic())
                sink.raw.append(envelope.original_content or envelope.content)
                return "250 OK queued"

        self._controller = Controller(
            Handler(), hostname="127.0.0.1", port=self.port, server_hostname="mail.example.org"
        )
        self._controller.start()
        return self

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None


@pytest.fixture
def smtp_sink() -> Iterator[SmtpSink]:
    sink = SmtpSink().start()
    yield sink
    sink.stop()
