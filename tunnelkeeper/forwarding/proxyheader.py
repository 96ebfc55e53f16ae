"""The PROXY protocol header (HAProxy's, versions 1 and 2) that begins a connection to a
target that reads it, so that the target sees the relay as the client, not this host."""

from __future__ import annotations

import ipaddress
import struct
from typing import Literal

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
_V2_PROXY = 0x21  # version 2, command PROXY
_V2_LOCAL = 0x20  # version 2, command LOCAL: no addresses, the connection's own count
_TCP4 = 0x11  # AF_INET, STREAM
_TCP6 = 0x21  # AF_INET6, STREAM

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def proxy_header(
    version: Literal["v1", "v2"],
    source: tuple[str, int] | None,
    dest: tuple[str, int] | None,
) -> bytes:
    """The header naming `source` (host, port) as the client and `dest` as the address it
    connected to. When either is unknown or not an IP address, the header says so (v1
    `UNKNOWN`, v2 `LOCAL`) and the target uses the connection's own addresses. When the two
    are of different families, both are written as IPv6 (IPv4-mapped)."""
    pair = _addresses(source, dest)
    if version == "v1":
        return _v1(pair)
    return _v2(pair)


def _addresses(
    source: tuple[str, int] | None, dest: tuple[str, int] | None
) -> tuple[Address, int, Address, int] | None:
    if source is None or dest is None:
        return None
    try:
        src = ipaddress.ip_address(source[0])
        dst = ipaddress.ip_address(dest[0])
    except ValueError:
        return None
    src, dst = _unscoped(src), _unscoped(dst)
    if src.version != dst.version:
        src, dst = _as_v6(src), _as_v6(dst)
    sport, dport = source[1], dest[1]
    if not (0 <= sport <= 0xFFFF and 0 <= dport <= 0xFFFF):
        return None
    return src, sport, dst, dport


def _unscoped(address: Address) -> Address:
    # A zone index (fe80::1%eth0) has no place in the header.
    if isinstance(address, ipaddress.IPv6Address) and address.scope_id:
        return ipaddress.IPv6Address(address.packed)
    return address


def _as_v6(address: Address) -> ipaddress.IPv6Address:
    if isinstance(address, ipaddress.IPv6Address):
        return address
    return ipaddress.IPv6Address(b"\0" * 10 + b"\xff\xff" + address.packed)


def _v1(pair: tuple[Address, int, Address, int] | None) -> bytes:
    if pair is None:
        return b"PROXY UNKNOWN\r\n"
    src, sport, dst, dport = pair
    proto = "TCP4" if src.version == 4 else "TCP6"
    return f"PROXY {proto} {src.compressed} {dst.compressed} {sport} {dport}\r\n".encode("ascii")


def _v2(pair: tuple[Address, int, Address, int] | None) -> bytes:
    if pair is None:
        return V2_SIGNATURE + struct.pack("!BBH", _V2_LOCAL, 0, 0)
    src, sport, dst, dport = pair
    body = src.packed + dst.packed + struct.pack("!HH", sport, dport)
    family = _TCP4 if src.version == 4 else _TCP6
    return V2_SIGNATURE + struct.pack("!BBH", _V2_PROXY, family, len(body)) + body
