"""Shared benchmark harness: a loopback sshd relay, the sink, the three clients, measurements."""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, TypeVar

from tests.support.sshd import Sshd, descendants, keygen

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
SSH = shutil.which("ssh") or "/usr/bin/ssh"
AUTOSSH = shutil.which("autossh") or "/usr/bin/autossh"
CLOCK_TICK = os.sysconf("SC_CLK_TCK")
KEY_BITS = 4096  # what `tunnelkeeper keygen` makes; both clients sign with the same key


C = TypeVar("C", bound="Client")


class BenchTimeout(Exception):
    """A figure ran past its time budget."""


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise BenchTimeout in the main thread when `seconds` pass (so every script stops)."""

    def expire(signum: int, frame: FrameType | None) -> None:
        raise BenchTimeout(f"figure ran past its {seconds:.0f}s budget")

    old = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def raise_nofile(wanted: int = 65536) -> int:
    """Raise RLIMIT_NOFILE (inherited by sshd, the sink and the clients); return the new soft."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY:
        wanted = min(wanted, hard)
    if soft < wanted:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# -- statistics -------------------------------------------------------------------------------


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def p95(values: Sequence[float]) -> float:
    """Nearest-rank 95th percentile."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[max(0, -(-95 * len(ordered) // 100) - 1)]


def ratio(value: float, base: float) -> float:
    return value / base if base else float("inf")


# -- results ----------------------------------------------------------------------------------


@dataclass
class Target:
    """One of the issue's targets, and whether this run met it."""

    label: str
    value: str
    goal: str
    met: bool


@dataclass
class Figure:
    """One figure's table (first row is the header), targets and notes."""

    key: str
    title: str
    table: list[list[str]]
    targets: list[Target] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    error: str | None = None

    def markdown(self) -> str:
        lines = [f"### {self.key}. {self.title}", ""]
        if self.error:
            lines += [f"**Failed:** `{self.error}`", ""]
        if self.table:
            header, *rows = self.table
            lines.append("| " + " | ".join(header) + " |")
            lines.append("|" + "|".join("---" for _ in header) + "|")
            lines += ["| " + " | ".join(row) + " |" for row in rows]
            lines.append("")
        lines += [f"- {note}" for note in self.notes]
        lines.append(f"- figure took {self.seconds:.0f} s")
        return "\n".join(lines) + "\n"


