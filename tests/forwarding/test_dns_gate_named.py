"""A dns forward carries only its zones, shown with real peers: a real OpenSSH sshd as the
relay, a BIND primary configured as internal name servers are (recursion for its own networks,
internal-only zones readable from localnets, transfers allowed to anyone) and a BIND secondary
on the relay that still transfers the public zone through the tunnel, AXFR then IXFR."""

from __future__ import annotations

import os
import signal
import socket
import struct
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdatatype
import dns.update
import dns.zone
import pytest

from tests.relaykit.conftest import need_tool
from tests.support.bind import named, soa
from tests.support.configs import write_config
from tests.support.procs import SupervisorProcess
from tests.support.sshd import free_port, wait_until
from tunnelkeeper.config import load
from tunnelkeeper.relaykit.bind import named_conf

pytestmark = pytest.mark.timeout(90)

SERIAL = 2026120601
SOURCE = "127.0.0.2"  # where the forward's connections to a 127.x target come from
PUBLIC = f"""\
$TTL 300
@     IN SOA ns1.example.org. hostmaster.example.org. {SERIAL} 3600 3600 604800 300
@     IN NS  ns1.example.org.
ns1   IN A   192.0.2.53
mail  IN A   192.0.2.25
"""
INTERNAL = """\
$TTL 300
@       IN SOA ns1.example.org. hostmaster.example.org. 1 3600 3600 604800 300
@       IN NS  ns1.example.org.
payroll IN A   10.1.0.17
"""


def primary_conf(folder: Path, port: int) -> str:
    """An internal primary as they come: BIND's defaults for recursion (localnets, localhost)
    and transfers (any); internal zones readable from localnets, which is all of 127/8."""
    return f"""\
options {{
	directory "{folder}";
	pid-file "{folder}/named.pid";
	session-keyfile "{folder}/session.key";
	managed-keys-directory "{folder}";
	listen-on port {port} {{ 127.0.0.1; }};
	listen-on-v6 {{ none; }};
	recursion yes;
	dnssec-validation no;
	notify no;
	querylog yes;
}};
controls {{ }};
zone "example.org" {{ type primary; file "example.org.zone"; ixfr-from-differences yes; }};
zone "corp.example.com" {{ type primary; file "corp.zone";
	allow-query {{ localhost; localnets; }}; }};
zone "corp.example.org" {{ type primary; file "corp.zone";
	allow-query {{ localhost; localnets; }}; }};
"""


def secondary_options(folder: Path, port: int) -> str:
    return f"""\
options {{
	directory "{folder}";
	pid-file "{folder}/named.pid";
	session-keyfile "{folder}/session.key";
	managed-keys-directory "{folder}";
	listen-on port {port} {{ 127.0.0.1; }};
	listen-on-v6 {{ none; }};
	recursion no;
	dnssec-validation no;  // no trust-anchor fetch: nothing but loopback
	notify no;
}};
controls {{ }};
"""


def ask(port: int, message: dns.message.Message) -> dns.message.Message:
    return dns.query.tcp(message, "127.0.0.1", port=port, timeout=5)


def serial_at(port: int) -> int | None:
    answer = soa(port)
    return answer.answer[0][0].serial if answer is not None and answer.answer else None


