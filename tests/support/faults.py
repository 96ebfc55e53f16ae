"""Tools to break a relay: sshd in a network namespace, packet drop/loss/delay, a mail loop."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import random
import shutil
import smtplib
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from tests.support.configs import _toml_value, write_config
from tests.support.polling import until_listening
from tests.support.procs import SupervisorProcess
from tests.support.sshd import SSHD, Sshd

T = TypeVar("T")

CLONE_NEWNET = 0x40000000
IP = "ip"
NFT = "nft"
CMD_TIMEOUT = 15


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """A short system command (ip, nft, tc), bounded in time."""
    return subprocess.run(args, check=check, capture_output=True, text=True, timeout=CMD_TIMEOUT)


# -- network namespaces ------------------------------------------------------------------------


class Netns:
    """A network namespace joined to this one by a veth pair on a private /30 it chooses.

    The relay side lives in the namespace at `ns_addr`; this side has `host_addr`. Packets can
    be dropped silently (nftables, both directions), lost at random, or delayed.
    """

    _count = 0

    def __init__(self) -> None:
        Netns._count += 1
        tag = f"{os.getpid() % 100000}{Netns._count}"
        self.name = f"tkf{tag}"
        self.host_if = f"tkh{tag}"
        self.ns_if = f"tkn{tag}"
        used = run(IP, "-o", "-4", "addr", "show").stdout
        free = [n for n in range(1, 255) if f" 10.200.{n}." not in used]
        subnet = random.choice(free)
        self.host_addr = f"10.200.{subnet}.1"
        self.ns_addr = f"10.200.{subnet}.2"
        self.netem = False

    def __enter__(self) -> Netns:
        run(IP, "netns", "add", self.name)
        try:
            run(IP, "link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if)
            run(IP, "link", "set", self.ns_if, "netns", self.name)
            run(IP, "addr", "add", f"{self.host_addr}/30", "dev", self.host_if)
            run(IP, "link", "set", self.host_if, "up")
            run(IP, "-n", self.name, "addr", "add", f"{self.ns_addr}/30", "dev", self.ns_if)
            run(IP, "-n", self.name, "link", "set", self.ns_if, "up")
            run(IP, "-n", self.name, "link", "set", "lo", "up")
        except BaseException:
            self.delete()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.delete()

    def delete(self) -> None:
        run(IP, "link", "del", self.host_if, check=False)
        run(IP, "netns", "del", self.name, check=False)

    def exec_args(self, *args: str) -> list[str]:
        return [IP, "netns", "exec", self.name, *args]

    def nft(self, script: str) -> None:
        subprocess.run(
            self.exec_args(NFT, "-f", "-"),
            input=script,
            check=True,
            capture_output=True,
            text=True,
            timeout=CMD_TIMEOUT,
        )

    def drop(self) -> None:
        """Silently drop every packet on the veth, both ways: a dead link, no RST, no ICMP."""
        self._filter("drop")

    def lose(self, percent: int) -> None:
        """Drop `percent` % of packets at random on the veth, both ways."""
        self._filter(f"numgen random mod 100 < {percent} drop")

    def restore(self) -> None:
        run(*self.exec_args(NFT, "delete", "table", "inet", "tkfault"), check=False)
        if self.netem:
            for args in (("-n", self.name, self.ns_if), ("", "", self.host_if)):
                ns = ["-n", args[1]] if args[0] else []
                run("tc", *ns, "qdisc", "del", "dev", args[2], "root", check=False)
            self.netem = False

    def _filter(self, verdict: str) -> None:
        run(*self.exec_args(NFT, "delete", "table", "inet", "tkfault"), check=False)
        self.nft(
            "table inet tkfault {\n"
            "  chain in { type filter hook input priority 0; "
            f"iifname {self.ns_if} {verdict}; }}\n"
            "  chain out { type filter hook output priority 0; "
            f"oifname {self.ns_if} {verdict}; }}\n"
            "}\n"
        )

    def try_netem(self, delay_ms: int, loss_percent: int) -> bool:
        """Delay and loss by tc netem on both ends of the veth; False when the kernel lacks it."""
        ok = True
        for ns, dev in ((["-n", self.name], self.ns_if), ([], self.host_if)):
            spec = ["delay", f"{delay_ms}ms", "loss", f"{loss_percent}%"]
            result = run("tc", *ns, "qdisc", "add", "dev", dev, "root", "netem", *spec, check=False)
            ok = ok and result.returncode == 0
        self.netem = ok
        if not ok:
            self.restore()
        return ok

    def call(self, fn: Callable[[], T], timeout: float) -> T:
        """Run `fn` in a thread that entered this namespace (so its sockets live there)."""
        box: dict[str, Any] = {}

        def body() -> None:
            try:
                enter_netns(self.name)
                box["value"] = fn()
            except BaseException as exc:  # handed back to the caller below
                box["error"] = exc

        thread = threading.Thread(target=body, daemon=True)
        thread.start()
        thread.join(timeout)
        if thread.is_alive():
            raise TimeoutError(f"no result from namespace {self.name} within {timeout}s")
        if "error" in box:
            raise box["error"]
        return box["value"]


def enter_netns(name: str) -> None:
    """Move the calling thread (only it) into network namespace `name`."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY | os.O_CLOEXEC)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
    finally:
        os.close(fd)


