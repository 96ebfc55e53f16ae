"""Reaching the relay (or the first jump host) through an HTTP CONNECT or SOCKS5 proxy: a TCP
socket to the proxy, the handshake, and then the same socket carries only the SSH stream."""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import socket
import struct
from collections.abc import Sequence
from typing import Any

from ..config import Proxy, host_port
from ..errors import ProxyFailed
from ..peertext import quoted

MAX_REPLY_HEAD = 16 * 1024
_SOCKS_REPLIES = {
    1: "general failure",
    2: "connection not allowed by ruleset",
    3: "network unreachable",
    4: "host unreachable",
    5: "connection refused",
    6: "TTL expired",
    7: "command not supported",
    8: "address type not supported",
}


async def open_through(
    proxy: Proxy, host: str, port: int, auth: str | None, timeout: float
) -> tuple[socket.socket, bytes]:
    """A socket to `host:port` through `proxy`, and any bytes that came after the proxy's
    reply (the start of the SSH banner). Raises ProxyFailed saying what went wrong."""
    loop = asyncio.get_running_loop()
    where = f"proxy {proxy}"
    try:
        async with asyncio.timeout(timeout):
            infos = await loop.getaddrinfo(proxy.host, proxy.port, type=socket.SOCK_STREAM)
            sock = await _connect_any(loop, infos)
            try:
                if proxy.scheme == "http":
                    extra = await _http_connect(loop, sock, host, port, auth, where)
                else:
                    extra = await _socks5(loop, sock, host, port, auth, where)
            except BaseException:
                sock.close()
                raise
    except TimeoutError:
        raise ProxyFailed(f"{where}: timed out, no answer within {timeout:g}s") from None
    except socket.gaierror as exc:
        raise ProxyFailed(f"{where}: name does not resolve ({exc.strerror})") from None
    except ConnectionRefusedError:
        raise ProxyFailed(f"{where}: connection refused") from None
    except OSError as exc:
        raise ProxyFailed(f"{where}: {exc.strerror or exc}") from None
    return sock, extra


_AddressInfo = tuple[socket.AddressFamily, socket.SocketKind, int, str, tuple[Any, ...]]


async def _connect_any(
    loop: asyncio.AbstractEventLoop, infos: Sequence[_AddressInfo]
) -> socket.socket:
    error: OSError | None = None
    for family, kind, proto, _, address in infos:
        sock = socket.socket(family, kind, proto)
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, address)
        except OSError as exc:
            sock.close()
            error = exc
            continue
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock
    raise error or OSError("no address")


async def _recv_exactly(
    loop: asyncio.AbstractEventLoop, sock: socket.socket, n: int, where: str
) -> bytes:
    data = b""
    while len(data) < n:
        chunk = await loop.sock_recv(sock, n - len(data))
        if not chunk:
            raise ProxyFailed(f"{where}: closed the connection during the handshake")
        data += chunk
    return data


async def _http_connect(
    loop: asyncio.AbstractEventLoop,
    sock: socket.socket,
    host: str,
    port: int,
    auth: str | None,
    where: str,
) -> bytes:
    target = host_port(host, port)
    request = f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n"
    if auth is not None:
        token = base64.b64encode(auth.encode("utf-8")).decode("ascii")
        request += f"Proxy-Authorization: Basic {token}\r\n"
    await loop.sock_sendall(sock, (request + "\r\n").encode("utf-8"))
    head = b""
    while b"\r\n\r\n" not in head:
        if len(head) > MAX_REPLY_HEAD:
            raise ProxyFailed(f"{where}: a CONNECT reply longer than {MAX_REPLY_HEAD} bytes")
        chunk = await loop.sock_recv(sock, 4096)
        if not chunk:
            raise ProxyFailed(f"{where}: closed the connection before answering CONNECT")
        head += chunk
    head, _, extra = head.partition(b"\r\n\r\n")
    status = head.split(b"\r\n", 1)[0]
    parts = status.split(None, 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
        raise ProxyFailed(f"{where}: not an HTTP reply to CONNECT ({quoted('it', status)})")
    code = int(parts[1])
    if not 200 <= code < 300:
        hint = {
            407: " (proxy authentication required: set proxy_auth_file)",
            403: " (the proxy does not allow CONNECT to this port)",
        }.get(code, "")
        if code == 407 and auth is not None:
            hint = " (the credentials in proxy_auth_file were refused)"
        raise ProxyFailed(
            f"{where}: CONNECT {target} answered {code}{hint}; {quoted('it', status)}"
        )
    return extra


async def _socks5(
    loop: asyncio.AbstractEventLoop,
    sock: socket.socket,
    host: str,
    port: int,
    auth: str | None,
    where: str,
) -> bytes:
    methods = b"\x00\x02" if auth is not None else b"\x00"
    await loop.sock_sendall(sock, bytes([5, len(methods)]) + methods)
    version, method = await _recv_exactly(loop, sock, 2, where)
    if version != 5:
        raise ProxyFailed(f"{where}: not a SOCKS5 proxy")
    if method == 2 and auth is not None:
        user, _, password = auth.partition(":")
        u, p = user.encode("utf-8"), password.encode("utf-8")
        if len(u) > 255 or len(p) > 255:
            raise ProxyFailed(f"{where}: user name or password longer than SOCKS5 allows")
        await loop.sock_sendall(sock, bytes([1, len(u)]) + u + bytes([len(p)]) + p)
        _, status = await _recv_exactly(loop, sock, 2, where)
        if status != 0:
            raise ProxyFailed(f"{where}: the credentials in proxy_auth_file were refused")
    elif method != 0:
        need = "user name and password (set proxy_auth_file)" if method == 2 else "a method"
        raise ProxyFailed(f"{where}: the proxy wants {need} we do not offer")
    try:
        address = ipaddress.ip_address(host)
        kind, packed = (1, address.packed) if address.version == 4 else (4, address.packed)
    except ValueError:
        name = host.encode("idna")
        kind, packed = 3, bytes([len(name)]) + name  # the proxy resolves it (socks5h)
    await loop.sock_sendall(sock, bytes([5, 1, 0, kind]) + packed + struct.pack("!H", port))
    _, reply, _, bound = await _recv_exactly(loop, sock, 4, where)
    length = {1: 4, 4: 16}.get(bound)
    if length is None:
        (length,) = await _recv_exactly(loop, sock, 1, where)
    await _recv_exactly(loop, sock, length + 2, where)
    if reply != 0:
        meaning = _SOCKS_REPLIES.get(reply, f"reply {reply}")
        raise ProxyFailed(f"{where}: SOCKS5 connect to {host}:{port} failed: {meaning}")
    return b""
