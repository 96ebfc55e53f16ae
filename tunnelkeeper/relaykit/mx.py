"""Zone-file MX records: the internal host at preference 0, the relay at 10, names absolute."""

from __future__ import annotations

from ..config import Config, is_domain_name, is_ip
from ..errors import ConfigError
from .common import mail_routes

INTERNAL_PREFERENCE, RELAY_PREFERENCE = 0, 10


def mx_target(name: str, what: str) -> str:
    """`name` as an absolute zone-file name ("relay.example.net."), or ConfigError.

    A name without its final dot is relative in a zone file: `relay.example.net` inside the
    example.org zone means relay.example.net.example.org. Every name written here ends with a
    dot, and a single label (most likely meant relative) is refused rather than guessed.
    """
    host = name.strip().lower().rstrip(".")
    if is_ip(host):
        raise ConfigError(f"{name!r}: an MX target must be a host name, not an address", key=what)
    if not is_domain_name(host):
        raise ConfigError(f"{name!r} is not a valid host name", key=what)
    if "." not in host:
        raise ConfigError(
            f"{name!r}: give the fully qualified name (like {host}.example.org)", key=what
        )
    return f"{host}."


def mx_records(
    config: Config, internal_host: str, relay_host: str, tunnel: str | None = None
) -> str:
    """MX lines for every smtp forward's domain (and a wildcard when subdomains are routed)."""
    internal = mx_target(internal_host, "internal_host")
    relay = mx_target(relay_host, "relay_host")
    routes = mail_routes(config, tunnel)
    owners = [f"*.{r.domain}." if r.key.startswith(".") else f"{r.key}." for r in routes]
    width = max(len(owner) for owner in owners)
    lines = [
        "; MX records written by tunnelkeeper, for the zone of each mail domain.",
        "; Preference 0 is the internal host, which hosts inside the firewall reach directly;",
        "; everyone else falls back to the relay (10), which sends the mail down the SSH tunnel.",
        "; Every name ends with a dot: without it the zone's origin is appended. The targets",
        "; must have A/AAAA records of their own and must not be CNAMEs. A wildcard does not",
        "; cover names that have records of their own: give those their MX records too.",
    ]
    for owner in owners:
        if not owner.startswith("*"):
            lines.append("")  # one paragraph per domain: they often live in different zones
        for preference, target in ((INTERNAL_PREFERENCE, internal), (RELAY_PREFERENCE, relay)):
            lines.append(f"{owner:<{width}}  IN  MX  {preference:>2} {target}")
    return "\n".join(lines) + "\n"
