"""The internal host's files of the internal kit: Postfix main.cf and master.cf lines, the
sendmail access map and BIND's `tunnelkeeper` ACL, each keeping a tunnelled connection from
being taken for one of this host's own."""

from __future__ import annotations

import ipaddress

from ..config import Config, Forward, Tunnel
from .common import forwards_of

# The host's own loopback addresses, which a site's MTA rightly trusts (local submission).
_OWN = ("127.0.0.1", "::1")


def _way(tunnel: Tunnel, forward: Forward) -> str:
    source = forward.source_address or "the kernel's choice"
    return (
        f"{tunnel.name}/{forward.name}: {forward.listen} on {tunnel.relay} -> "
        f"{forward.target}, from {source}"
    )


def _unnamed(ways: list[tuple[Tunnel, Forward]], mark: str) -> list[str]:
    """Comment lines for the forwards whose connections come from the kernel's choice."""
    lines = []
    for tunnel, forward in ways:
        if forward.source_address is not None:
            continue
        if forward.source == "" or ":" not in forward.target.host:
            said = [
                'has source = "": its connections come from the kernel\'s choice of'
                if forward.source == ""
                else "has no `source`: its connections come from the kernel's choice of",
                "address, one of this host's own. This kit cannot name it, and nothing here",
                "keeps it out: give the forward a `source` (127.0.0.2 is the default for a",
                "127.x target), or use proxy_protocol where the server reads it.",
            ]
        else:
            said = [
                "has an IPv6 target: Linux has one IPv6 loopback address, so its connections",
                "come from ::1, this host's own. This kit cannot name another, and nothing",
                "here keeps it out: give the forward a 127.x target (reached from 127.0.0.2),",
                "or a `source` of its own, or use proxy_protocol where the server reads it.",
            ]
        lines.append(f"{mark} {tunnel.name}/{forward.name} {said[0]}")
        lines += [f"{mark}   {line}" for line in said[1:]]
    return lines


def sources(ways: list[tuple[Tunnel, Forward]]) -> list[str]:
    """The forwards' source addresses, each once, in config order."""
    return list(dict.fromkeys(f.source_address for _, f in ways if f.source_address is not None))


def _cidr(address: str) -> str:
    ip = ipaddress.ip_address(address)
    return f"[{ip}]/128" if ip.version == 6 else f"{ip}/32"


def postfix_main(config: Config) -> str:
    """main.cf's `mynetworks`: this host's own loopback addresses, none of the sources."""
    ways = forwards_of(config, "smtp")
    taken = set(sources(ways))
    own = [_cidr(a) for a in _OWN if a not in taken]
    lines = [
        "# Postfix main.cf line written by tunnelkeeper for the internal mail server.",
        "# Connections through the SSH tunnel reach this server from the addresses below; they",
        "# come from anyone on the relay (somebody else's host), never from this host itself:",
        *(f"#   {_way(t, f)}" for t, f in ways),
        *_unnamed(ways, "#"),
        "# Postfix relays for every client in mynetworks (permit_mynetworks in",
        "# smtpd_relay_restrictions), and Debian's default, 127.0.0.0/8, holds 127.0.0.2: so",
        "# mynetworks names this host's own loopback addresses one by one and no source above.",
        "# Add your own networks to it (never one that holds a source), then",
        f"#   postconf -e 'mynetworks = {' '.join(own)}' && postfix reload",
        "# `postconf mynetworks` shows it; `tunnelkeeper check` proves it through the relay.",
        f"mynetworks = {' '.join(own)}",
    ]
    return "\n".join(lines) + "\n"


def proxied(config: Config) -> list[tuple[Tunnel, Forward]]:
    """The smtp forwards that begin each connection with a PROXY protocol header."""
    return [(t, f) for t, f in forwards_of(config, "smtp") if f.proxy_protocol is not None]