# -- an sshd with overrides, optionally in a namespace ------------------------------------------


class FaultSshd(Sshd):
    """tests.support's Sshd, with sshd_config lines replaced and optionally in a namespace."""

    def __init__(
        self,
        root: Path,
        *,
        netns: Netns | None = None,
        overrides: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> None:
        self.netns = netns
        self.address = netns.ns_addr if netns else "127.0.0.1"
        self.overrides = dict(overrides or {})
        super().__init__(root, **kwargs)

    def write_known_hosts(self) -> None:
        self.known_hosts.write_text(self.known_hosts_line(self.address, self.port))

    def known_hosts_line(self, host: str, port: int) -> str:
        kind, body = Path(str(self.host_key) + ".pub").read_text().split()[:2]
        return f"[{host}]:{port} {kind} {body}\n"

    def write_config(self) -> None:
        super().write_config()
        todo = dict(self.overrides)
        lines = []
        for line in self.config_path.read_text().splitlines():
            key = line.split(" ", 1)[0]
            if key == "ListenAddress":
                line = f"ListenAddress {self.address}"
            if key in todo:
                line = f"{key} {todo.pop(key)}"  # sshd takes the first value: replace it
            lines.append(line)
        lines += [f"{k} {v}" for k, v in todo.items()]
        self.config_path.write_text("\n".join(lines) + "\n")

    def start(self, timeout: float = 15.0) -> None:
        if self.netns is None:
            super().start(timeout)
            return
        self.write_config()
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                self.netns.exec_args(SSHD, "-D", "-e", "-f", str(self.config_path)),
                stdout=log,
                stderr=log,
                stdin=subprocess.DEVNULL,
            )
        until_listening(self.proc, self.port, timeout, "sshd", self.log_text, self.address)


def relay_config(
    path: Path,
    sshd: FaultSshd,
    forwards: list[dict[str, Any]],
    *,
    via: tuple[str, int] | None = None,
    **settings: Any,
) -> Path:
    """tests.support's write_config, pointed at the sshd's address (or at `via`, a proxy)."""
    write_config(path, sshd, forwards, **settings)
    host, port = via or (sshd.address, sshd.port)
    if via is not None:
        with sshd.known_hosts.open("a") as fh:
            fh.write(sshd.known_hosts_line(host, port))
    text = path.read_text()
    text = text.replace('host = "127.0.0.1"', f'host = "{host}"', 1)
    text = text.replace(f"port = {sshd.port}\n", f"port = {port}\n", 1)
    path.write_text(text)
    return path


def add_tunnel(
    path: Path, sshd: FaultSshd, name: str, forwards: list[dict[str, Any]], **settings: Any
) -> None:
    """Append one more [[tunnel]] to a config written by relay_config, to the same relay."""
    base: dict[str, Any] = {
        "keepalive_interval": 1,
        "keepalive_count_max": 2,
        "connect_timeout": 5,
        "backoff_initial": 0.2,
        "backoff_max": 2.0,
        "stable_after": 5.0,
        "forward_retry": 0.5,
        "probe_interval": 0,
    }
    base.update(settings)
    lines = ["", "[[tunnel]]", f'name = "{name}"', f'host = "{sshd.address}"']
    lines += [f"port = {sshd.port}", f'user = "{sshd.user}"', f'identity = "{sshd.client_key}"']
    lines += [f'known_hosts = "{sshd.known_hosts}"']
    lines += [f"{k} = {_toml_value(v)}" for k, v in base.items()]
    for fwd in forwards:
        lines += ["", "[[tunnel.forward]]"]
        lines += [f"{k} = {_toml_value(v)}" for k, v in fwd.items()]
    with path.open("a") as fh:
        fh.write("\n".join(lines) + "\n")