def test_only_the_zones_pass_and_the_secondary_still_transfers(
    make_sshd: Any, tmp_path: Path, outcome: dict[str, Any]
) -> None:
    need_tool("named")
    primary_port, listen, secondary_port = free_port(), free_port(), free_port()
    sshd = make_sshd(start=False)
    sshd.set_authorized(
        options=f'restrict,port-forwarding,permitlisten="127.0.0.1:{listen}",'
        f'permitopen="127.0.0.1:{listen}",permitopen="127.0.0.1:{secondary_port}"'
    )
    sshd.start()
    forward = {
        "name": "dns",
        "service": "dns",
        "listen": f"127.0.0.1:{listen}",
        "target": f"127.0.0.1:{primary_port}",
        "zones": ["example.org"],
        "notify": f"127.0.0.1:{secondary_port}",  # so the IXFR comes within the test
    }
    cfg = write_config(tmp_path / "tk.toml", sshd, [forward], probe_interval=0.5)
    primary = tmp_path / "primary"
    primary.mkdir()
    zone = primary / "example.org.zone"
    zone.write_text(PUBLIC)
    (primary / "corp.zone").write_text(INTERNAL)
    primary_log = primary / "named.log"

    with named(primary, primary_conf(primary, primary_port), primary_port) as primary_named:
        wait_until(lambda: "all zones loaded" in primary_log.read_text(), 10, what="zones")
        # The rig is open as the issue found it: asked from this host, the internal zone answers
        # and hands itself over.
        direct = ask(primary_port, dns.message.make_query("payroll.corp.example.com", "A"))
        assert str(direct.answer[0][0]) == "10.1.0.17"
        assert dns.zone.from_xfr(dns.query.xfr("127.0.0.1", "corp.example.org", port=primary_port))
        seen_before = primary_log.read_text()

        supervisor = SupervisorProcess(cfg)
        try:
            supervisor.wait_forward("up", 15)
            started = time.monotonic()
            update = dns.update.UpdateMessage("example.org")
            update.add("evil", 300, "A", "192.0.2.66")
            foreign: dict[str, dns.message.Message] = {
                "internal zone": dns.message.make_query("payroll.corp.example.com", "A"),
                # Below example.org by name, but in the internal zone corp.example.org on the
                # same server: only named knows, and the zone-cut check asks it.
                "internal zone below": dns.message.make_query("payroll.corp.example.org", "A"),
                "transfer of an internal zone": dns.message.make_query("corp.example.com", "AXFR"),
                "transfer of a zone below": dns.message.make_query("corp.example.org", "AXFR"),
                "recursion": dns.message.make_query("www.wikipedia.org", "A"),
                "update": update,
            }
            for what, message in foreign.items():
                reply = ask(listen, message)
                assert reply.id == message.id, what
                assert reply.rcode() == dns.rcode.REFUSED, what
                assert reply.opcode() == message.opcode(), what
                assert not reply.flags & dns.flags.AA and reply.edns < 0, f"{what}: not named's"

            # Pipelined on one connection: a query for the zone, a foreign one, the zone again.
            pipelined = [
                dns.message.make_query("example.org", "SOA"),
                dns.message.make_query("payroll.corp.example.com", "A"),
                dns.message.make_query("mail.example.org", "A"),
            ]
            replies = pipeline(listen, pipelined)
            assert {r.id: r.rcode() for r in replies} == {
                pipelined[0].id: dns.rcode.NOERROR,
                pipelined[1].id: dns.rcode.REFUSED,
                pipelined[2].id: dns.rcode.NOERROR,
            }

            # Names of example.org itself: a real one is answered by named, a missing one gets
            # named's NXDOMAIN (both checked with named first).
            mail = ask(listen, dns.message.make_query("mail.example.org", "A"))
            assert str(mail.answer[0][0]) == "192.0.2.25" and mail.flags & dns.flags.AA
            missing = ask(listen, dns.message.make_query("nosuch.example.org", "A"))
            assert missing.rcode() == dns.rcode.NXDOMAIN and missing.flags & dns.flags.AA
            assert missing.authority[0].name == dns.name.from_text("example.org")
            # What a lookup below the apex costs: the first of a name waits for the check, the
            # next is decided from the cache.
            timed = []
            for _ in range(2):
                begun = time.monotonic()
                fresh = ask(listen, dns.message.make_query("fresh.example.org", "TXT"))
                timed.append(time.monotonic() - begun)
                assert fresh.rcode() == dns.rcode.NXDOMAIN

            # What the forward is for still works through it: SOA, AXFR, IXFR of example.org.
            assert serial_at(listen) == SERIAL
            whole = dns.zone.from_xfr(dns.query.xfr("127.0.0.1", "example.org", port=listen))
            assert str(whole.find_rdataset("mail", "A")[0]) == "192.0.2.25"
            ixfr = dns.message.make_query("example.org", "IXFR")
            ixfr.authority.append(ixfr_soa(SERIAL))
            assert ask(listen, ixfr).rcode() == dns.rcode.NOERROR
            ways_in_s = time.monotonic() - started

            # The relay's secondary, as named-conf writes it, transfers the zone: AXFR first,
            # then, after a change on the primary, IXFR (the primary keeps a journal).
            secondary = tmp_path / "secondary"
            stanzas = named_conf(load(cfg))
            with named(
                secondary, secondary_options(secondary, secondary_port) + stanzas, secondary_port
            ):
                wait_until(lambda: serial_at(secondary_port) == SERIAL, 20, what="the AXFR")
                time.sleep(1)  # a refresh the first NOTIFY queued is done
                zone.write_text(
                    PUBLIC.replace(str(SERIAL), str(SERIAL + 1)) + "www   IN A   192.0.2.80\n"
                )
                changed = time.monotonic()
                os.kill(primary_named.pid, signal.SIGHUP)
                wait_until(lambda: serial_at(secondary_port) == SERIAL + 1, 20, what="the IXFR")
                ixfr_s = time.monotonic() - changed
                www = ask(secondary_port, dns.message.make_query("www.example.org", "A"))
                assert str(www.answer[0][0]) == "192.0.2.80"
            status = supervisor.status_now()
        finally:
            assert supervisor.stop() == 0

    # None of the foreign queries reached named: its query log has only what we asked directly
    # and the zone-cut checks, which tunnelkeeper asks itself (SOA, RD clear: "-") from the
    # forward's source address.
    after = primary_log.read_text()[len(seen_before) :]
    for name in ("corp.example.com", "corp.example.org IN AXFR", "wikipedia", "evil"):
        assert name not in after, f"{name} reached named:\n{after}"
    queried = [line for line in after.splitlines() if "payroll.corp.example.org" in line]
    assert queried and all(
        "query: payroll.corp.example.org IN SOA -" in line and f"{SOURCE}#" in line
        for line in queried
    ), queried
    assert "query: nosuch.example.org IN SOA -" in after
    assert "query: nosuch.example.org IN A +" in after
    assert "query: example.org IN AXFR" in after and "query: example.org IN IXFR" in after
    # The secondary's first transfer is an AXFR, the one after the change an IXFR.
    assert f"'example.org/IN': AXFR started (serial {SERIAL})" in after
    assert f"'example.org/IN': IXFR started (serial {SERIAL} -> {SERIAL + 1})" in after
    secondary_log = (tmp_path / "secondary" / "named.log").read_text()
    assert "Transfer completed: 1 messages, 5 records, 208 bytes" in secondary_log
    (fwd,) = status.tunnels[0].forwards
    assert fwd.refused_queries == len(foreign) + 1
    log = supervisor.log()
    assert "forward dns: refused QUERY payroll.corp.example.com. A (not for its zones)" in log
    assert after.count("query: fresh.example.org IN SOA -") == 1  # one check, then the cache
    outcome.update(
        ways_in_s=round(ways_in_s, 2),
        ixfr_s=round(ixfr_s, 2),
        checked_lookup_ms=round(timed[0] * 1000, 1),
        cached_lookup_ms=round(timed[1] * 1000, 1),
    )


def ixfr_soa(serial: int) -> Any:
    import dns.rrset

    return dns.rrset.from_text(
        "example.org.",
        300,
        "IN",
        "SOA",
        f"ns1.example.org. hostmaster.example.org. {serial} 3600 3600 604800 300",
    )


def pipeline(port: int, messages: Sequence[dns.message.Message]) -> list[dns.message.Message]:
    """Send every message at once on one TCP connection, then read as many replies."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(
            b"".join(struct.pack("!H", len(w)) + w for w in (m.to_wire() for m in messages))
        )
        stream = sock.makefile("rb")
        replies = []
        for _ in messages:
            (size,) = struct.unpack("!H", stream.read(2))
            replies.append(dns.message.from_wire(stream.read(size)))
        return replies
