"""The peers of a restrictive network for the connection-path tests, and how to drive them.

`Rigs` starts (and at teardown stops) a relay sshd and whatever stands between us and it:
jump hosts, tinyproxy, a hanging proxy, SOCKS5 through `ssh -D`, an ssh-agent, a user CA.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.conftest import SmtpSink, need
from tests.support.agent import SSH_AGENT, SshAgent
from tests.support.bastion import chain_known_hosts, make_bastion
from tests.support.certs import UserCa
from tests.support.faults import send
from tests.support.httpproxy import TINYPROXY, HangingProxy, Tinyproxy
from tests.support.procs import SupervisorProcess
from tests.support.socks import SSH, SshSocks
from tests.support.sshd import SSHD, Sshd, free_port, wait_until

CHECK_TIMEOUT = 40


class Rigs:
    """Everything one test starts, under one short folder, stopped in reverse order."""

    def __init__(self, root: Path) -> None:
        need(SSHD)
        self.root = root
        self._started: list[Any] = []

    def _keep(self, thing: Any) -> Any:
        self._started.append(thing)
        return thing

    def relay(self, name: str = "relay", *, start: bool = True, **kwargs: Any) -> Sshd:
        sshd: Sshd = self._keep(Sshd(self.root / name, **kwargs))
        if start:
            sshd.start()
        return sshd

    def bastion(
        self, onward: Sshd, name: str = "bastion", names: tuple[str, ...] = ("127.0.0.1",)
    ) -> Sshd:
        """A jump host that lets the relay's client key through to `onward` only."""
        root = self.root / name
        sshd: Sshd = self._keep(make_bastion(root, onward.client_key, onward, names=names))
        return sshd

    def tinyproxy(
        self,
        *ports: int,
        auth: tuple[str, str] | None = None,
        port: int | None = None,
        start: bool = True,
    ) -> Tinyproxy:
        """tinyproxy allowing CONNECT to `ports` only; on `port` (say, where another proxy
        was) or a free one."""
        need(TINYPROXY)
        root = self.root / f"tinyproxy-{len(self._started)}"
        proxy: Tinyproxy = self._keep(Tinyproxy(root, ports, auth=auth, port=port))
        if start:
            proxy.start()
        return proxy

    def hanging_proxy(self, port: int | None = None) -> HangingProxy:
        proxy: HangingProxy = self._keep(HangingProxy(port).start())
        return proxy

    def socks(self, onward: Sshd) -> SshSocks:
        """SOCKS5 on 127.0.0.1 through a third sshd that may open channels to `onward`."""
        need(SSH)
        carrier = self.bastion(onward, "socks-carrier", ("127.0.0.1", "localhost"))
        socks: SshSocks = self._keep(SshSocks(self.root / "socks", carrier))
        socks.start()
        return socks

    def agent(self, *keys: Path) -> SshAgent:
        need(SSH_AGENT)
        agent: SshAgent = self._keep(SshAgent(self.root / "agent.sock").start())
        for key in keys:
            agent.add(key)
        return agent

    def user_ca(self) -> UserCa:
        return UserCa(self.root / "user-ca")

    def known_hosts(self, *hosts: Sshd) -> Path:
        return chain_known_hosts(self.root / "known_hosts.chain", *hosts)

    def close(self) -> None:
        for thing in reversed(self._started):
            if isinstance(thing, Sshd):
                thing.signal_sessions(signal.SIGCONT)
            thing.stop()


# -- driving tunnelkeeper ----------------------------------------------------------------------


def smtp_forward(listen: int, sink: SmtpSink) -> dict[str, Any]:
    return {
        "name": "smtp",
        "service": "smtp",
        "listen": f"127.0.0.1:{listen}",
        "target": f"127.0.0.1:{sink.port}",
        "domains": ["example.org"],
    }


