"""The boundary conversations of `check` against small servers on loopback (the relay channel
replaced by a plain connection, the seam): each answer an internal server can give ends in the
right verdict and words, and no message is ever sent."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest

from tunnelkeeper.checks.boundary import NO_TRANSFER, OPEN_RELAY, TEST_RECIPIENT, Boundary, prove
from tunnelkeeper.config import Endpoint, load
from tunnelkeeper.ssh import Stream, StreamPair

pytestmark = pytest.mark.timeout(30)
Serve = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def config(tmp_path: Path, service: str, target: str = "25", source: str | None = None) -> Any:
    extra = {"smtp": 'domains = ["example.org"]', "dns": 'zones = ["example.org"]'}[service]
    if source is not None:
        extra += f'\nsource = "{source}"'
    path = tmp_path / "tk.toml"
    path.write_text(
        '[[tunnel]]\nname = "t"\nhost = "relay.example.net"\nuser = "tunnel"\n'
        "probe_timeout = 2\n"
        f'[[tunnel.forward]]\nname = "f"\nservice = "{service}"\nlisten = 2525\n'
        f'target = "{target}"\n{extra}\n'
    )
    cfg = load(path)
    return cfg.tunnel[0], cfg.tunnel[0].forward[0]


async def through(serve: Serve, tunnel: Any, forward: Any) -> tuple[Boundary, list[bytes]]:
    """prove() with its channels opened to `serve` on loopback; what the server heard."""
    heard: list[bytes] = []
    handlers: list[asyncio.Task[None]] = []

    async def recording(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handlers.append(asyncio.current_task())  # type: ignore[arg-type]
        try:
            await serve(_Recorder(reader, heard), writer)  # type: ignore[arg-type]
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the client hung up: all it had to say is heard
        finally:
            writer.close()

    server = await asyncio.start_server(recording, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]

    async def opener(dest: Endpoint, timeout: float) -> Stream:
        assert dest == forward.listen  # the probe's path: the forward's listen on the relay
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return StreamPair(reader, writer)

    async with server:
        proof = await prove(tunnel, forward, opener)
        # Each handler ends at the client's EOF: let it, so that nothing is cut off at exit.
        await asyncio.wait_for(asyncio.gather(*handlers), 5)
        return proof, heard


class _Recorder:
    def __init__(self, reader: asyncio.StreamReader, heard: list[bytes]) -> None:
        self._reader, self._heard = reader, heard

    async def readline(self) -> bytes:
        line = await self._reader.readline()
        self._heard.append(line)
        return line

    async def readexactly(self, n: int) -> bytes:
        data = await self._reader.readexactly(n)
        self._heard.append(data)
        return data


def smtp_server(greeting: bytes = b"220 mail\r\n", **replies: bytes) -> Serve:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(greeting)
        for _ in range(10):
            line = await reader.readline()
            if not line:
                return
            verb = line[:4].decode().upper()
            writer.write(replies.get(verb, b"250 ok\r\n"))
            await writer.drain()
            if verb == "QUIT":
                return

    return serve


@pytest.mark.parametrize(
    ("server", "verdict", "words"),
    [
        (smtp_server(), True, OPEN_RELAY),
        (smtp_server(RCPT=b"550 5.7.1 Relaying denied\r\n"), False, "Relaying denied"),
        (smtp_server(RCPT=b"450 4.7.1 try later\r\n"), False, "try later"),
        (smtp_server(MAIL=b"553 5.1.8 sender refused\r\n"), None, "MAIL FROM answered"),
        (smtp_server(b"554 go away\r\n"), None, "the greeting was"),
    ],
    ids=["relays", "refuses", "temp-refuses", "mail-from-refused", "greeting-554"],
)
def test_smtp_verdicts(tmp_path: Path, server: Serve, verdict: bool | None, words: str) -> None:
    tunnel, forward = config(tmp_path, "smtp")
    proof, heard = asyncio.run(through(server, tunnel, forward))
    assert proof.open_relay is verdict and words in proof.detail, proof
    assert proof.failed is (verdict is True)
    said = b"".join(heard).decode()
    assert "DATA" not in said  # never a message
    if verdict is not None:
        assert f"RCPT TO:<{TEST_RECIPIENT}>" in said and said.endswith("RSET\r\nQUIT\r\n")
        assert "MAIL FROM:<tunnelkeeper-test@example.org>" in said


@pytest.mark.parametrize(
    ("target", "source", "advice"),
    [
        ("25", None, "add `Connect:127.0.0.2 OK`"),
        ("25", "", "Give the forward a `source` of its own"),
        ("[::1]:25", None, "Linux has one IPv6 loopback address"),
    ],
    ids=["default-source", "kernels-choice", "ipv6-target"],
)
def test_open_relay_advice_names_the_source(
    tmp_path: Path, target: str, source: str | None, advice: str
) -> None:
    tunnel, forward = config(tmp_path, "smtp", target, source)
    proof, _ = asyncio.run(through(smtp_server(), tunnel, forward))
    assert proof.open_relay is True and advice in proof.detail, proof.detail
    assert "mynetworks" in proof.detail and "internal-kit" in proof.detail


SOA = "ns1.example.org. hostmaster.example.org. 7 3600 600 86400 300"


def dns_server(ixfr: str) -> Serve:
    """An authoritative server for example.org (serial 7) whose answer to IXFR is `ixfr`:
    "soa" (up to date), "refused", "notauth" or "close"."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for _ in range(3):
            (length,) = struct.unpack("!H", await reader.readexactly(2))
            query = dns.message.from_wire(await reader.readexactly(length))
            reply = dns.message.make_response(query)
            reply.flags |= dns.flags.AA
            if query.question[0].rdtype == dns.rdatatype.IXFR:
                assert query.authority[0][0].serial == 7  # at the serial just read
                if ixfr == "close":
                    return
                if ixfr != "soa":
                    reply.set_rcode(dns.rcode.from_text(ixfr.upper()))
            if not reply.rcode():
                reply.answer.append(dns.rrset.from_text("example.org.", 300, "IN", "SOA", SOA))
            wire = reply.to_wire()
            writer.write(struct.pack("!H", len(wire)) + wire)
            await writer.drain()

    return serve


