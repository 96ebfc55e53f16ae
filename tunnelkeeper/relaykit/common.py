"""What the relay-kit generators share: choosing tunnels, mail routes and address spellings."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal, get_args

from ..config import Config, Forward, Tunnel
from ..errors import ChooseTunnel, ConfigError

SshServer = Literal["openssh", "dropbear"]
SSH_SERVERS: tuple[SshServer, ...] = get_args(SshServer)


def select_tunnels(config: Config, name: str | None = None) -> tuple[Tunnel, ...]:
    """Every tunnel, or only the one called `name` (ConfigError when there is none)."""
    return config.tunnel if name is None else (config.tunnel_named(name),)


def forwards_of(
    config: Config, service: str, name: str | None = None
) -> list[tuple[Tunnel, Forward]]:
    """The forwards of one service, in config order, with the tunnel each belongs to."""
    return [
        (tunnel, forward)
        for tunnel in select_tunnels(config, name)
        for forward in tunnel.forward
        if forward.service == service
    ]


def is_ipv6(host: str) -> bool:
    return ":" in host


def origin(tunnel: Tunnel, forward: Forward) -> str:
    """A one-line `#` comment naming where a group of lines comes from."""
    return f"{tunnel.name}/{forward.name}: {forward.listen} on {tunnel.relay} -> {forward.target}"


@dataclass(frozen=True)
class Route:
    """One mail-routing key: a domain ("example.org") or all its subdomains (".example.org")."""

    key: str
    host: str
    port: int
    tunnel: Tunnel
    forward: Forward

    @property
    def domain(self) -> str:
        return self.key.lstrip(".")


def mail_routes(config: Config, name: str | None = None) -> tuple[Route, ...]:
    """Routes for every smtp forward's domains, each domain followed by its subdomain key.

    The same key sent to the same relay-side address by two forwards is written once; sent to two
    different addresses (two relays) it is ChooseTunnel: one tunnel at a time, then.
    Raises ConfigError when no smtp forward has domains.
    """
    candidates = [
        Route(key, forward.listen.host, forward.listen.port, tunnel, forward)
        for tunnel, forward in forwards_of(config, "smtp", name)
        for domain in forward.domains
        for key in ((domain, f".{domain}") if forward.subdomains else (domain,))
    ]
    if not candidates:
        raise ConfigError(
            "no smtp forward with 'domains' in this configuration: nothing to route",
            path=str(config.path),
        )
    return _unique_keys(candidates, config, "mail domain")


def _unique_keys(routes: Iterable[Route], config: Config, what: str) -> tuple[Route, ...]:
    seen: dict[str, Route] = {}
    for route in routes:
        first = seen.get(route.key)
        if first is None:
            seen[route.key] = route
        elif (first.host, first.port) != (route.host, route.port) and first.tunnel is route.tunnel:
            raise ConfigError(  # no --tunnel can help: the tunnel itself says both
                f"{what} {route.key!r} goes to {first.forward.name} and to {route.forward.name} "
                f"of tunnel {route.tunnel.name}, which listen differently; the relay can route it "
                "only one way: keep it in one of them",
                path=str(config.path),
            )
        elif (first.host, first.port) != (route.host, route.port):
            raise ChooseTunnel(
                f"{what} {route.key!r} goes to {first.tunnel.name}/{first.forward.name} and to "
                f"{route.tunnel.name}/{route.forward.name}, which listen differently; one relay "
                "can route it only one way: generate for one tunnel at a time",
                path=str(config.path),
            )
    return tuple(seen.values())


def grouped(routes: Iterable[Route]) -> list[tuple[tuple[Tunnel, Forward], list[Route]]]:
    """Routes grouped by the forward they came from, in first-seen order."""
    groups: dict[tuple[str, str], tuple[tuple[Tunnel, Forward], list[Route]]] = {}
    for route in routes:
        key = (route.tunnel.name, route.forward.name)
        groups.setdefault(key, ((route.tunnel, route.forward), []))[1].append(route)
    return list(groups.values())


def table(rows: Iterable[tuple[str, str]]) -> list[str]:
    """`key  value` lines with the values in one column, as admins keep these maps."""
    rows = list(rows)
    width = max((len(key) for key, _ in rows), default=0)
    return [f"{key:<{width}}  {value}" for key, value in rows]
