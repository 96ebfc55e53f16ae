"""A real BIND 9.18 named for the tests: its own options on a loopback port, a primary zone,
the daemon held for a `with` block, an SOA query, and the wait for the zone to load."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import dns.exception
import dns.message
import dns.query

from tests.relaykit.conftest import need_tool, run
from tests.support.sshd import port_open, wait_until


def named_options(folder: Path, port: int) -> str:
    """A named of its own on 127.0.0.1:`port`: no rndc, no system paths, no recursion."""
    return f"""\
options {{
	directory "{folder}";
	pid-file "{folder}/named.pid";
	session-keyfile "{folder}/session.key";
	managed-keys-directory "{folder}";
	listen-on port {port} {{ 127.0.0.1; }};
	listen-on-v6 {{ none; }};
	recursion no;
	notify no;
}};
controls {{ }};
"""


PRIMARY_ZONE = """\
$TTL 300
@     IN SOA ns1.example.org. hostmaster.example.org. 2026112601 900 300 604800 300
@     IN NS  ns1.example.org.
ns1   IN A   192.0.2.53
mail  IN A   192.0.2.25
"""


@contextlib.contextmanager
def named(folder: Path, conf: str, port: int) -> Iterator[subprocess.Popen[bytes]]:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "named.conf").write_text(conf)
    run([need_tool("named-checkconf"), folder / "named.conf"])
    log = (folder / "named.log").open("wb")
    proc = subprocess.Popen(
        [need_tool("named"), "-g", "-4", "-c", folder / "named.conf"],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=log,
    )
    log.close()
    try:
        wait_until(lambda: port_open(port) or proc.poll() is not None, 15, what="named")
        assert proc.poll() is None, (folder / "named.log").read_text()
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def soa(port: int) -> dns.message.Message | None:
    query = dns.message.make_query("example.org", "SOA")
    try:
        return dns.query.tcp(query, "127.0.0.1", port=port, timeout=2)
    except (OSError, dns.exception.DNSException):
        return None


def loaded(port: int) -> None:
    """named listens before its zones are loaded (SERVFAIL meanwhile): wait for the SOA."""
    wait_until(lambda: (a := soa(port)) is not None and a.answer, 10, what="the zone to load")
