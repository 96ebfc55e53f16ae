"""A real Postfix relay run as a whole mail system (master, smtpd, qmgr, flush, smtp) from a
folder of its own, from Debian's package unpacked."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest

from tests.relaykit.conftest import need_tool
from tests.support.configs import write_config
from tests.support.postfix import unpacked_postfix
from tests.support.sshd import free_port, port_open, wait_until

MAIN_CF = """\
compatibility_level = 3.6
queue_directory = {folder}/queue
data_directory = {folder}/data
meta_directory = {folder}/etc
daemon_directory = {root}/usr/lib/postfix/sbin
command_directory = {root}/usr/sbin
shlib_directory = {root}/usr/lib/postfix
import_environment = MAIL_CONFIG MAIL_DEBUG MAIL_LOGTAG TZ LANG=C
  LD_LIBRARY_PATH={root}/usr/lib/postfix
mail_owner = daemon
setgid_group = mail
maillog_file_prefixes = {folder}
maillog_file = {folder}/maillog
myhostname = relay.example.net
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
relay_domains = example.org
transport_maps = hash:{folder}/etc/transport
smtp_dns_support_level = disabled
"""
# Only what a relay needs, none chrooted (the folder is no chroot jail).
MASTER_CF = """\
127.0.0.1:{port} inet n - n - - smtpd
pickup unix n - n 60 1 pickup
cleanup unix n - n - 0 cleanup
qmgr unix n - n 300 1 qmgr
rewrite unix - - n - - trivial-rewrite
bounce unix - - n - 0 bounce
defer unix - - n - 0 bounce
trace unix - - n - 0 bounce
verify unix - - n - 1 verify
flush unix n - n 1000 0 flush
proxymap unix - - n - - proxymap
smtp unix - - n - - smtp
relay unix - - n - - smtp
showq unix n - n - - showq
error unix - - n - - error
retry unix - - n - - error
discard unix - - n - - discard
anvil unix - - n - 1 anvil
scache unix - - n - 1 scache
postlog unix-dgram n - n - 1 postlogd
"""


class PostfixRelay:
    """sshd, and a Postfix mail system that relays example.org into the tunnel."""

    def __init__(self, sshd: Any, target: int, config_folder: Path, main_cf: str = "") -> None:
        if os.geteuid() != 0 and not os.environ.get("CI"):
            pytest.skip("postfix start needs root")
        self.root = unpacked_postfix()
        self.env = {**os.environ, "LD_LIBRARY_PATH": str(self.root / "usr" / "lib" / "postfix")}
        # Postfix's daemons run as mail_owner (daemon): a folder they can reach, not tmp_path.
        self.folder = Path(tempfile.mkdtemp(prefix="tk-postfix-", dir="/tmp"))
        self.folder.chmod(0o755)
        self.listen, self.mta = free_port(), free_port()
        etc = self.folder / "etc"
        etc.mkdir()
        (self.folder / "data").mkdir()
        (self.folder / "queue").mkdir()  # postfix start makes what goes inside
        shutil.chown(self.folder / "data", "daemon")
        (etc / "main.cf").write_text(MAIN_CF.format(folder=self.folder, root=self.root) + main_cf)
        (etc / "master.cf").write_text(MASTER_CF.format(port=self.mta))
        shutil.copy(self.root / "etc" / "postfix" / "postfix-files", etc)
        shutil.copytree(self.root / "etc" / "postfix" / "postfix-files.d", etc / "postfix-files.d")
        nexthop = f"smtp:[127.0.0.1]:{self.listen}"
        (etc / "transport").write_text(f"example.org {nexthop}\n.example.org {nexthop}\n")
        self._postfix("postmap", str(etc / "transport"))
        sshd.set_authorized(
            options="restrict,port-forwarding,"
            f'permitlisten="127.0.0.1:{self.listen}",permitopen="127.0.0.1:{self.listen}",'
            f'permitopen="127.0.0.1:{self.mta}"'
        )
        forward = {
            "name": "smtp",
            "service": "smtp",
            "listen": f"127.0.0.1:{self.listen}",
            "target": f"127.0.0.1:{target}",
            "domains": ["example.org"],
        }
        self.config = write_config(
            config_folder / "tk.toml", sshd, [forward], relay_mta=f"127.0.0.1:{self.mta}"
        )

    def _postfix(self, program: str, *args: str) -> None:
        tool = self.root / "usr" / "sbin" / program
        need_tool(str(tool))
        done = subprocess.run(
            [str(tool), "-c", str(self.folder / "etc"), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        maillog = self.folder / "maillog"
        said = maillog.read_text(errors="replace")[-2000:] if maillog.exists() else ""
        assert done.returncode == 0, f"{program} {args}: {done.stderr}{said}"

    def start(self) -> PostfixRelay:
        self._postfix("postfix", "start")
        wait_until(lambda: port_open(self.mta), 15, what="postfix's smtpd to listen")
        return self

    def stop(self) -> None:
        if port_open(self.mta):
            subprocess.run(
                [
                    str(self.root / "usr" / "sbin" / "postfix"),
                    "-c",
                    str(self.folder / "etc"),
                    "stop",
                ],
                env=self.env,
                capture_output=True,
                timeout=60,
            )
        shutil.rmtree(self.folder, ignore_errors=True)

    def deferred(self) -> int:
        return sum(1 for p in (self.folder / "queue" / "deferred").rglob("*") if p.is_file())

    def log(self) -> str:
        return (self.folder / "maillog").read_text(errors="replace")
