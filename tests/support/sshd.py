"""A real OpenSSH sshd on 127.0.0.1 for tests: own config, host key, authorized_keys, log."""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import signal
import socket
import subprocess
from collections.abc import Iterable
from pathlib import Path

from .polling import port_open as port_open  # its users import it from here too
from .polling import until_blocking, until_listening

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
SSH_KEYGEN = shutil.which("ssh-keygen") or "/usr/bin/ssh-keygen"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(predicate, timeout: float, interval: float = 0.05, what: str = "condition"):
    """`polling.until_blocking` with the argument order its callers use."""
    return until_blocking(predicate, timeout, what, interval=interval)


def keygen(path: Path, kind: str = "rsa", bits: int = 2048) -> Path:
    args = [SSH_KEYGEN, "-q", "-t", kind, "-N", "", "-C", "tunnelkeeper-test", "-f", str(path)]
    if kind == "rsa":
        args[4:4] = ["-b", str(bits)]
    subprocess.run(args, check=True, timeout=60)
    path.chmod(0o600)
    return path


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid ...; comm may hold spaces, so split after the last ')'
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == pid:
            out.append(int(entry.name))
    return out


def descendants(pid: int) -> list[int]:
    found: list[int] = []
    todo = [pid]
    while todo:
        kids = _children(todo.pop())
        found.extend(kids)
        todo.extend(kids)
    return found


class Sshd:
    """One sshd in `root`. `start()`, `stop()`, and tools to break it in realistic ways."""

    def __init__(
        self,
        root: Path,
        *,
        client_key: Path | None = None,
        permitlisten: Iterable[str] = (),
        key_options: str | None = None,
        extra_config: str = "",
    ) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.user = getpass.getuser()
        self.port = free_port()
        self.host_key = keygen(root / "ssh_host_ed25519_key", "ed25519")
        self.client_key = client_key or keygen(root / "client_rsa")
        self.authorized_keys = root / "authorized_keys"
        self.known_hosts = root / "known_hosts"
        self.config_path = root / "sshd_config"
        self.log_path = root / "sshd.log"
        self.extra_config = extra_config  # appended: Match blocks go here
        self.override_config = ""  # prepended: sshd keeps the first value of a keyword
        self.proc: subprocess.Popen[bytes] | None = None
        self.set_authorized(permitlisten=permitlisten, options=key_options)
        self.write_known_hosts()

    # -- files --------------------------------------------------------------------------------

    def set_authorized(
        self,
        *,
        permitlisten: Iterable[str] = (),
        options: str | None = None,
        key: Path | None = None,
    ) -> None:
        """Write authorized_keys: `restrict,port-forwarding,permitlisten=…` unless `options`."""
        pub = (key or self.client_key).with_suffix(".pub")
        if not pub.exists():
            pub = Path(str(key or self.client_key) + ".pub")
        if options is None:
            opts = ["restrict", "port-forwarding"]
            opts += [f'permitlisten="{p}"' for p in permitlisten]
            opts += [f'permitopen="{p}"' for p in permitlisten]
            options = ",".join(opts)
        line = f"{options} {pub.read_text().strip()}\n" if options else pub.read_text()
        self.authorized_keys.write_text(line)

    def write_known_hosts(self) -> None:
        pub = Path(str(self.host_key) + ".pub").read_text().split()
        self.known_hosts.write_text(f"[127.0.0.1]:{self.port} {pub[0]} {pub[1]}\n")

    def rotate_host_key(self) -> None:
        """A new host key (as after a reinstall); known_hosts keeps the old one."""
        for p in (self.host_key, Path(str(self.host_key) + ".pub")):
            p.unlink()
        keygen(self.host_key, "ed25519")

    def write_config(self) -> None:
        root_login = "PermitRootLogin prohibit-password\n" if os.getuid() == 0 else ""
        self.config_path.write_text(
            f"{self.override_config}\n"
            f"Port {self.port}\n"
            "ListenAddress 127.0.0.1\n"
            f"HostKey {self.host_key}\n"
            f"PidFile {self.root / 'sshd.pid'}\n"
            f"AuthorizedKeysFile {self.authorized_keys}\n"
            "StrictModes no\n"
            "UsePAM no\n"
            "PubkeyAuthentication yes\n"
            "PasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\n"
            f"{root_login}"
            "AllowTcpForwarding yes\n"
            "GatewayPorts no\n"
            "X11Forwarding no\n"
            "PrintMotd no\n"
            "LogLevel DEBUG1\n"
            "MaxStartups 50:30:100\n"
            f"{self.extra_config}\n"
        )

    # -- life ---------------------------------------------------------------------------------

    def start(self, timeout: float = 15.0) -> None:
        self.write_config()
        if os.getuid() == 0:
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # privilege separation dir
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [SSHD, "-D", "-e", "-f", str(self.config_path)],
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
        )
        log.close()
        until_listening(self.proc, self.port, timeout, "sshd", self.log_text)

    def stop(self) -> None:
        """Stop the listener and every session, like `systemctl stop ssh` + killed sessions."""
        if self.proc is None:
            return
        # Freeze the listener first: a session it forked between the look at its children
        # and its end would live on, orphaned, holding its client's connection.
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGSTOP)
        sessions = descendants(self.proc.pid)
        self.proc.terminate()
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGCONT)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        for pid in sessions:
            try:
                os.kill(pid, signal.SIGCONT)
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def sessions(self) -> list[int]:
        """Pids of the per-connection sshd processes."""
        return descendants(self.proc.pid) if self.proc else []

    def signal_sessions(self, sig: int) -> list[int]:
        pids = self.sessions()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        return pids

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