def smtp_forward(listen: int, target: int, name: str = "smtp") -> dict[str, Any]:
    return {
        "name": name,
        "service": "smtp",
        "listen": f"127.0.0.1:{listen}",
        "target": f"127.0.0.1:{target}",
        "domains": ["example.org"],
    }


def tcp_forward(listen: int, target: int, name: str = "raw") -> dict[str, Any]:
    return {
        "name": name,
        "service": "tcp",
        "listen": f"127.0.0.1:{listen}",
        "target": f"127.0.0.1:{target}",
    }


# -- a sender that plays the relay's sendmail ---------------------------------------------------


def message(seq: int, rng: random.Random) -> bytes:
    """A message with an id, dot-stuffing bait, long and 8-bit lines, of varied size."""
    lines = [
        f"Message-ID: <{seq}@sender.test>".encode(),
        f"Subject: message {seq}".encode(),
        b"X-Seq: " + str(seq).encode(),
        b"",
        b".a line that starts with a dot",
        b"..and one with two",
        "8-bit: d\u00e9j\u00e0 vu, \u00fcber, \u00e5".encode(),
    ]
    for _ in range(rng.choice((1, 10, 200, 2000))):
        lines.append(bytes(rng.choice(b"abcdefghij ABCDEFGHIJ.0123456789") for _ in range(76)))
    lines.append(b".")
    lines.append(b"end of " + str(seq).encode())
    return b"\r\n".join(lines) + b"\r\n"


def send(port: int, body: bytes, timeout: float = 10.0) -> None:
    """One SMTP transaction to 127.0.0.1:port. Returns only after 250 for DATA; raises otherwise."""
    smtp = smtplib.SMTP("127.0.0.1", port, local_hostname="relay.test", timeout=timeout)
    try:
        smtp.sendmail(
            "alice@example.net", ["bob@example.org"], body, mail_options=["BODY=8BITMIME"]
        )
    finally:
        try:
            smtp.quit()
        except (OSError, smtplib.SMTPException):
            smtp.close()


