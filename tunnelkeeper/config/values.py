"""Value types of the configuration: names, durations, endpoints, hops, proxies, and the one
check that keeps control characters out of every string."""

from __future__ import annotations

import ipaddress
import re
import unicodedata
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, field_validator

# inf would silently mean "never": no keepalive verdict, no connect timeout, an endless drain.
# Durations in seconds: at most a year, so that every program the generators feed (sshd's
# ClientAliveInterval, say) can take the number.
YEAR = 365 * 86_400
Seconds = Annotated[float, Field(strict=True, ge=0, le=YEAR, allow_inf_nan=False)]
PositiveSeconds = Annotated[float, Field(strict=True, gt=0, le=YEAR, allow_inf_nan=False)]
Flag = Annotated[bool, Field(strict=True)]  # true or false, not "yes", 1 or "true"
Port = Annotated[int, Field(strict=True, ge=1, le=65535)]
# pydantic matches `pattern` with its Rust engine, where "$" is the very end (no newline).
Name = Annotated[str, Field(strict=True, pattern=r"^[a-z0-9][a-z0-9_-]*$", max_length=64)]
ServiceKind = Literal["smtp", "dns", "tcp"]
HostKeyPolicy = Literal["strict", "accept-new"]

# Always matched whole (fullmatch): "$" in re.match also accepts a trailing newline.
_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")
_HOSTNAME = re.compile(r"[A-Za-z0-9.-]{1,253}")
# An OpenSSH pattern-list entry (from="..."): host names, addresses, CIDR, wildcards, negation.
_USER = re.compile(r"[A-Za-z0-9._][A-Za-z0-9._-]*")
_HAS_PORT = re.compile(r"(\[[^]]*\]|[^:\[\]]*):[0-9]+")  # host:port or [v6]:port
_FROM_PATTERN = re.compile(r"!?[A-Za-z0-9.:*?/_-]+(,!?[A-Za-z0-9.:*?/_-]+)*")
CONFIG_NAME = "tunnelkeeper.toml"


def control_character(text: str) -> str | None:
    """The first character of `text` that could end or disguise a line, escaped; else None.

    Control characters (C0, DEL, C1, including tab and the NUL no path or argv can hold), the
    Unicode line and paragraph separators, and the bidirectional overrides that reorder what a
    reader of a generated file sees.
    """
    for char in text:
        if unicodedata.category(char) in ("Cc", "Zl", "Zp") or char in _BIDI:
            name = _CONTROL_NAMES.get(char)
            return f"U+{ord(char):04X} ({name})" if name else f"U+{ord(char):04X}"
    return None


_CONTROL_NAMES = {
    "\x00": "NUL",
    "\t": "tab",
    "\n": "newline",
    "\r": "carriage return",
    "\x1b": "escape",
}


_BIDI = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def _no_nul(value: Any) -> Any:
    # TOML allows "\u0000"; no path or argv can hold it, and os calls would raise ValueError.
    if "\x00" in str(value):
        raise ValueError("must not contain a NUL character")
    return value


def _not_empty(value: object) -> object:
    if isinstance(value, str) and not value.strip():
        raise ValueError("must not be empty (give a file's path)")
    return value


FilePath = Annotated[Path, BeforeValidator(_not_empty), AfterValidator(_no_nul)]
Argv = tuple[Annotated[str, AfterValidator(_no_nul)], ...]


def _relay_host(value: str) -> str:
    if not _HOSTNAME.fullmatch(value) and not is_ip(value):
        raise ValueError(f"{value!r} is not a host name or address")
    return value.lower()


def _from_patterns(value: tuple[str, ...]) -> tuple[str, ...]:
    for entry in value:
        if not _FROM_PATTERN.fullmatch(entry):
            raise ValueError(
                f"{entry!r} is not an OpenSSH pattern list (host names, addresses, "
                "address/bits, *, ?, ! and commas)"
            )
    return value


