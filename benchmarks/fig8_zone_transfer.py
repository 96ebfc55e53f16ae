"""Figure 8: a zone transfer through a dns forward — what the relay's secondary does — from a
real named primary, tunnelkeeper (whose gate reads every query) against `ssh -R`."""

from __future__ import annotations

import contextlib
import shutil
import socket
import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import dns.exception
import dns.message
import dns.query

from .harness import (
    Env,
    Figure,
    Target,
    cpu_seconds,
    figure_main,
    fmt_x,
    median,
    ports,
    ratio,
    stop_process,
    time_limit,
)

ZONE = "example.org"


def zone_text(records: int) -> str:
    """A zone of `records` A records (plus SOA, NS and the name server's A), each host its own
    name."""
    lines = [
        "$TTL 300",
        f"@ IN SOA ns1.{ZONE}. hostmaster.{ZONE}. 1 3600 900 604800 300",
        f"@ IN NS ns1.{ZONE}.",
        "ns1 IN A 192.0.2.53",
    ]
    lines += [f"h{i} IN A 10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}" for i in range(records)]
    return "\n".join(lines) + "\n"


@contextlib.contextmanager
def primary(folder: Path, records: int) -> Iterator[int]:
    """A named primary for ZONE on 127.0.0.1; yields its port once the zone is loaded."""
    named = shutil.which("named") or "/usr/sbin/named"
    port = ports(1)[0]
    folder.mkdir()
    (folder / "zone.db").write_text(zone_text(records))
    (folder / "named.conf").write_text(
        f"""options {{
	directory "{folder}"; pid-file "{folder}/named.pid";
	session-keyfile "{folder}/session.key"; managed-keys-directory "{folder}";
	listen-on port {port} {{ 127.0.0.1; }}; listen-on-v6 {{ none; }};
	recursion no; notify no; dnssec-validation no;
}};
controls {{ }};
zone "{ZONE}" {{ type primary; file "zone.db"; }};
"""
    )
    log = folder / "named.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [named, "-g", "-4", "-c", str(folder / "named.conf")],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        deadline = time.monotonic() + 60
        while "all zones loaded" not in log.read_text(errors="replace"):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"named did not load the zone: {log.read_text()[-2000:]}")
            time.sleep(0.05)
        yield port
    finally:
        stop_process(proc)


def records_in_transfer(port: int) -> int:
    """How many records an AXFR of ZONE from 127.0.0.1:`port` carries (both SOAs included),
    counted by dnspython, which follows the transfer to its closing SOA."""
    count = 0
    for message in dns.query.xfr("127.0.0.1", ZONE, port=port, lifetime=120):
        count += sum(len(rrset) for rrset in message.answer)
    return count


def axfr(port: int, total: int, timeout: float = 120.0) -> tuple[float, int]:
    """One AXFR of ZONE from 127.0.0.1:`port`, read off the wire until `total` records came
    (record counts taken from each message's header, nothing else parsed, so the client's own
    speed stays out of the figure). Returns (seconds, bytes)."""
    query = dns.message.make_query(ZONE, "AXFR").to_wire()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        stream = sock.makefile("rb", buffering=1 << 20)
        t0 = time.perf_counter()
        sock.sendall(struct.pack("!H", len(query)) + query)
        records = nbytes = 0
        while records < total:
            head = stream.read(2)
            if len(head) < 2:
                raise RuntimeError(f"the transfer ended after {records} of {total} records")
            (size,) = struct.unpack("!H", head)
            message = stream.read(size)
            nbytes += 2 + size
            records += struct.unpack_from("!H", message, 6)[0]
        return time.perf_counter() - t0, nbytes


def wait_soa(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError, dns.exception.DNSException):
            dns.query.tcp(dns.message.make_query(ZONE, "SOA"), "127.0.0.1", port=port, timeout=2)
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"no SOA answer through 127.0.0.1:{port}")
        time.sleep(0.05)


GATED, BLIND, SSH = "tunnelkeeper (dns forward)", "tunnelkeeper (tcp forward)", "ssh -R"


