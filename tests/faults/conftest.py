"""Fixtures for the fault suite: relays to break, namespaces, and a book of measured outcomes."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import need
from tests.support.sshd import SSHD

from .embedded import world  # noqa: F401 (a fixture for the border and isolation tests)
from .kit import IP, NFT, FaultSshd, Netns

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