RelayHost = Annotated[
    str, Field(strict=True, min_length=1, max_length=253), AfterValidator(_relay_host)
]
UserName = Annotated[str, Field(strict=True, pattern=r"^[A-Za-z0-9._][A-Za-z0-9._-]*$")]
# `from` in authorized_keys: where the relay accepts the key from.
FromPatterns = Annotated[tuple[str, ...], AfterValidator(_from_patterns)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @field_validator("*", mode="before")
    @classmethod
    def _refuse_control(cls, value: Any) -> Any:
        # One check for every string field of every table, present and future ones alike:
        # each string ends up in a generated line, a log line, an argv or a path.
        items = value if isinstance(value, list | tuple) else (value,)
        for index, item in enumerate(items):
            found = control_character(item) if isinstance(item, str) else None
            if found is not None:
                where = f"item {index} " if items is value else ""
                raise ValueError(f"{where}contains the control character {found}")
        return value


def host_port(host: str, port: int) -> str:
    """`host:port`, an IPv6 address in brackets (`[::1]:25`): the one spelling everywhere."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class Endpoint(_Model):
    """An address:port pair; `str()` gives it back in the canonical `host:port` form."""

    host: str
    port: Port

    def __str__(self) -> str:
        return host_port(self.host, self.port)

    @property
    def is_loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


def parse_endpoint(value: object) -> Endpoint:
    """`"127.0.0.1:2525"`, `"[::1]:2525"`, `"2525"` or `2525` (a bare port means 127.0.0.1)."""
    if isinstance(value, Endpoint):
        return value
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError('must be a string "address:port" or a port number')
    text = str(value).strip()
    if text.isdigit():
        host, port_text = "127.0.0.1", text
    elif text.startswith("["):
        host, sep, port_text = text[1:].partition("]:")
        if not sep:
            raise ValueError(f'{text!r} is not "[address]:port"')
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or not host:
            raise ValueError(f'{text!r} is not "address:port" or a port number')
        if ":" in host:
            raise ValueError(f'{text!r}: write an IPv6 address as "[address]:port"')
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"{text!r}: port must be a number from 1 to 65535")
    host = host.strip().lower()
    if ":" in host:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{text!r}: {host!r} is not an IPv6 address") from None
    elif not _HOSTNAME.fullmatch(host):
        raise ValueError(f"{text!r}: {host!r} is not an address or host name")
    return Endpoint(host=host, port=int(port_text))


class Hop(_Model):
    """One ProxyJump hop: `[user@]host[:port]` (an IPv6 address in brackets)."""

    user: str | None = None
    host: str
    port: Port = 22

    def __str__(self) -> str:
        return f"{self.user + '@' if self.user else ''}{host_port(self.host, self.port)}"


def parse_hop(value: object) -> Hop:
    if isinstance(value, Hop):
        return value
    if not isinstance(value, str) or not value.strip():
        raise ValueError('a hop is a string "[user@]host[:port]"')
    text = value.strip()
    user, at, rest = text.rpartition("@")
    if at and not _USER.fullmatch(user):
        raise ValueError(f"{text!r}: {user!r} is not a user name")
    endpoint = parse_endpoint(rest if _HAS_PORT.fullmatch(rest) else f"{rest}:22")
    return Hop(user=user or None, host=endpoint.host, port=endpoint.port)


def parse_hops(value: object) -> tuple[Hop, ...]:
    """A `jump` value: one hop or a list of them, in order."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list | tuple):
        raise ValueError('must be a list of "[user@]host[:port]" hops')
    return tuple(parse_hop(hop) for hop in value)


ProxyScheme = Literal["http", "socks5"]
_PROXY_PORTS: dict[ProxyScheme, int] = {"http": 3128, "socks5": 1080}


class Proxy(_Model):
    """`http://host:port` (HTTP CONNECT) or `socks5://host:port` (the proxy resolves names)."""

    scheme: ProxyScheme
    host: str
    port: Port

    def __str__(self) -> str:
        return f"{self.scheme}://{host_port(self.host, self.port)}"


def parse_proxy(value: object) -> Proxy | None:
    if value is None or isinstance(value, Proxy):
        return value
    if not isinstance(value, str):
        raise ValueError('must be a string like "http://proxy:3128" or "socks5://proxy:1080"')
    given, sep, rest = value.strip().partition("://")
    named = {"socks5h": "socks5"}.get(given.lower(), given.lower())
    scheme = next((known for known in _PROXY_PORTS if known == named), None)
    if not sep or scheme is None:
        raise ValueError(f"{value!r}: give http://host:port or socks5://host:port")
    rest = rest.rstrip("/")
    if "@" in rest or "/" in rest:
        raise ValueError(f"{value!r}: credentials belong in proxy_auth_file, and no path is used")
    has_port = _HAS_PORT.fullmatch(rest)
    endpoint = parse_endpoint(rest if has_port else f"{rest}:{_PROXY_PORTS[scheme]}")
    return Proxy(scheme=scheme, host=endpoint.host, port=endpoint.port)


def _domain(value: str, what: str) -> str:
    name = value.strip().lower().rstrip(".")
    if name.startswith("."):
        raise ValueError(f"{value!r}: give the {what} without a leading dot (see 'subdomains')")
    if not is_domain_name(name):
        raise ValueError(f"{value!r} is not a valid {what}")
    return name


def is_domain_name(name: str) -> bool:
    """Dot-separated labels of letters, digits and inner hyphens, 253 characters at most."""
    return len(name) <= 253 and all(_LABEL.fullmatch(label) for label in name.split("."))


def is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def _unique(values: list[str], what: str) -> None:
    seen: set[str] = set()
    for value in values:
        if value in seen:
            raise ValueError(f"duplicate {what} {value!r}")
        seen.add(value)
