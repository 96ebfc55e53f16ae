"""sendmail mailertable: each mail domain to the tunnel mailer and the relay-side listen address."""

from __future__ import annotations

from ..config import Config
from .common import Route, grouped, is_ipv6, mail_routes, origin, table

HEADER = """\
# sendmail mailertable written by tunnelkeeper: mail for these domains goes down the SSH tunnel.
# mailertable has no port syntax (":" separates fallback hosts), so each value names a mailer
# whose A= dials the tunnel port; define those mailers first (tunnelkeeper sendmail-mailer).
# FEATURE(`mailertable') must be in sendmail.mc, and none of these domains in local-host-names.
# Build the map after every change:
#   makemap hash /etc/mail/mailertable < /etc/mail/mailertable
"""


def mailer_name(port: int) -> str:
    """The sendmail mailer that dials relay-side port `port`: one per distinct port."""
    return f"tk{port}"


def host_literal(host: str) -> str:
    """The bracketed host sendmail connects to without an MX lookup."""
    return f"[IPv6:{host}]" if is_ipv6(host) else f"[{host}]"


def value(route: Route) -> str:
    return f"{mailer_name(route.port)}:{host_literal(route.host)}"


def mailertable(config: Config, tunnel: str | None = None) -> str:
    """The mailertable source for every smtp forward's domains (ConfigError if there are none)."""
    lines = [HEADER.rstrip("\n")]
    for (tun, forward), routes in grouped(mail_routes(config, tunnel)):
        lines += ["#", f"# {origin(tun, forward)}"]
        lines += table((route.key, value(route)) for route in routes)
    return "\n".join(lines) + "\n"