def check(cfg: Path, env: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    """`tunnelkeeper check --json -c CFG`: its exit code and its one tunnel."""
    proc = subprocess.run(
        [sys.executable, "-m", "tunnelkeeper", "check", "-c", str(cfg), "--json"],
        capture_output=True,
        text=True,
        timeout=CHECK_TIMEOUT,
        env=env,
    )
    try:
        tunnel: dict[str, Any] = json.loads(proc.stdout)["tunnels"][0]
    except (json.JSONDecodeError, KeyError, IndexError):
        raise AssertionError(f"exit {proc.returncode}: {proc.stdout}{proc.stderr}") from None
    return proc.returncode, tunnel


def assert_up(code: int, tunnel: dict[str, Any]) -> None:
    """check said: connected, authenticated, the forward opened and its probe passed."""
    assert tunnel["state"] == "up" and tunnel["error_kind"] is None, tunnel
    fwd = tunnel["forwards"][0]
    assert fwd["state"] == "up" and fwd["probe"] and fwd["probe"]["ok"], tunnel
    assert code == 0, tunnel


def mail_through(listen: int, sink: SmtpSink, tag: str, timeout: float = 10.0) -> float:
    """Send one message to the relay-side port; return the seconds until the sink has it."""
    body = f"Subject: {tag}\r\nX-Path: {tag}\r\n\r\nthrough the tunnel: {tag}\r\n".encode()
    before = len(sink.raw)
    t0 = time.monotonic()
    send(listen, body)
    wait_until(lambda: len(sink.raw) > before, timeout, 0.01, f"mail {tag} at the sink")
    got = sink.raw[before]
    assert f"X-Path: {tag}".encode() in got, got
    return time.monotonic() - t0


def run_until_up(
    cfg: Path, timeout: float = 20.0, env: dict[str, str] | None = None
) -> tuple[SupervisorProcess, float]:
    """`tunnelkeeper run`, and the seconds from its start until the forward is up."""
    t0 = time.monotonic()
    sup = SupervisorProcess(cfg, env=env)
    try:
        sup.wait_forward("up", timeout)
    except BaseException:
        sup.stop()
        raise
    return sup, time.monotonic() - t0


def wait_error(
    sup: SupervisorProcess, kinds: tuple[str, ...], timeout: float, what: str = ""
) -> dict[str, Any]:
    """Wait until the tunnel reports one of `kinds`; its status fields then."""
    st = sup.wait_status(
        lambda s: s.tunnels[0].error_kind in kinds, timeout, what or f"error kind in {kinds}"
    )
    tunnel = st.tunnels[0]
    return {
        "state": tunnel.state,
        "error_kind": tunnel.error_kind,
        "last_error": tunnel.last_error or "",
        "connects": tunnel.connects,
    }


def recovery_after_session_kill(sup: SupervisorProcess, relay: Sshd, timeout: float) -> float:
    """Kill the relay's sessions (SIGKILL); seconds until the forward is up again on a new
    connection."""
    before = sup.wait_forward("up", timeout).tunnels[0].connects
    t0 = time.monotonic()
    assert relay.signal_sessions(signal.SIGKILL), "no relay session to kill"
    sup.wait_status(
        lambda s: s.tunnels[0].connects > before and s.tunnels[0].forwards[0].state == "up",
        timeout,
        "forward up on a new connection",
    )
    return time.monotonic() - t0


def credentials_env(folder: Path) -> dict[str, str]:
    return {**os.environ, "CREDENTIALS_DIRECTORY": str(folder)}


def fresh_listen() -> int:
    return free_port()


def remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink()


# -- OpenSSH's own client and raw sockets, to prove the rigs are what they claim ----------------


def openssh(
    relay: Sshd,
    *,
    key: Path | None = None,
    jump: tuple[Sshd, ...] = (),
    known_hosts: Path | None = None,
    extra: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """`ssh ... true` to `relay` with OpenSSH's client (through `jump` hosts, if any), with
    a config file of its own so that the jump hosts' ssh reads the same settings."""
    conf = relay.root / "ssh_config"
    lines = [
        "Host *",
        f"  UserKnownHostsFile {known_hosts or relay.known_hosts}",
        "  StrictHostKeyChecking yes",
        "  BatchMode yes",
        "  IdentitiesOnly yes",
        "  ConnectTimeout 10",
    ]
    if key is not None:
        lines.append(f"  IdentityFile {key}")
    conf.write_text("\n".join(lines) + "\n")
    argv = [SSH, "-F", str(conf), "-p", str(relay.port), "-l", relay.user, *extra]
    if jump:
        argv += ["-J", ",".join(f"{h.user}@127.0.0.1:{h.port}" for h in jump)]
    return subprocess.run(
        [*argv, "127.0.0.1", "true"],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
        stdin=subprocess.DEVNULL,
    )


def http_connect(
    proxy_port: int, host: str, port: int, authorization: str | None = None
) -> tuple[str, bytes]:
    """A CONNECT through the proxy: its status line and the first bytes from beyond it."""
    with socket.create_connection(("127.0.0.1", proxy_port), timeout=5) as sock:
        head = f"CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n"
        if authorization:
            head += f"Proxy-Authorization: Basic {authorization}\r\n"
        sock.sendall((head + "\r\n").encode())
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
        status, _, rest = data.partition(b"\r\n")
        beyond = rest.split(b"\r\n\r\n", 1)[1] if b"\r\n\r\n" in rest else b""
        if status.split()[1:2] == [b"200"] and not beyond:
            beyond = sock.recv(4096)
        return status.decode(), beyond


def socks5_connect(proxy_port: int, host: str, port: int) -> tuple[int, bytes]:
    """A SOCKS5 CONNECT by name (ATYP 3: the proxy resolves it): the reply code, and the
    first bytes from beyond it when it succeeded."""
    with socket.create_connection(("127.0.0.1", proxy_port), timeout=5) as sock:
        sock.sendall(b"\x05\x01\x00")
        assert sock.recv(2) == b"\x05\x00"
        name = host.encode()
        sock.sendall(b"\x05\x01\x00\x03" + bytes([len(name)]) + name + port.to_bytes(2, "big"))
        reply = sock.recv(10)
        if len(reply) < 2:
            return -1, b""
        return reply[1], sock.recv(4096) if reply[1] == 0 else b""