def run(quick: bool = False) -> Figure:
    records, runs = (5_000, 2) if quick else (100_000, 25)
    with (
        time_limit(90 if quick else 400),
        Env("zonexfer") as env,
        primary(env.root / "named", records) as named_port,
    ):
        gated_port, blind_port, ssh_port = ports(3)
        target = f"127.0.0.1:{named_port}"
        dns_forward = {"name": "dns", "service": "dns", "target": target, "zones": [ZONE]}
        gated = env.tunnelkeeper([gated_port], forward=dns_forward)
        gated.label = GATED
        # The same client with the same target as a tcp forward: no gate, the gate's cost.
        blind = env.tunnelkeeper([blind_port], forward={"name": "dns", "target": target})
        blind.label = BLIND
        clients = [gated, blind, env.ssh([ssh_port], target=named_port)]
        for client in clients:
            client.start()
        for client in clients:
            wait_soa(client.listens[0])
        total = records_in_transfer(named_port)
        direct, nbytes = axfr(named_port, total)
        times: dict[str, list[float]] = {c.label: [] for c in clients}
        cpu = dict.fromkeys(times, 0.0)
        directs = [direct]
        for r in range(runs):  # A B C, B C A, C A B ...: no client always goes first
            for client in clients[r % 3 :] + clients[: r % 3]:
                before = cpu_seconds(client.pids())
                seconds, got = axfr(client.listens[0], total)
                cpu[client.label] += cpu_seconds(client.pids()) - before
                if got != nbytes:
                    raise RuntimeError(f"{client.label}: {got} bytes, not {nbytes}")
                times[client.label].append(seconds)
            directs.append(axfr(named_port, total)[0])
    pairs = [ratio(a, b) for a, b in zip(times[GATED], times[SSH], strict=True)]
    gate_pairs = [ratio(a, b) for a, b in zip(times[GATED], times[BLIND], strict=True)]
    x, gate_x = median(pairs), median(gate_pairs)
    ssh = median(times[SSH])
    table = [["path", "AXFR s (median)", "vs ssh -R", "client CPU ms per AXFR", "runs (ms)"]]
    for label in (GATED, BLIND, SSH):
        value = median(times[label])
        table.append(
            [
                label,
                f"{value:.3f}",
                fmt_x(ratio(value, ssh)),
                f"{cpu[label] / runs * 1000:.0f}",
                " ".join(f"{t * 1000:.0f}" for t in times[label]),
            ]
        )
    table.append(["named directly", f"{median(directs):.3f}", "", "", ""])
    return Figure(
        "8",
        "Zone transfer through a dns forward",
        table,
        [Target("AXFR time vs ssh -R (median of paired runs)", fmt_x(x), "≤ 1.1×", x <= 1.1)],
        [
            f"Paired runs (the dns forward ÷ the ssh -R run of the same round): median "
            f"{fmt_x(x)}, range {fmt_x(min(pairs))}–{fmt_x(max(pairs))}. The gate's own cost "
            f"(the dns forward ÷ the tcp forward of the same round): median {fmt_x(gate_x)}, "
            f"range {fmt_x(min(gate_pairs))}–{fmt_x(max(gate_pairs))}.",
            f"A zone of {total - 1:,} records ({nbytes / 1e6:.1f} MB on the wire) from a real "
            f"named primary, {runs} transfers through each, in rotating order (A B C, B C A, "
            "…), a direct transfer after each round; the reader takes the frames as they come "
            "and stops at the closing SOA.",
            "tunnelkeeper's dns gate parses the AXFR query with dnspython and passes the "
            "transfer back neither parsed nor copied (it follows the 2-byte message lengths "
            "only); the tcp forward and ssh -R pass both ways blind.",
            "Client CPU is the tunnel client's user + system time over all its transfers, "
            "divided by their number (the kernel counts it in 10 ms ticks).",
        ],
    )


if __name__ == "__main__":
    figure_main(run)
