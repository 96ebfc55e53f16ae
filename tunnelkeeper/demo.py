"""`tunnelkeeper demo`: the whole product on one machine, with no external host.

An embedded SSH relay on loopback, an embedded SMTP server and DNS server as the "internal"
services, the real supervisor holding the forwards, a sender that plays the relay's sendmail
(mail into the relay-side port every few seconds), and a chaos task that cuts the tunnel now
and then so recovery can be watched.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import smtplib
import socket
import struct
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset

from . import config, services, ssh
from .publisher import Service, ServiceContext
from .supervisor import Supervisor

log = logging.getLogger(__name__)

ZONE = "example.org"
MAIL_EVERY = 3.0
CHAOS_EVERY = 20.0
# After this many cuts, the internal name server answers SERVFAIL for DNS_FAILS seconds with
# no cut meanwhile: the tunnel stays up, the dns probe fails, and (being over two minutes) at
# least one whole minute of the dashboard's last-hour strip shows it degraded, not down.
CUTS_PER_ROUND = 3
DNS_FAILS = 125.0


@dataclass
class MailStats:
    sent: int = 0
    delivered: int = 0
    refused: int = 0
    received: list[bytes] = field(default_factory=list)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class SmtpService:
    """The internal mail server: aiosmtpd on loopback, keeping what it receives."""

    def __init__(self, stats: MailStats) -> None:
        from aiosmtpd.controller import Controller

        class Handler:
            async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
                stats.received.append(envelope.original_content or envelope.content)
                return "250 2.0.0 accepted by the internal server"

        self.port = free_port()
        self._controller = Controller(
            Handler(), hostname="127.0.0.1", port=self.port, server_hostname=f"mail.{ZONE}"
        )

    def __enter__(self) -> SmtpService:
        self._controller.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._controller.stop()


class DnsService:
    """The internal name server: answers SOA/NS for one zone over TCP (what the tunnel carries)."""

    def __init__(self, zone: str = ZONE, serial: int = 2026112601) -> None:
        self.zone = zone
        self.serial = serial
        self.port = 0
        self.failing_until = 0.0  # time.monotonic(): until then, every answer is SERVFAIL
        self._server: asyncio.base_events.Server | None = None

    async def __aenter__(self) -> DnsService:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def answer(self, wire: bytes) -> bytes:
        query = dns.message.from_wire(wire)
        reply = dns.message.make_response(query)
        reply.flags |= 0x0400  # AA: this is the zone's primary
        question = query.question[0]
        name = question.name.to_text().rstrip(".").lower()
        if time.monotonic() < self.failing_until:
            reply.set_rcode(dns.rcode.SERVFAIL)
        elif name != self.zone:
            reply.set_rcode(dns.rcode.REFUSED)
        elif question.rdtype == dns.rdatatype.SOA:
            reply.answer.append(
                dns.rrset.from_text(
                    question.name,
                    3600,
                    "IN",
                    "SOA",
                    f"ns1.{self.zone}. hostmaster.{self.zone}. {self.serial} 3600 600 604800 300",
                )
            )
        elif question.rdtype == dns.rdatatype.NS:
            reply.answer.append(
                dns.rrset.from_text(question.name, 3600, "IN", "NS", f"ns1.{self.zone}.")
            )
        return bytes(reply.to_wire())

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                (length,) = struct.unpack("!H", await reader.readexactly(2))
                reply = self.answer(await reader.readexactly(length))
                writer.write(struct.pack("!H", len(reply)) + reply)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ValueError, IndexError):
            pass
        finally:
            writer.close()


def demo_config(folder: Path, relay_port: int, smtp_port: int, dns_port: int) -> config.Config:
    raw = {
        "supervisor": {
            "control_socket": str(folder / "control.sock"),
            "shutdown_grace": 3,
            "history_path": str(folder / "history.db"),  # the demo's, not the user's history
        },
        "defaults": {
            "keepalive_interval": 2,
            "keepalive_count_max": 2,
            "probe_interval": 5,
            "backoff_initial": 0.5,
            "backoff_max": 5,
            "stable_after": 10,
        },
        "tunnel": [
            {
                "name": "demo-relay",
                "host": "127.0.0.1",
                "port": relay_port,
                "user": "tunnel",
                "identity": "tunnelkeeper_rsa",
                "known_hosts": "known_hosts",
                "forward": [
                    {
                        "name": "smtp",
                        "service": "smtp",
                        "listen": free_port(),
                        "target": smtp_port,
                        "domains": [ZONE],
                        # The embedded relay has no MTA of its own to hold mail: no ETRN, which
                        # would go to this machine's port 25.
                        "etrn": False,
                    },
                    {
                        "name": "dns",
                        "service": "dns",
                        "listen": free_port(),
                        "target": dns_port,
                        "zones": [ZONE],
                    },
                ],
            }
        ],
    }
    return config.from_dict(raw, folder / "demo.toml")


@contextlib.asynccontextmanager
async def running_demo(
    *, dashboard: bool = False
) -> AsyncIterator[tuple[Supervisor, ssh.EmbeddedRelay, MailStats]]:
    """Everything the demo needs, started; the supervisor is returned not yet running."""
    stats = MailStats()
    # ignore_cleanup_errors: the history thread may still be closing its WAL as the demo ends.
    with tempfile.TemporaryDirectory(
        prefix="tunnelkeeper-demo-", ignore_cleanup_errors=True
    ) as tmp:
        folder = Path(tmp)
        client, host = _throwaway_keys(folder)
        with SmtpService(stats) as smtp:
            async with (
                DnsService() as dns_service,
                ssh.EmbeddedRelay(host.private_openssh, client.public_line) as relay,
            ):
                (folder / "known_hosts").write_text(
                    f"[127.0.0.1]:{relay.port} {relay.host_public_line}\n"
                )
                cfg = demo_config(folder, relay.port, smtp.port, dns_service.port)
                extras = [_sender(stats), _chaos(relay, dns_service)]
                companions = services.standard(cfg, dashboard=dashboard)
                yield Supervisor(cfg, services=extras + companions), relay, stats


def _throwaway_keys(folder: Path) -> tuple[ssh.NewKey, ssh.NewKey]:
    """The demo's client key (written 0600 like a real one) and the relay's host key."""
    folder.chmod(0o700)
    client = ssh.generate_rsa_key(2048, "tunnelkeeper-demo")
    key_file = folder / "tunnelkeeper_rsa"
    key_file.write_bytes(client.private_openssh)
    key_file.chmod(0o600)
    return client, ssh.generate_rsa_key(2048, "demo-relay-host-key")


def _sender(stats: MailStats) -> Service:
    """Plays the relay's sendmail: hands a message to the tunnel port every MAIL_EVERY s."""

    async def send(ctx: ServiceContext) -> None:
        forward = ctx.config().tunnel[0].forward[0]
        for number in itertools.count(1):
            await asyncio.sleep(MAIL_EVERY)
            started = time.monotonic()
            stats.sent += 1
            try:
                await asyncio.to_thread(_send_one, forward.listen.port, number)
            except (OSError, smtplib.SMTPException) as exc:
                stats.refused += 1
                log.warning(
                    "demo mail #%d not accepted at relay %s: %s (the relay's sendmail "
                    "would queue it and retry)",
                    number,
                    forward.listen,
                    exc,
                )
                continue
            stats.delivered += 1
            log.info(
                "demo mail #%d went relay %s -> tunnel -> internal server in %.0f ms "
                "(%d/%d delivered)",
                number,
                forward.listen,
                (time.monotonic() - started) * 1000,
                stats.delivered,
                stats.sent,
            )

    return send


def _send_one(port: int, number: int) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
        smtp.sendmail(
            f"sender@relay.{ZONE}",
            [f"postmaster@{ZONE}"],
            f"Subject: tunnelkeeper demo #{number}\r\n\r\nhello #{number}\r\n",
        )


def _chaos(relay: ssh.EmbeddedRelay, dns_service: DnsService) -> Service:
    """Cuts every relay connection now and then, so the dashboard shows recovery; now and
    then the name server fails instead, so it shows a failing probe on a tunnel that is up."""

    async def cut(_ctx: ServiceContext) -> None:
        while True:
            for _ in range(CUTS_PER_ROUND):
                await asyncio.sleep(CHAOS_EVERY)
                dropped = relay.drop_all()
                log.warning("demo: relay dropped %d connection(s) to show recovery", dropped)
            await asyncio.sleep(CHAOS_EVERY)
            dns_service.failing_until = time.monotonic() + DNS_FAILS
            log.warning("demo: the internal name server fails for %.0f s", DNS_FAILS)
            await asyncio.sleep(DNS_FAILS)

    return cut
