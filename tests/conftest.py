"""Shared fixtures: real sshds (plain and breakable), an SMTP sink, short folders, namespaces,
a control server, and a book of measured outcomes."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.control import ThreadedControlServer, write_config
from tests.support.embedded import world  # noqa: F401 (a fixture for the border and isolation tests)
from tests.support.faults import IP, NFT, FaultSshd, Netns
from tests.support.mailbox_mta import internal_mta  # noqa: F401 (a fixture for the held-mail tests)
from tests.support.postfix import postmap  # noqa: F401 (a fixture for the relay kit's postmap tests)
from tests.support.snapshots import healthy
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

    def __init__(self, port: int | None = None, data_reply: str = "250 OK queued") -> None:
        """`data_reply`: its answer to the end of every message (a 5xx: it refuses them)."""
        self.data_reply = data_reply
        self.raw: list[bytes] = []
        self.at: list[float] = []  # time.monotonic() of each message's arrival
        self.port = port or free_port()
        self._controller: Any = None

    def start(self) -> SmtpSink:
        """Start (or start again after stop(): the internal server coming back)."""
        from aiosmtpd.controller import Controller

        sink = self

        class Handler:
            async def handle_RCPT(
                self, server: Any, session: Any, envelope: Any, address: str, options: Any
            ) -> str:
                # Like a real MTA, it does not relay: `check`'s relay test (a recipient in
                # .invalid, a name that is never anyone's) is refused.
                if address.lower().rstrip(">").endswith(".invalid"):
                    return "550 5.7.1 Relaying denied"
                envelope.rcpt_tos.append(address)
                return "250 OK"

            async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
                sink.at.append(time.monotonic())
                sink.raw.append(envelope.original_content or envelope.content)
                return sink.data_reply

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


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A folder with a short path: AF_UNIX socket paths must stay under 108 bytes."""
    path = Path(tempfile.mkdtemp(prefix="tko-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def control_server(short_tmp: Path) -> Iterator[ThreadedControlServer]:
    server = ThreadedControlServer(short_tmp / "run" / "control.sock", healthy()).start()
    yield server
    server.stop()


@pytest.fixture
def config_for(short_tmp: Path) -> Callable[[Path], Path]:
    return lambda sock: write_config(short_tmp, sock)


OUTCOMES: list[dict[str, Any]] = []


@pytest.fixture
def fdir() -> Iterator[Path]:
    """A folder with a short path (AF_UNIX socket paths must stay under 108 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="tkf-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def make_relay(fdir: Path) -> Iterator[Callable[..., FaultSshd]]:
    """Factory of real OpenSSH sshds (see kit.FaultSshd), all stopped at teardown."""
    need(SSHD)
    started: list[FaultSshd] = []

    def make(name: str = "relay", start: bool = True, **kwargs: Any) -> FaultSshd:
        sshd = FaultSshd(fdir / name, **kwargs)
        started.append(sshd)
        if start:
            sshd.start()
        return sshd

    yield make
    for sshd in started:
        sshd.signal_sessions(18)  # SIGCONT anything a test froze
        sshd.stop()


def need_root() -> None:
    """Network namespaces need root; CI runs the suite as root, so there they always run."""
    if os.geteuid() != 0:
        pytest.skip("needs root for network namespaces (CI runs the suite as root)")
    need(IP)
    need(NFT)


@pytest.fixture
def netns() -> Iterator[Netns]:
    """A fresh namespace and veth pair on a private /30, deleted afterwards."""
    need_root()
    with Netns() as ns:
        yield ns


@pytest.fixture
def outcome(request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    """Fill in what a fault test measured; it is printed (-s), summarised, and appended as a
    JSON line to $TK_FAULT_OUTCOMES when that is set."""
    record: dict[str, Any] = {}
    yield record
    if not record:
        return
    line = {"test": request.node.name, **record}
    OUTCOMES.append(line)
    print("\nOUTCOME " + json.dumps(line))
    target = os.environ.get("TK_FAULT_OUTCOMES")
    if target:
        with open(target, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(line) + "\n")


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not OUTCOMES:
        return
    terminalreporter.section("fault outcomes (measured)")
    for line in OUTCOMES:
        rest = ", ".join(f"{k}={v}" for k, v in line.items() if k != "test")
        terminalreporter.write_line(f"{line['test']}: {rest}")