@pytest.mark.parametrize(
    ("ixfr", "verdict", "detail"),
    [
        ("soa", True, "IXFR of example.org at serial 7 answered"),
        ("refused", False, "IXFR of example.org answered REFUSED"),
        ("notauth", False, "IXFR of example.org answered NOTAUTH"),
        ("close", False, "the primary closed the connection at an IXFR of example.org"),
    ],
)
def test_transfer_verdicts(tmp_path: Path, ixfr: str, verdict: bool, detail: str) -> None:
    tunnel, forward = config(tmp_path, "dns", "53")
    proof, _ = asyncio.run(through(dns_server(ixfr), tunnel, forward))
    (transfer,) = proof.transfers
    assert transfer.ok is verdict and transfer.detail == detail, proof
    assert proof.to_json()["transfers"] == [
        {"zone": "example.org", "transfer_ok": verdict, "detail": detail}
    ]
    if not verdict:
        assert NO_TRANSFER in proof.detail and "allow-transfer { 127.0.0.2; };" in proof.detail


def test_a_primary_that_does_not_answer_the_soa_is_not_tried(tmp_path: Path) -> None:
    async def servfail(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        (length,) = struct.unpack("!H", await reader.readexactly(2))
        reply = dns.message.make_response(dns.message.from_wire(await reader.readexactly(length)))
        reply.set_rcode(dns.rcode.SERVFAIL)
        wire = reply.to_wire()
        writer.write(struct.pack("!H", len(wire)) + wire)
        await writer.drain()

    tunnel, forward = config(tmp_path, "dns", "53")
    proof, _ = asyncio.run(through(servfail, tunnel, forward))
    (transfer,) = proof.transfers
    assert transfer.ok is None and "SERVFAIL" in transfer.detail and not proof.failed
