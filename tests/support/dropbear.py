"""A real Dropbear on 127.0.0.1 for tests, with an account of its own that the host never sees.

Dropbear (2022.83) reads `~USER/.ssh/authorized_keys` from the passwd home and has no option to
look elsewhere. So the daemon runs in a private mount namespace (`unshare --mount`) in which a
copy of /etc/passwd with one extra account, `tktunnel`, is bind-mounted over the real one; that
account's home is a folder of the test. Nothing on the host changes: not /etc/passwd, not any
real home, and the mounts vanish with the daemon. Needs root (CI runs the suite as root).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

from .polling import until_listening
from .sshd import descendants, free_port, keygen

DROPBEAR = shutil.which("dropbear") or "/usr/sbin/dropbear"
DROPBEARKEY = shutil.which("dropbearkey") or "/usr/bin/dropbearkey"
UNSHARE = shutil.which("unshare") or "/usr/bin/unshare"
USER = "tktunnel"


def _free_uid() -> int:
    taken = {int(line.split(":")[2]) for line in Path("/etc/passwd").read_text().splitlines()}
    return next(uid for uid in range(60100, 60500) if uid not in taken)


class Dropbear:
    """One dropbear in `root`, logging in `tktunnel` (home in /tmp; `close()` removes it).
    Same attributes as tests.support.sshd.Sshd (port, user, client_key, known_hosts), so
    tests.support.configs.write_config takes it."""

    def __init__(self, root: Path, *, flags: tuple[str, ...] = (), shell: str = "/bin/sh") -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.user = USER
        self.uid = _free_uid()
        self.port = free_port()
        self.flags = flags
        self.host_key = root / "dropbear_ed25519_host_key"
        subprocess.run(
            [DROPBEARKEY, "-t", "ed25519", "-f", str(self.host_key)],
            check=True,
            capture_output=True,
            timeout=60,
        )
        self.client_key = keygen(root / "client_rsa")
        # Dropbear opens authorized_keys as the account, so every folder above the home must
        # let that uid through; pytest's own folders are 0700 root. A folder in /tmp it is.
        self.home = Path(tempfile.mkdtemp(prefix="tk-dropbear-home-", dir="/tmp"))
        self.ssh_dir = self.home / ".ssh"
        self.ssh_dir.mkdir()
        self.authorized_keys = self.ssh_dir / "authorized_keys"
        self.set_authorized("")
        self.passwd = root / "passwd"
        self.passwd.write_text(
            Path("/etc/passwd").read_text()
            + f"{USER}:x:{self.uid}:{self.uid}:tunnelkeeper test:{self.home}:{shell}\n"
        )
        self.known_hosts = root / "known_hosts"
        self.log_path = root / "dropbear.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.write_known_hosts()

    def public_key(self) -> str:
        return Path(f"{self.client_key}.pub").read_text().strip()

    def set_authorized(self, text: str) -> None:
        """The account's whole authorized_keys file, owned by it, as Dropbear insists."""
        self.authorized_keys.write_text(text)
        for path in (self.home, self.ssh_dir, self.authorized_keys):
            os.chown(path, self.uid, self.uid)
        self.home.chmod(0o700)
        self.ssh_dir.chmod(0o700)
        self.authorized_keys.chmod(0o600)

    def write_known_hosts(self) -> None:
        out = subprocess.run(
            [DROPBEARKEY, "-y", "-f", str(self.host_key)],
            check=True,
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout
        line = next(line for line in out.splitlines() if line.startswith("ssh-"))
        kind, blob = line.split()[:2]
        self.known_hosts.write_text(f"[127.0.0.1]:{self.port} {kind} {blob}\n")

    def version(self) -> str:
        """`dropbear -V`, e.g. "Dropbear v2022.83"."""
        proc = subprocess.run([DROPBEAR, "-V"], capture_output=True, text=True, timeout=10)
        return (proc.stdout + proc.stderr).strip()

    # -- life ---------------------------------------------------------------------------------

    def start(self, timeout: float = 15.0) -> None:
        if os.geteuid() != 0:
            raise RuntimeError("the Dropbear fixture needs root (a private mount namespace)")
        argv = [
            DROPBEAR,
            "-F",  # foreground
            "-E",  # log to stderr
            "-s",  # no password logins
            "-r",
            str(self.host_key),
            "-p",
            f"127.0.0.1:{self.port}",
            "-P",
            str(self.root / "dropbear.pid"),
            *self.flags,
        ]
        # unshare and sh both exec, so the pid is dropbear's; --propagation private keeps
        # the bind mount from reaching the host's namespace.
        script = 'mount --bind "$1" /etc/passwd && shift && exec "$@"'
        wrapper = [UNSHARE, "--mount", "--propagation", "private", "sh", "-c", script, "sh"]
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [*wrapper, str(self.passwd), *argv],
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
        )
        log.close()
        until_listening(self.proc, self.port, timeout, "dropbear", self.log_text)

    def stop(self) -> None:
        """Stop the listener and kill every session (Dropbear leaves sessions running)."""
        if self.proc is None:
            return
        sessions = descendants(self.proc.pid)
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        for pid in sessions:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
                os.kill(pid, signal.SIGKILL)
        self.proc = None

    def close(self) -> None:
        """stop(), then remove the account's home."""
        self.stop()
        shutil.rmtree(self.home, ignore_errors=True)

    def sessions(self) -> list[int]:
        """Pids of the per-connection dropbear processes."""
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
