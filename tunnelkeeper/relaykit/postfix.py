"""Postfix transport(5) lines: each mail domain to smtp:[listen address]:port."""

from __future__ import annotations

from ..config import Config
from .common import Route, grouped, mail_routes, origin, table


def nexthop(route: Route) -> str:
    # Brackets turn off the MX lookup; Postfix writes IPv6 nexthops as [2001:db8::1] too.
    return f"smtp:[{route.host}]:{route.port}"


def relay_domains(config: Config, tunnel: str | None = None) -> str:
    """The value for main.cf's relay_domains, so that the relay accepts this mail at all."""
    return ", ".join(route.key for route in mail_routes(config, tunnel))


def transport(config: Config, tunnel: str | None = None) -> str:
    """The transport map source for every smtp forward's domains."""
    routes = mail_routes(config, tunnel)
    lines = [
        "# Postfix transport(5) written by tunnelkeeper: mail for these domains goes down the",
        "# SSH tunnel. A leading-dot key covers every subdomain. In main.cf:",
        "#   transport_maps = hash:/etc/postfix/transport",
        f"#   relay_domains = {relay_domains(config, tunnel)}",
        "# then: postmap /etc/postfix/transport && postfix reload",
    ]
    for (tun, forward), group in grouped(routes):
        lines += ["#", f"# {origin(tun, forward)}"]
        lines += table((route.key, nexthop(route)) for route in group)
    return "\n".join(lines) + "\n"