def figure_main(run: Callable[[bool], Figure]) -> None:
    """`python -m benchmarks.figN [--quick]`: run one figure and print its markdown."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="minimal counts (smoke test)")
    args = parser.parse_args()
    print(timed(run, args.quick).markdown())


def timed(run: Callable[[bool], Figure], quick: bool) -> Figure:
    t0 = time.monotonic()
    fig = run(quick)
    fig.seconds = time.monotonic() - t0
    return fig


# -- processes --------------------------------------------------------------------------------


def proc_stat(pid: int) -> list[str]:
    text = Path(f"/proc/{pid}/stat").read_text()
    return text.rsplit(")", 1)[1].split()


def cpu_seconds(pids: Sequence[int]) -> float:
    """utime + stime of `pids` (the ones still alive)."""
    ticks = 0
    for pid in pids:
        with contextlib.suppress(OSError, IndexError):
            fields = proc_stat(pid)
            ticks += int(fields[11]) + int(fields[12])
    return ticks / CLOCK_TICK


def memory_kb(pid: int) -> tuple[int, int]:
    """(RSS, PSS) of one process in KiB."""
    rss = pss = 0
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Rss:"):
                rss = int(line.split()[1])
            elif line.startswith("Pss:"):
                pss = int(line.split()[1])
    return rss, pss


def listener_pids(port: int) -> list[int]:
    """Pids holding the IPv4 listening socket on 127.0.0.1:`port`."""
    inodes: set[str] = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        parts = line.split()
        local, state, inode = parts[1], parts[3], parts[9]
        if state == "0A" and int(local.split(":")[1], 16) == port:
            inodes.add(f"socket:[{inode}]")
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in (entry / "fd").iterdir():
                with contextlib.suppress(OSError):
                    if os.readlink(fd) in inodes:
                        found.append(int(entry.name))
                        break
    return found


def signal_pids(pids: Sequence[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 5.0) -> None:
    """SIGTERM, then SIGKILL; also kill whatever it left behind."""
    kids = descendants(proc.pid) if proc.poll() is None else []
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)
    signal_pids(kids, signal.SIGKILL)


# -- the relay --------------------------------------------------------------------------------


class BenchSshd(Sshd):
    """The test suite's sshd with a relay's log level and room for many sessions."""

    def write_config(self) -> None:
        super().write_config()
        text = self.config_path.read_text()
        text = text.replace("LogLevel DEBUG1", "LogLevel INFO")
        text = text.replace("MaxStartups 50:30:100", "MaxStartups 400:30:1000\nMaxSessions 1000")
        self.config_path.write_text(text)

    def connections(self) -> set[int]:
        """One pid per client connection: the per-connection sshd processes (children)."""
        if self.proc is None:
            return set()
        out = set()
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                with contextlib.suppress(OSError, IndexError):
                    if int(proc_stat(int(entry.name))[1]) == self.proc.pid:
                        out.add(int(entry.name))
        return out

    def session_of(self, listen: int) -> list[int]:
        """The sshd session processes behind the listener on `listen`: the holder, its
        children, and its parent when that is a per-connection monitor, not the daemon."""
        assert self.proc is not None
        ours = set(descendants(self.proc.pid))
        pids = [p for p in listener_pids(listen) if p in ours]
        for pid in list(pids):
            pids += [kid for kid in descendants(pid) if kid not in pids]
            with contextlib.suppress(OSError, IndexError):
                parent = int(proc_stat(pid)[1])
                if parent in ours and parent not in pids:
                    pids.append(parent)
        return pids


# -- probes -----------------------------------------------------------------------------------


def greet(port: int, timeout: float = 1.0) -> bool:
    """Connect to 127.0.0.1:`port` and read a 220 greeting; close."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            data = b""
            while b"\n" not in data:
                chunk = sock.recv(256)
                if not chunk:
                    return False
                data += chunk
            return data.startswith(b"220")
    except OSError:
        return False