def postfix_master(config: Config) -> str:
    """master.cf services that read the PROXY header, one per target of a proxied forward."""
    ways = proxied(config)
    lines = [
        "# Postfix master.cf lines written by tunnelkeeper for the internal mail server.",
        "# These smtp forwards begin each connection with a PROXY protocol header that names",
        "# the relay as the client, so this smtpd logs and judges the relay, not this host:",
        *(f"#   {_way(t, f)}, PROXY {f.proxy_protocol}" for t, f in ways),
        "# Each target gets an smtpd of its own that reads the header (Postfix 2.10 or later;",
        "# version 2 of the header needs Postfix 3.5). Its port must be one no other service",
        "# holds: the stock `smtp inet` line listens on port 25 of every address, so give the",
        "# forward a target port of its own (127.0.0.1:10025, say). Append these lines to",
        "# master.cf, then `postfix reload`; `postconf -M` lists the service, `postconf -P` its",
        "# -o setting.",
    ]
    for target in dict.fromkeys(str(f.target) for _, f in ways):
        lines += [
            f"{target}  inet  n  -  -  -  -  smtpd",
            "  -o smtpd_upstream_proxy_protocol=haproxy",
        ]
    return "\n".join(lines) + "\n"


def _access_key(address: str) -> str:
    ip = ipaddress.ip_address(address)
    return f"Connect:IPv6:{ip}" if ip.version == 6 else f"Connect:{ip}"


def sendmail_access(config: Config) -> str:
    """Access-map lines that keep the tunnel's sources from relaying under `Connect:127 RELAY`."""
    ways = forwards_of(config, "smtp")
    keys = [_access_key(s) for s in sources(ways)]
    width = max((len(k) for k in keys), default=0)
    lines = [
        "# sendmail access-map lines written by tunnelkeeper for the internal mail server.",
        "# Connections through the SSH tunnel reach this server from the addresses below; they",
        "# come from anyone on the relay (somebody else's host), never from this host itself:",
        *(f"#   {_way(t, f)}" for t, f in ways),
        *_unnamed(ways, "#"),
        "# sendmail.cf as it comes relays for 127.0.0.1 and ::1 only, so it does not relay for",
        "# them. An access map that trusts all of 127.0.0.0/8 does: Debian's /etc/mail/access",
        "# has `Connect:127 RELAY`. The lines below are more specific, so they win for the",
        "# tunnel's sources: OK takes their mail for this host's own domains and grants no",
        "# relaying. Add them to /etc/mail/access and rebuild the map (Debian: make -C",
        "# /etc/mail; elsewhere: makemap hash /etc/mail/access < /etc/mail/access).",
        *(f"{key:<{width}}  OK" for key in keys),
    ]
    return "\n".join(lines) + "\n"


def named_acl(config: Config) -> str:
    """BIND's `acl "tunnelkeeper"` of the dns forwards' sources, and where to use it."""
    ways = forwards_of(config, "dns")
    zones = list(dict.fromkeys(z for _, f in ways for z in f.zones))
    members = sources(ways) or ["none"]
    lines = [
        "// BIND lines written by tunnelkeeper for the internal name server (the primary).",
        "// Connections through the SSH tunnel reach this server from the addresses in the ACL",
        "// below; they come from anyone on the relay (somebody else's host), never from this",
        "// host itself:",
        *(f"//   {_way(t, f)}" for t, f in ways),
        *_unnamed(ways, "//"),
        "// Include this file near the top of named.conf, before what uses the ACL:",
        '//   include "/etc/bind/named.conf.tunnelkeeper-acl";',
        "// and use it:",
        "// - in each zone the relay serves as secondary, so that its transfers come through",
        f"//   (beside the addresses already there): {', '.join(zones)}",
        "//     allow-transfer { tunnelkeeper; };",
        "// - first in allow-recursion and allow-query-cache (in options, and in every view that",
        "//   sets them), so the tunnel never gets recursion or the cache: BIND's defaults are",
        "//   { localnets; localhost; }, and localnets holds all of 127.0.0.0/8:",
        "//     allow-recursion { !tunnelkeeper; localnets; localhost; };",
        "//     allow-query-cache { !tunnelkeeper; localnets; localhost; };",
        "// - first in the match-clients of every internal view:",
        '//     view "internal" { match-clients { !tunnelkeeper; localnets; }; ... };',
        "// tunnelkeeper's dns filter passes only queries for names at or below the forward's",
        "// zones, but it cannot tell the two faces of a split-horizon zone apart: when a zone",
        "// the relay serves also has an internal view, only match-clients keeps its internal",
        "// face from the tunnel. Check: named-checkconf; then `tunnelkeeper check`.",
        'acl "tunnelkeeper" {',
        *(f"\t{member};" for member in members),
        "};",
    ]
    return "\n".join(lines) + "\n"
