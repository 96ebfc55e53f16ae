"""Relay-kit fixtures: the example config with a fixed public key, the second config, tools."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.support.polling import until_blocking
from tunnelkeeper.config import Config, load

HERE = Path(__file__).parent
REPO = HERE.parent.parent
EXAMPLE = REPO / "examples" / "tunnelkeeper.toml"
TWO_RELAYS = HERE / "configs" / "two-relays.toml"
OUTBOUND = HERE / "configs" / "outbound.toml"
EXAMPLE_PUB = HERE / "data" / "example_rsa.pub"
GOLDEN = HERE / "golden"


def need_tool(tool: str) -> str:
    """The tool's path; a missing tool fails the test in CI and skips it elsewhere."""
    found = shutil.which(tool) or next(
        (f"{d}/{tool}" for d in ("/usr/sbin", "/sbin") if Path(f"{d}/{tool}").exists()), None
    )
    if found:
        return found
    message = f"{tool} is not installed (CI installs it; apt-get install the package to run this)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def run(
    args: Sequence[str | os.PathLike[str]],
    *,
    input: str | None = None,
    timeout: float = 30,
    check: bool = True,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a real program with a time limit; on failure the assertion shows its output."""
    proc = subprocess.run(
        [str(a) for a in args],
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=cwd,
        check=False,
    )
    if check:
        assert proc.returncode == 0, (
            f"{args} exited {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
        )
    return proc


def copy_example(folder: Path) -> Path:
    """examples/tunnelkeeper.toml in `folder`, with the test public key where it looks."""
    config = folder / "tunnelkeeper.toml"
    shutil.copy(EXAMPLE, config)
    (folder / "keys").mkdir(exist_ok=True)
    shutil.copy(EXAMPLE_PUB, folder / "keys" / "tunnelkeeper_rsa.pub")
    return config


@pytest.fixture
def example_path(tmp_path: Path) -> Path:
    return copy_example(tmp_path)


@pytest.fixture
def example(example_path: Path) -> Config:
    return load(example_path)


@pytest.fixture
def two_relays() -> Config:
    return load(TWO_RELAYS)


@pytest.fixture
def outbound() -> Config:
    """Smarthost locals, NOTIFY, relay_mta, and a tunnel with locals only."""
    return load(OUTBOUND)


# -- an OpenSSH client as the tunnel, against the sshd fixture of tests/conftest.py ----------


def ssh_args(sshd: Any, *args: str, command: str | None = None) -> list[str]:
    return [
        need_tool("ssh"),
        "-F",
        "/dev/null",
        "-i",
        str(sshd.client_key),
        "-p",
        str(sshd.port),
        "-o",
        "BatchMode=yes",
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        f"UserKnownHostsFile={sshd.known_hosts}",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        "ExitOnForwardFailure=yes",
        "-o",
        "ConnectTimeout=5",
        *args,
        f"{sshd.user}@127.0.0.1",
        *([command] if command else []),
    ]


def banner(port: int, timeout: float = 5.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as conn:
        return conn.recv(200)


def wait_listening(port: int, proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    def listening() -> bool:
        if proc.poll() is not None:
            stderr = proc.stderr.read() if proc.stderr else b""
            raise AssertionError(f"ssh exited {proc.returncode}: {stderr!r}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        except OSError:
            return False
        return True

    until_blocking(listening, timeout, f"a listener on port {port}")


@contextlib.contextmanager
def reverse_forward(sshd: Any, listen: int, target: int) -> Iterator[subprocess.Popen[bytes]]:
    """`ssh -N -R 127.0.0.1:listen:127.0.0.1:target` held open: the tunnel, by OpenSSH."""
    proc = subprocess.Popen(
        ssh_args(sshd, "-N", "-R", f"127.0.0.1:{listen}:127.0.0.1:{target}"),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_listening(listen, proc)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def write_tunnel_config(
    path: Path, sshd: Any, smtp_listen: int, dns_listen: int, target: int
) -> Config:
    path.write_text(f"""\
[[tunnel]]
name = "relay1"
host = "127.0.0.1"
port = {sshd.port}
user = "{sshd.user}"
identity = "{sshd.client_key}"
known_hosts = "{sshd.known_hosts}"

  [[tunnel.forward]]
  name = "smtp"
  service = "smtp"
  listen = {smtp_listen}
  target = {target}
  domains = ["example.org"]

  [[tunnel.forward]]
  name = "dns"
  service = "dns"
  listen = {dns_listen}
  target = 53
  zones = ["example.org"]
""")
    return load(path)


def write_local_config(path: Path, sshd: Any, listen: int, target: int) -> Config:
    """A tunnel with one smtp [[tunnel.local]] only: this host's `listen` to the relay's
    `target` (the relay's MTA, the smarthost)."""
    path.write_text(f"""\
[supervisor]
control_socket = "{path.parent / "control.sock"}"

[[tunnel]]
name = "out"
host = "127.0.0.1"
port = {sshd.port}
user = "{sshd.user}"
identity = "{sshd.client_key}"
known_hosts = "{sshd.known_hosts}"

  [[tunnel.local]]
  name = "smarthost"
  service = "smtp"
  listen = {listen}
  target = {target}
""")
    return load(path)


# -- a real Dropbear (tests/support/dropbear.py) ---------------------------------------------


@pytest.fixture
def make_dropbear(tmp_path: Path) -> Iterator[Any]:
    """Factory of real Dropbear daemons on loopback, each with its own test account."""
    from tests.support.dropbear import DROPBEAR, DROPBEARKEY, UNSHARE, Dropbear

    for tool in (DROPBEAR, DROPBEARKEY, UNSHARE):
        need_tool(Path(tool).name)
    if os.geteuid() != 0:
        pytest.skip("Dropbear tests need root for a private mount namespace (CI runs as root)")
    started: list[Dropbear] = []

    def make(name: str = "dropbear", **kwargs: Any) -> Dropbear:
        relay = Dropbear(tmp_path / name, **kwargs)
        started.append(relay)
        return relay

    yield make
    for relay in started:
        relay.signal_sessions(18)  # SIGCONT anything a test froze
        relay.close()