def wait_answer(port: int, timeout: float, interval: float = 0.002) -> float | None:
    """Poll until the forward on `port` greets; return the monotonic time it did, or None."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if greet(port, timeout=0.5):
            return time.monotonic()
        time.sleep(interval)
    return None


# -- clients ----------------------------------------------------------------------------------


class Client:
    """A tunnel client under test, holding reverse forwards on `listens` to the sink."""

    label = "?"

    def __init__(self, env: Env, listens: Sequence[int]) -> None:
        self.env = env
        self.listens = list(listens)
        self.procs: list[subprocess.Popen[bytes]] = []
        self.log_path = env.root / f"{type(self).__name__.lower()}-{time.monotonic_ns()}.log"

    def _spawn(self, args: list[str], env: dict[str, str] | None = None) -> None:
        with self.log_path.open("ab") as log:
            self.procs.append(
                subprocess.Popen(
                    args,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    cwd=ROOT,
                    env=None if env is None else {**os.environ, **env},
                )
            )

    def start(self) -> None:
        raise NotImplementedError

    def wait_ready(self, timeout: float = 30.0) -> float:
        """Wait until every forward greets; return seconds waited. Raises RuntimeError."""
        t0 = time.monotonic()
        deadline = t0 + timeout
        for port in self.listens:
            while not greet(port, 0.5):
                dead = [p.args for p in self.procs if p.poll() is not None]
                if dead and not isinstance(self, Autossh):
                    raise RuntimeError(f"{self.label} exited: {self.log()[-2000:]}")
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"{self.label} not ready in {timeout}s: {self.log()[-2000:]}"
                    )
                time.sleep(0.01)
        return time.monotonic() - t0

    def pids(self) -> list[int]:
        """Every process of this client (for footprint)."""
        out = []
        for proc in self.procs:
            if proc.poll() is None:
                out.append(proc.pid)
                out += descendants(proc.pid)
        return out

    def stop(self) -> None:
        for proc in self.procs:
            stop_process(proc)
        self.procs.clear()

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def __enter__(self) -> Client:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _toml_list(value: Any) -> str:
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return _toml(value)


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


class Tunnelkeeper(Client):
    """`python -m tunnelkeeper run --no-dashboard --allow-root`, one [[tunnel]] per listen."""

    label = "tunnelkeeper"

    def __init__(
        self,
        env: Env,
        listens: Sequence[int],
        *,
        standby: bool = False,
        max_connections: int = 100,
        forward: dict[str, Any] | None = None,
        **settings: Any,
    ) -> None:
        """`forward`: keys that replace the tcp forward to the sink (a dns forward, say)."""
        super().__init__(env, listens)
        self.max_connections = max_connections
        self.forward: dict[str, Any] = {
            "name": "smtp",
            "service": "tcp",
            "target": f"127.0.0.1:{env.sink_port}",
            "max_connections": max_connections,
            **(forward or {}),
        }
        if standby:
            self.label = "tunnelkeeper standby"
        self.settings: dict[str, Any] = {
            "keepalive_interval": 5,
            "keepalive_count_max": 3,
            "probe_interval": 0,  # autossh and ssh -R probe nothing; keep the work equal
            "standby": standby,
        }
        self.settings.update(settings)
        self.folder = Path(tempfile.mkdtemp(prefix="tk-", dir=env.root))
        self.config = self.folder / "tunnelkeeper.toml"

    def write_config(self) -> None:
        sshd = self.env.sshd
        lines = [
            "[supervisor]",
            f"control_socket = {_toml(self.folder / 'control.sock')}",
            'log_level = "info"',
            "shutdown_grace = 1",
            "",
            "[defaults]",
            *(f"{k} = {_toml(v)}" for k, v in self.settings.items()),
        ]
        for i, listen in enumerate(self.listens):
            lines += [
                "",
                "[[tunnel]]",
                f'name = "t{i}"',
                'host = "127.0.0.1"',
                f"port = {sshd.port}",
                f"user = {_toml(sshd.user)}",
                f"identity = {_toml(sshd.client_key)}",
                f"known_hosts = {_toml(sshd.known_hosts)}",
                "",
                "  [[tunnel.forward]]",
                f'  listen = "127.0.0.1:{listen}"',
                *(f"  {k} = {_toml_list(v)}" for k, v in self.forward.items()),
            ]
        self.config.write_text("\n".join(lines) + "\n")

    def start(self) -> None:
        self.write_config()
        run = ["run", "-c", str(self.config), "--no-dashboard", "--allow-root"]
        self._spawn([PYTHON, "-m", "tunnelkeeper", *run])


def ssh_args(
    env: Env,
    listen: int,
    options: Sequence[str] = (),
    command: Sequence[str] = (),
    target: int | None = None,
) -> list[str]:
    """`ssh -N -R` with default ciphers, its own known_hosts, no agent, no user config, to the
    sink unless `target` names another local port; with a `command`, `ssh -tt -R … command`
    instead (a session with a terminal)."""
    sshd = env.sshd
    opts = [
        "IdentitiesOnly=yes",
        "IdentityAgent=none",
        "BatchMode=yes",
        f"UserKnownHostsFile={sshd.known_hosts}",
        "GlobalKnownHostsFile=/dev/null",
        "StrictHostKeyChecking=yes",
        "ExitOnForwardFailure=yes",
        "LogLevel=ERROR",
        *options,
    ]
    mode = "-tt" if command else "-N"
    args = [SSH, mode, "-F", "/dev/null", "-p", str(sshd.port), "-i", str(sshd.client_key)]
    for opt in opts:
        args += ["-o", opt]
    to = env.sink_port if target is None else target
    forward = f"127.0.0.1:{listen}:127.0.0.1:{to}"
    return [*args, "-R", forward, f"{sshd.user}@127.0.0.1", *command]


class Ssh(Client):
    """Plain `ssh -N -R`, one process per listen."""

    label = "ssh -R"

    def __init__(self, env: Env, listens: Sequence[int], target: int | None = None) -> None:
        super().__init__(env, listens)
        self.target = target

    def start(self) -> None:
        for listen in self.listens:
            self._spawn(ssh_args(self.env, listen, target=self.target))


class SshTty(Ssh):
    """`ssh -tt -R … sleep`: the same forward beside a session with a terminal. For such a
    session sshd and ssh turn Nagle off on their sockets (as for any interactive login), so the
    relay's small packets never wait for a delayed ACK: `ssh -R` without its 40 ms stall. For
    `ssh -N` Nagle stays on, and whether a connection meets the stall depends on how the
    relay's packets happen to fall."""

    label = "ssh -R, tty"

    def start(self) -> None:
        for listen in self.listens:
            self._spawn(ssh_args(self.env, listen, command=["sleep", "86400"]))


