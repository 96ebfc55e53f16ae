"""The PROXY protocol header, byte for byte: version 1's examples from the protocol's own text,
version 2's layout (signature, version/command, family, length, addresses, ports), and both
read back by an independent parser (aiosmtpd's)."""

from __future__ import annotations

import asyncio
import ipaddress
from typing import Literal

import pytest

from tunnelkeeper.forwarding.proxyheader import V2_SIGNATURE, proxy_header

FULL6 = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"


@pytest.mark.parametrize(
    ("source", "dest", "expected"),
    [
        # The protocol's examples: a proxied HTTP connection, and the longest lines.
        (
            ("192.168.0.1", 56324),
            ("192.168.0.11", 443),
            b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n",
        ),
        (
            ("255.255.255.255", 65535),
            ("255.255.255.255", 65535),
            b"PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n",
        ),
        (
            (FULL6, 65535),
            (FULL6, 65535),
            f"PROXY TCP6 {FULL6} {FULL6} 65535 65535\r\n".encode(),
        ),
        (None, ("127.0.0.1", 2525), b"PROXY UNKNOWN\r\n"),
        # IPv6 compressed as written everywhere; a mixed pair is written as IPv6.
        (("2001:db8::1", 0), ("::1", 2525), b"PROXY TCP6 2001:db8::1 ::1 0 2525\r\n"),
        (
            ("2001:db8::1", 7),
            ("127.0.0.1", 2525),
            b"PROXY TCP6 2001:db8::1 ::ffff:7f00:1 7 2525\r\n",
        ),
    ],
)
def test_v1(source: tuple[str, int] | None, dest: tuple[str, int], expected: bytes) -> None:
    header = proxy_header("v1", source, dest)
    assert header == expected
    assert len(header) <= 107  # the protocol's bound on a v1 line


def test_v1_lengths_are_the_protocols_worst_cases() -> None:
    assert len(proxy_header("v1", ("255.255.255.255", 65535), ("255.255.255.255", 65535))) == 56
    assert len(proxy_header("v1", (FULL6, 65535), (FULL6, 65535))) == 104


def test_v2_ipv4() -> None:
    header = proxy_header("v2", ("192.168.0.1", 56324), ("192.168.0.11", 443))
    assert header == (
        b"\x0d\x0a\x0d\x0a\x00\x0d\x0a\x51\x55\x49\x54\x0a"  # the 12-byte signature
        b"\x21"  # version 2, command PROXY
        b"\x11"  # AF_INET, STREAM
        b"\x00\x0c"  # 12 bytes of addresses follow
        b"\xc0\xa8\x00\x01"  # 192.168.0.1
        b"\xc0\xa8\x00\x0b"  # 192.168.0.11
        b"\xdc\x04"  # 56324
        b"\x01\xbb"  # 443
    )


def test_v2_ipv6_and_mixed() -> None:
    header = proxy_header("v2", ("2001:db8::1", 1), ("::1", 2525))
    assert header[:16] == V2_SIGNATURE + b"\x21\x21\x00\x24"  # AF_INET6, STREAM; 36 bytes
    assert header[16:32] == ipaddress.IPv6Address("2001:db8::1").packed
    assert header[32:48] == b"\x00" * 15 + b"\x01"
    assert header[48:] == b"\x00\x01\x09\xdd"
    mixed = proxy_header("v2", ("2001:db8::1", 1), ("127.0.0.1", 2525))
    assert mixed[32:48] == b"\x00" * 10 + b"\xff\xff\x7f\x00\x00\x01"


def test_v2_unknown_is_local() -> None:
    # LOCAL, AF_UNSPEC, no addresses: the receiver keeps the connection's own.
    assert proxy_header("v2", None, ("127.0.0.1", 25)) == V2_SIGNATURE + b"\x20\x00\x00\x00"
    assert proxy_header("v2", ("relay.example.net", 1), ("127.0.0.1", 25)).endswith(
        b"\x20\x00\x00\x00"
    )


def test_a_zone_index_is_left_out() -> None:
    assert (
        proxy_header("v1", ("fe80::1%eth0", 5), ("fe80::2", 25))
        == b"PROXY TCP6 fe80::1 fe80::2 5 25\r\n"
    )


@pytest.mark.parametrize("version", ["v1", "v2"])
@pytest.mark.parametrize(
    ("source", "dest"),
    [(("203.0.113.9", 40000), ("127.0.0.1", 2525)), (("2001:db8::7", 40000), ("::1", 2525))],
)
def test_read_back_by_aiosmtpd(
    version: Literal["v1", "v2"], source: tuple[str, int], dest: tuple[str, int]
) -> None:
    from aiosmtpd.proxy_protocol import get_proxy

    header = proxy_header(version, source, dest)

    async def parse() -> object:
        reader = asyncio.StreamReader()
        reader.feed_data(header + b"EHLO x\r\n")
        return await get_proxy(reader)

    data = asyncio.run(parse())
    assert data.valid, data.error  # type: ignore[attr-defined]
    got = (str(data.src_addr), data.src_port, str(data.dst_addr), data.dst_port)  # type: ignore[attr-defined]
    assert got == (*source, *dest)