@dataclass
class MailLoop:
    """Sends messages to the relay-side port in a loop, in a thread, and keeps the books."""

    port: int
    netns: Netns | None = None
    pause: float = 0.02
    timeout: float = 10.0
    seed: int = 25
    accepted: dict[int, bytes] = field(default_factory=dict)
    refused: dict[int, str] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> MailLoop:
        self._thread = threading.Thread(target=self._body, daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            assert not self._thread.is_alive(), "mail loop did not stop"

    def refusal_kinds(self) -> dict[str, int]:
        """How the refused sends failed: exception type -> count."""
        kinds: dict[str, int] = {}
        for reason in self.refused.values():
            kind = reason.split(":", 1)[0]
            kinds[kind] = kinds.get(kind, 0) + 1
        return kinds

    @property
    def sent(self) -> int:
        return len(self.accepted) + len(self.refused)

    def _body(self) -> None:
        if self.netns is not None:
            enter_netns(self.netns.name)
        rng = random.Random(self.seed)
        seq = 0
        while not self._stop.is_set():
            seq += 1
            body = message(seq, rng)
            try:
                send(self.port, body, self.timeout)
            except (OSError, smtplib.SMTPException) as exc:
                self.refused[seq] = f"{type(exc).__name__}: {exc}"[:200]
            else:
                self.accepted[seq] = body
            self._stop.wait(self.pause)


def seq_of(raw: bytes) -> int | None:
    for line in raw.split(b"\r\n", 8):
        if line.startswith(b"X-Seq: "):
            return int(line[7:])
    return None


@dataclass
class Ledger:
    """What the sender was told against what the internal server got."""

    accepted: int
    refused: int
    lost: list[int]  # accepted (250 after DATA) yet never arrived
    altered: list[int]  # arrived, but not byte for byte
    refused_but_delivered: int  # the sender saw an error after the server had the message


def reconcile(loop: MailLoop, received: list[bytes]) -> Ledger:
    got: dict[int, list[bytes]] = {}
    for raw in list(received):
        seq = seq_of(raw)
        if seq is not None:
            got.setdefault(seq, []).append(raw)
    lost = [s for s in loop.accepted if s not in got]
    altered = [s for s, body in loop.accepted.items() if s in got and body not in got[s]]
    return Ledger(
        accepted=len(loop.accepted),
        refused=len(loop.refused),
        lost=lost,
        altered=altered,
        refused_but_delivered=sum(1 for s in loop.refused if s in got),
    )


# -- a delay line --------------------------------------------------------------------------------


class DelayProxy:
    """A TCP relay on 127.0.0.1 adding a one-way `delay` to every chunk, in both directions.

    Stands in for netem's delay where the kernel has no sch_netem; order is kept, nothing is
    dropped. Runs its own event loop in a thread.
    """

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.delay = 0.0
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.base_events.Server | None = None

    def __enter__(self) -> DelayProxy:
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(self._start(), self._loop)
        future.result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        future = asyncio.run_coroutine_threadsafe(self._stop(), self._loop)
        with contextlib.suppress(Exception):
            future.result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in asyncio.all_tasks():
            if task is not asyncio.current_task():
                task.cancel()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        await asyncio.gather(
            self._pipe(reader, up_writer), self._pipe(up_reader, writer), return_exceptions=True
        )
        for w in (writer, up_writer):
            w.close()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def deliver() -> None:
            while True:
                due, data = await queue.get()
                await asyncio.sleep(max(0.0, due - loop.time()))
                if not data:
                    writer.write_eof()
                    return
                writer.write(data)
                await writer.drain()

        sender = asyncio.create_task(deliver())
        try:
            while True:
                data = await reader.read(65536)
                await queue.put((loop.time() + self.delay, data))
                if not data:
                    break
            await sender
        finally:
            sender.cancel()


# -- process accounting --------------------------------------------------------------------------


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def fill_startups(host: str, port: int, limit: int = 20) -> list[socket.socket]:
    """Open unauthenticated SSH connections until sshd turns one away (MaxStartups); return the
    ones holding a slot."""
    held: list[socket.socket] = []
    for _ in range(limit):
        sock = socket.create_connection((host, port), timeout=5)
        banner = sock.recv(64)
        if not banner.startswith(b"SSH-"):
            sock.close()
            assert banner.startswith(b"Exceeded MaxStartups"), banner
            return held
        held.append(sock)
    raise AssertionError(f"sshd took {limit} unauthenticated connections")


class NetnsSupervisor(SupervisorProcess):
    """`tunnelkeeper run` started inside a namespace; its control socket is a file, so the
    test reaches it from here."""

    def __init__(self, config: Path, netns: Netns) -> None:
        self.config = config
        self.log_path = config.parent / f"tunnelkeeper-{time.monotonic_ns()}.log"
        self.socket = config.parent / "control.sock"
        args = [sys.executable, "-m", "tunnelkeeper", "run", "-c", str(config), "--no-dashboard"]
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                netns.exec_args(*args, "--allow-root"),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )


class NxdomainServer:
    """A DNS server answering NXDOMAIN to everything, on a UDP socket made in a namespace."""

    def __init__(self, netns: Netns) -> None:
        def bind() -> socket.socket:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind(("127.0.0.1", 53))
            sock.settimeout(0.2)
            return sock

        self._sock = netns.call(bind, 10)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self.queries: list[str] = []
        resolv = Path("/etc/netns") / netns.name / "resolv.conf"
        resolv.parent.mkdir(parents=True, exist_ok=True)
        resolv.write_text("nameserver 127.0.0.1\noptions attempts:1 timeout:1\n")
        self._etc = resolv.parent

    def __enter__(self) -> NxdomainServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sock.close()
        shutil.rmtree(self._etc, ignore_errors=True)

    def _serve(self) -> None:
        import dns.message
        import dns.rcode

        while not self._stop.is_set():
            try:
                wire, peer = self._sock.recvfrom(4096)
            except TimeoutError:
                continue
            query = dns.message.from_wire(wire)
            self.queries.append(query.question[0].name.to_text())
            reply = dns.message.make_response(query)
            reply.set_rcode(dns.rcode.NXDOMAIN)
            self._sock.sendto(reply.to_wire(), peer)


def tcp_connections_to(pid: int, port: int) -> int:
    """Established TCP connections that process `pid` holds to `port` (from /proc)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            remote_port = int(fields[2].rsplit(":", 1)[1], 16)
            if remote_port == port and fields[3] == "01" and fields[9] in inodes:
                count += 1
    return count
