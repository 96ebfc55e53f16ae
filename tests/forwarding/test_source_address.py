"""Where tunnelled connections come from: a forward's `source` (127.0.0.2 by default for a
127.x target), so that an internal server as it comes never takes a relay user for its own
host — shown with a real internal sendmail behind a real sshd reverse forward (way in 1: the
open relay), a plain TCP target's view of the peer, the local probe path, a source that is
not this host's, and the PROXY header read by aiosmtpd."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import smtplib
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.relaykit.conftest import need_tool, run
from tests.support.configs import write_config
from tests.support.relay_address import RELAY_ADDRESS, forward_config, forwarded
from tests.support.sendmail import mc_text, port_open, stop_tree
from tests.support.sshd import free_port, wait_until
from tunnelkeeper.checks import probes
from tunnelkeeper.checks.checker import check
from tunnelkeeper.config import Forward, load
from tunnelkeeper.errors import SourceUnavailable

pytestmark = pytest.mark.timeout(60)

INTERNAL_NAME = "mail.example.org"
# Only what a test host needs beside sendmail's defaults: no DNS, no port 587, one listener.
INTERNAL_MC = """\
FEATURE(`accept_unresolvable_domains')dnl
FEATURE(`no_default_msa')dnl
DAEMON_OPTIONS(`Port={port}, Addr=127.0.0.1, Name=MTA')dnl
"""


@contextlib.contextmanager
def internal_sendmail(folder: Path) -> Iterator[int]:
    """The internal host's sendmail as it comes (the relaying rules of sendmail's own cf), on a
    free loopback port; yields the port."""
    if os.geteuid() != 0 and not os.environ.get("CI"):
        pytest.skip("sendmail -C with its own queue and unshare -u need root")
    sendmail, m4 = need_tool("sendmail"), need_tool("m4")
    port = free_port()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "queue").mkdir(mode=0o700, exist_ok=True)
    (folder / "service.switch").write_text("hosts files\n")
    (folder / "aliases").write_text("")
    (folder / "local-host-names").write_text(f"{INTERNAL_NAME}\nexample.org\n")
    mc = folder / "internal.mc"
    mc.write_text(mc_text(folder, "", INTERNAL_MC.format(port=port)))
    cf = folder / "sendmail.cf"
    cf.write_text(run([m4, mc]).stdout)
    daemon = subprocess.Popen(
        [
            *(need_tool("unshare"), "-u", "sh", "-c"),
            f'hostname {INTERNAL_NAME} && exec "$0" -C "$1" -bD',
            *(sendmail, str(cf)),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: port_open(port) or daemon.poll() is not None, 15, what="sendmail")
        assert daemon.poll() is None, "the internal sendmail did not start"
        yield port
    finally:
        stop_tree(daemon)


def rcpt_from_the_relay(listen: int) -> tuple[int, str]:
    """A relay user's try: connect to the forward on the relay, ask to relay elsewhere."""
    with smtplib.SMTP("127.0.0.1", listen, timeout=10) as client:
        client.ehlo("shell.relay.example.net")
        code, _ = client.mail("someone@relay.example.net")
        assert code == 250
        code, text = client.rcpt("victim@third-party.example")
        client.rset()
        return code, text.decode(errors="replace")


@pytest.mark.parametrize("source", [None, ""], ids=["default", "kernel-choice"])
def test_way_in_1_open_relay(
    relay: Any, tmp_path: Path, source: str | None, outcome: dict[str, Any]
) -> None:
    """RCPT TO a third party through the tunnel: refused by default, relayed with source ""."""
    with internal_sendmail(tmp_path / "internal") as port:
        extra = {} if source is None else {"source": source}
        config, listen = forward_config(tmp_path, relay, port, **extra)

        async def go() -> tuple[int, str]:
            async with forwarded(config):
                return await asyncio.to_thread(rcpt_from_the_relay, listen)

        code, text = asyncio.run(go())
    outcome.update(source=source, rcpt=f"{code} {text}"[:80])
    if source is None:
        assert code == 550 and "Relaying denied" in text, (code, text)
        assert "[127.0.0.2]" in text, text  # sendmail names the client it saw
    else:  # what every tunnel did before: the internal sendmail relays for 127.0.0.1
        assert code == 250, (code, text)


class PeerRecorder:
    """A plain TCP target that records each client's address and greets it."""

    def __init__(self) -> None:
        self.peers: list[str] = []
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> PeerRecorder:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.peers.append(writer.get_extra_info("peername")[0])
        writer.write(b"220 target\r\n")
        await writer.drain()
        writer.close()

    async def close(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()


async def greeting_via(listen: int) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", listen)
    try:
        return await asyncio.wait_for(reader.readline(), 10)
    finally:
        writer.close()


@pytest.mark.parametrize(
    ("source", "seen"),
    [(None, "127.0.0.2"), ("127.0.0.9", "127.0.0.9"), ("", "127.0.0.1")],
    ids=["default", "explicit", "kernel-choice"],
)
def test_the_target_sees_the_source(
    relay: Any, tmp_path: Path, source: str | None, seen: str
) -> None:
    async def go() -> list[str]:
        target = await PeerRecorder().start()
        extra = {} if source is None else {"source": source}
        config, listen = forward_config(tmp_path, relay, target.port, "tcp", **extra)
        try:
            async with forwarded(config):
                for _ in range(2):
                    assert await greeting_via(listen) == b"220 target\r\n"
        finally:
            await target.close()
        return target.peers

    assert asyncio.run(go()) == [seen, seen]


def test_a_local_probe_comes_from_the_source_too() -> None:
    """The fallback when the relay forbids probe channels dials the target from here."""

    async def go() -> tuple[bool, list[str]]:
        target = await PeerRecorder().start()
        fwd = Forward.model_validate(
            {"name": "t", "service": "tcp", "listen": 2525, "target": target.port}
        )

        async def no_relay(*_: Any) -> Any:
            raise AssertionError("a local probe never opens a relay channel")

        try:
            result = await probes.run_probe(fwd, no_relay, 5, via_local=True)
        finally:
            await target.close()
        return result.ok, target.peers

    assert asyncio.run(go()) == (True, ["127.0.0.2"])


# 192.0.2.1 (TEST-NET-1) is never an address of a test host: binding to it fails at once with
# EADDRNOTAVAIL, before anything is sent anywhere.
FOREIGN = "192.0.2.1"


def test_a_source_not_on_this_host_is_named_once_per_burst(
    relay: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def go() -> tuple[list[bytes], list[str]]:
        target = await PeerRecorder().start()
        config, listen = forward_config(tmp_path, relay, target.port, "tcp", source=FOREIGN)
        try:
            async with forwarded(config):
                got = [await greeting_via(listen) for _ in range(3)]
        finally:
            await target.close()
        return got, target.peers

    with caplog.at_level(logging.INFO, logger="tunnelkeeper"):
        got, peers = asyncio.run(go())
    assert got == [b"", b"", b""] and peers == []  # each connection refused, none reached it
    said = [r for r in caplog.records if FOREIGN in r.getMessage()]
    assert len(said) == 1, [r.getMessage() for r in said]
    assert said[0].exc_info is None  # words, not a traceback
    assert f"source {FOREIGN} is not an address of this host" in said[0].getMessage()


def test_check_names_a_source_not_on_this_host_up_front(relay: Any, tmp_path: Path) -> None:
    config, _ = forward_config(tmp_path, relay, free_port(), "tcp", source=FOREIGN)
    status = asyncio.run(check(load(config)))
    (fwd,) = status.tunnels[0].forwards
    assert fwd.state == "down"
    assert fwd.error is not None and f"source {FOREIGN} is not an address" in fwd.error
    assert fwd.source == FOREIGN


def test_dial_raises_source_unavailable() -> None:
    from tunnelkeeper.config import Endpoint
    from tunnelkeeper.forwarding.dial import dial

    async def go() -> None:
        await dial(asyncio.Protocol, Endpoint(host="127.0.0.1", port=free_port()), FOREIGN, 5)

    with pytest.raises(SourceUnavailable, match="not an address of this host"):
        asyncio.run(go())


# -- PROXY protocol, read by a real implementation (aiosmtpd) ----------------------------------


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_proxy_header_read_by_aiosmtpd(relay: Any, tmp_path: Path, version: str) -> None:
    from aiosmtpd.smtp import SMTP

    seen: list[Any] = []

    class Handler:
        async def handle_PROXY(self, server: Any, session: Any, envelope: Any, data: Any) -> bool:
            seen.append(data)
            return True

    def client(listen: int) -> tuple[int, int]:
        with smtplib.SMTP(timeout=10) as smtp:
            # Bind first: the header must carry the port the relay user came from.
            smtp.source_address = ("127.0.0.1", 0)
            smtp.connect("127.0.0.1", listen)
            assert smtp.sock is not None
            port = smtp.sock.getsockname()[1]
            code, _ = smtp.ehlo("shell.relay.example.net")
            return code, port

    async def go() -> tuple[int, int]:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: SMTP(Handler(), proxy_protocol_timeout=5), "127.0.0.1", 0
        )
        port = server.sockets[0].getsockname()[1]
        config, listen = forward_config(tmp_path, relay, port, proxy_protocol=version)
        try:
            async with forwarded(config):
                code, client_port = await asyncio.to_thread(client, listen)
        finally:
            server.close()
            await server.wait_closed()
        return code, client_port

    code, client_port = asyncio.run(go())
    assert code == 250  # aiosmtpd took the header and went on to SMTP
    (data,) = seen
    assert data.valid and data.version == int(version[1])
    assert str(data.src_addr) == RELAY_ADDRESS  # the relay, as tunnelkeeper reached it
    assert data.src_port == client_port  # the relay user's own port on the relay
    listen = load(tmp_path / "tk.toml").tunnel[0].forward[0].listen
    assert (str(data.dst_addr), data.dst_port) == (listen.host, listen.port)


def test_check_says_where_connections_come_from(
    relay: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tunnelkeeper.cli import main

    v4, v6 = free_port(), free_port()
    forwards = [
        {"name": "v4", "service": "tcp", "listen": f"127.0.0.1:{v4}", "target": "127.0.0.1:9"},
        {"name": "v6", "service": "tcp", "listen": f"127.0.0.1:{v6}", "target": "[::1]:9"},
    ]
    config = write_config(tmp_path / "tk.toml", relay, forwards, host=RELAY_ADDRESS)
    main(["check", "-c", str(config)])  # nothing listens on port 9: the probes fail
    out = capsys.readouterr().out
    assert f"forward v4 127.0.0.1:{v4} -> 127.0.0.1:9 from 127.0.0.2:" in out
    assert f"forward v6 127.0.0.1:{v6} -> [::1]:9 from the kernel's choice:" in out
    assert out.count("note: Linux has one IPv6 loopback address") == 1


def test_a_localhost_target_is_reached_from_127_0_0_2() -> None:
    async def go() -> tuple[str | None, list[str]]:
        target = await PeerRecorder().start()
        fwd = Forward.model_validate(
            {"name": "t", "service": "tcp", "listen": 2525, "target": f"localhost:{target.port}"}
        )

        async def no_relay(*_: Any) -> Any:
            raise AssertionError("a local probe never opens a relay channel")

        try:
            result = await probes.run_probe(fwd, no_relay, 5, via_local=True)
        finally:
            await target.close()
        assert result.ok, result.detail
        return fwd.source_address, target.peers

    assert asyncio.run(go()) == ("127.0.0.2", ["127.0.0.2"])