class Autossh(Client):
    """`autossh -M 0` with ServerAlive settings, one autossh (and its ssh) per listen."""

    label = "autossh"

    def __init__(
        self, env: Env, listens: Sequence[int], *, alive_interval: float = 5, alive_count: int = 3
    ) -> None:
        super().__init__(env, listens)
        self.alive = [
            f"ServerAliveInterval={alive_interval:g}",
            f"ServerAliveCountMax={alive_count}",
        ]

    def start(self) -> None:
        for listen in self.listens:
            args = ssh_args(self.env, listen, self.alive)
            # GATETIME=0: retry even when the first ssh fails fast (what service units set).
            self._spawn([AUTOSSH, "-M", "0", *args[1:]], env={"AUTOSSH_GATETIME": "0"})


# -- the environment --------------------------------------------------------------------------


class Env:
    """A scratch folder, a client key, the loopback sshd relay and the sink. `with Env() as env`."""

    def __init__(self, name: str = "bench", key_options: str = "restrict,port-forwarding") -> None:
        raise_nofile()
        self._tmp = tempfile.TemporaryDirectory(prefix=f"tunnelkeeper-{name}-")
        self.root = Path(self._tmp.name)
        key = keygen(self.root / "client_rsa", "rsa", KEY_BITS)
        self.sshd = BenchSshd(self.root / "relay", client_key=key, key_options=key_options)
        self.sink_port = ports(1)[0]
        self._sink: subprocess.Popen[bytes] | None = None
        self._clients: list[Client] = []

    def __enter__(self) -> Env:
        self.sshd.start()
        self._sink = subprocess.Popen(
            [PYTHON, "-m", "benchmarks.sink", str(self.sink_port)],
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            cwd=ROOT,
        )
        assert self._sink.stdout is not None
        if self._sink.stdout.readline().strip() != b"READY":
            raise RuntimeError("sink did not start")
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for client in self._clients:
            client.stop()
        if self._sink is not None:
            stop_process(self._sink)
        self.sshd.signal_sessions(signal.SIGCONT)
        self.sshd.stop()
        self._tmp.cleanup()

    def sink_pids(self) -> list[int]:
        return [self._sink.pid] if self._sink is not None else []

    def tunnelkeeper(self, listens: Sequence[int], **kwargs: Any) -> Tunnelkeeper:
        return self._keep(Tunnelkeeper(self, listens, **kwargs))

    def ssh(self, listens: Sequence[int], target: int | None = None) -> Ssh:
        return self._keep(Ssh(self, listens, target))

    def ssh_tty(self, listens: Sequence[int]) -> SshTty:
        return self._keep(SshTty(self, listens))

    def autossh(self, listens: Sequence[int], **kwargs: Any) -> Autossh:
        return self._keep(Autossh(self, listens, **kwargs))

    def _keep(self, client: C) -> C:
        self._clients.append(client)
        return client


def ports(n: int, low: int = 20000, high: int = 32000) -> list[int]:
    """`n` distinct free loopback ports below the ephemeral range (so no outgoing connection
    takes one between our pick and the client's listen)."""
    found: list[int] = []
    for port in random.sample(range(low, high), high - low):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        found.append(port)
        if len(found) == n:
            return found
    raise RuntimeError(f"fewer than {n} free ports in {low}-{high}")


def fmt_ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def fmt_x(value: float) -> str:
    return f"{value:.2f}×"
