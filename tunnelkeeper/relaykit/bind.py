"""BIND secondary-zone stanzas that pull each dns forward's zones through the tunnel."""

from __future__ import annotations

import ipaddress

from ..config import Config, Forward, Tunnel, is_ip
from ..errors import ChooseTunnel, ConfigError
from .common import forwards_of, is_ipv6, origin


def zone_file(zone: str) -> str:
    """Where the secondary keeps its copy, relative to named's `directory` (writable by named)."""
    return f"tunnelkeeper-{zone}.db"


def _zones(config: Config, tunnel: str | None) -> list[tuple[str, Tunnel, Forward]]:
    seen: dict[str, tuple[str, Tunnel, Forward]] = {}
    for tun, forward in forwards_of(config, "dns", tunnel):
        if not is_ip(forward.listen.host):
            raise ConfigError(
                f"named needs an address to pull from, not {forward.listen.host!r}",
                path=str(config.path),
                key=_key(config, tun, forward),
            )
        if forward.notify is not None and not (
            forward.notify.host == "localhost" or is_ip(forward.notify.host)
        ):
            raise ConfigError(
                f"named's allow-notify needs an address, not {forward.notify.host!r}",
                path=str(config.path),
                key=_key(config, tun, forward).replace(".listen", ".notify"),
            )
        for zone in forward.zones:
            first = seen.get(zone)
            if first is None:
                seen[zone] = (zone, tun, forward)
            elif first[2].listen != forward.listen:
                raise ChooseTunnel(
                    f"zone {zone!r} is pulled through {first[1].name}/{first[2].name} and "
                    f"{tun.name}/{forward.name}; one relay can pull it only one way: "
                    "generate for one tunnel at a time",
                    path=str(config.path),
                )
    if not seen:
        raise ConfigError(
            "no dns forward with 'zones' in this configuration: nothing to serve",
            path=str(config.path),
        )
    return list(seen.values())


def notify_source(forward: Forward) -> str | None:
    """The address a NOTIFY sent over the tunnel arrives from, or None without `notify`.

    The relay's sshd connects to the notify address for tunnelkeeper; the kernel picks the
    source: 127.0.0.1 for an IPv4 loopback address, ::1 for IPv6 loopback, the address itself
    for one of the relay's others. named takes NOTIFY from its primaries' addresses (any port)
    and from allow-notify; the primary here may be another address (a [::1] listen, say).
    """
    if forward.notify is None:
        return None
    host = forward.notify.host
    if host == "localhost" or ipaddress.ip_address(host).is_loopback:
        return "::1" if is_ipv6(host) else "127.0.0.1"
    return host


def transfer_source(forwards: list[Forward]) -> str:
    """Where the internal primary sees zone transfers come from: the dns forwards' `source`
    (tunnelkeeper's, so that it is never mistaken for the primary's own host's)."""
    sources = sorted({forward.source_address or "" for forward in forwards})
    named = [source for source in sources if source]
    if not named:
        return "the tunnelkeeper host's own address"
    text = " and ".join(named)
    return text if len(named) == len(sources) else f"{text} or the host's own address"


def _key(config: Config, tunnel: Tunnel, forward: Forward) -> str:
    return f"tunnel[{config.tunnel.index(tunnel)}].forward[{tunnel.forward.index(forward)}].listen"


def named_conf(config: Config, tunnel: str | None = None, *, legacy: bool = False) -> str:
    """named.conf text: one `server … { tcp-only yes; }` per primary address, a zone per zone.

    `legacy` writes `type slave`/`masters` for BIND before 9.16.
    """
    zones = _zones(config, tunnel)
    kind, primaries = ("slave", "masters") if legacy else ("secondary", "primaries")
    notified = any(forward.notify is not None for _, _, forward in zones)
    lines = [
        "// BIND secondary zones written by tunnelkeeper: each zone is pulled from the",
        "// internal primary through the SSH tunnel, whose relay end listens on the address",
        "// and port below. The internal primary sees the transfers come from "
        + transfer_source([forward for _, _, forward in zones]),
        "// and must allow them (allow-transfer, better with a TSIG key).",
    ]
    if notified:
        lines += [
            "// The primary's own NOTIFY is UDP and does not travel the tunnel; instead",
            "// tunnelkeeper sends a NOTIFY over the tunnel (TCP) when a zone's serial changes,",
            "// to the named address of its `notify` setting, and named refreshes at once. That",
            "// NOTIFY comes from the address allow-notify names (where sshd hands it over).",
            "// Zones without allow-notify change when their SOA refresh timer fires.",
        ]
    else:
        lines += [
            "// NOTIFY is UDP and does not travel the tunnel: changes arrive when the SOA",
            "// refresh timer fires (or at once with `rndc refresh ZONE`), unless the dns",
            "// forward has `notify` set: tunnelkeeper then sends one over the tunnel.",
        ]
    lines += [
        "",
        "// The tunnel carries TCP only, and named sends its SOA refresh queries over UDP unless",
        "// told otherwise. A server statement may appear once per address: merge these into an",
        "// existing one." + (" (tcp-only needs BIND 9.11 or later.)" if legacy else ""),
    ]
    addresses = list(dict.fromkeys(forward.listen.host for _, _, forward in zones))
    for address in addresses:
        lines += [f"server {address} {{", "\ttcp-only yes;", "};"]
    for zone, tun, forward in zones:
        lines += [
            "",
            f"// {origin(tun, forward)}",
            f'zone "{zone}" {{',
            f"\ttype {kind};",
            f"\t{primaries} {{ {forward.listen.host} port {forward.listen.port}; }};",
        ]
        source = notify_source(forward)
        if source is not None:
            lines.append(f"\tallow-notify {{ {source}; }};")
        lines += [f'\tfile "{zone_file(zone)}";', "};"]
    return "\n".join(lines) + "\n"
