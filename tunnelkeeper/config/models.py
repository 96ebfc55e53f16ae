"""The pydantic models of the TOML file: data only, validated once."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, ClassVar, Literal

from pydantic import ConfigDict, Field, ValidationInfo, field_validator, model_validator

from ..errors import ConfigError
from .values import (
    Argv,
    Endpoint,
    FilePath,
    Flag,
    FromPatterns,
    Hop,
    HostKeyPolicy,
    Name,
    Port,
    PositiveSeconds,
    Proxy,
    RelayHost,
    Seconds,
    ServiceKind,
    UserName,
    _domain,
    _Model,
    _unique,
    host_port,
    parse_endpoint,
    parse_hops,
    parse_proxy,
)


class TunnelSettings(_Model):
    """Settings a tunnel may override and `[defaults]` may set for every tunnel."""

    keepalive_interval: PositiveSeconds = 5.0
    keepalive_count_max: Annotated[int, Field(strict=True, ge=1, le=1000)] = 3
    connect_timeout: PositiveSeconds = 10.0
    backoff_initial: Seconds = 1.0
    backoff_max: PositiveSeconds = 60.0
    backoff_multiplier: Annotated[float, Field(strict=True, ge=1, allow_inf_nan=False)] = 2.0
    stable_after: Seconds = 30.0
    forward_retry: PositiveSeconds = 2.0
    probe_interval: Seconds = 30.0
    probe_timeout: PositiveSeconds = 10.0

    @model_validator(mode="after")
    def _backoff_order(self) -> TunnelSettings:
        if self.backoff_initial > self.backoff_max:
            raise ValueError("backoff_initial must not be larger than backoff_max")
        return self

    # `jump`, `proxy` and `relay_mta` are declared by each subclass (optional in [defaults],
    # with a default in [[tunnel]]) and parsed here, the same way for both.

    @field_validator("jump", mode="before", check_fields=False)
    @classmethod
    def _jump(cls, value: object) -> tuple[Hop, ...] | None:
        return None if value is None else parse_hops(value)

    @field_validator("proxy", mode="before", check_fields=False)
    @classmethod
    def _proxy(cls, value: object) -> Proxy | None:
        return parse_proxy(value)

    @field_validator("relay_mta", mode="before", check_fields=False)
    @classmethod
    def _relay_mta(cls, value: object) -> Endpoint | None:
        return None if value is None else parse_endpoint(value)


class Defaults(TunnelSettings):
    """`[defaults]`: the tunnel settings plus per-tunnel fields that are often shared."""

    host: RelayHost | None = None
    port: Port | None = None
    user: UserName | None = None
    from_: FromPatterns | None = Field(default=None, alias="from")
    identity: FilePath | None = None
    known_hosts: FilePath | None = None
    host_key_policy: HostKeyPolicy | None = None
    standby: Flag | None = None
    jump: tuple[Hop, ...] | None = None
    proxy: Proxy | None = None
    proxy_auth_file: FilePath | None = None
    passphrase_file: FilePath | None = None
    agent: Flag | None = None
    certificate: FilePath | None = None
    relay_mta: Endpoint | None = None


def _loopback_unless(value: object, info: ValidationInfo, allow: str, exposes: str) -> Endpoint:
    """A listen address on loopback, or anywhere when the setting `allow` (declared before it,
    so that the validator sees it) says so; `exposes` says what a public one would open."""
    listen = parse_endpoint(value)
    if not listen.is_loopback and not info.data.get(allow, False):
        raise ValueError(
            f"{listen} is not a loopback address: {exposes}; set {allow} = true if that is intended"
        )
    return listen


class _Forwarder(_Model):
    """What a forward and a local forward share: a name, a service, a listen that stays on
    loopback unless allowed, a target, and a cap on connections at once."""

    # Declared first so that the listen validator below can see it.
    allow_public_listen: Flag = False
    name: Name
    service: ServiceKind = "tcp"
    listen: Endpoint
    target: Endpoint
    # Postfix's default_process_limit: as many SMTP sessions as a stock MTA serves at once.
    max_connections: Annotated[int, Field(strict=True, ge=1, le=100_000)] = 100

    EXPOSES: ClassVar[str] = "the port would be open to the network"

    @field_validator("target", mode="before")
    @classmethod
    def _target(cls, value: object) -> Endpoint:
        return parse_endpoint(value)

    @field_validator("listen", mode="before")
    @classmethod
    def _listen(cls, value: object, info: ValidationInfo) -> Endpoint:
        return _loopback_unless(value, info, "allow_public_listen", cls.EXPOSES)


class Forward(_Forwarder):
    """One `[[tunnel.forward]]`: a listen on the relay handed to a target on this host."""

    EXPOSES: ClassVar[str] = "the relay would expose this port to the network"
    domains: tuple[str, ...] = ()
    subdomains: Flag = True
    zones: tuple[str, ...] = ()
    notify: Endpoint | None = None  # dns: the relay's named, to NOTIFY of serial changes
    # The address connections to the target come from; None: the default (see source_address).
    source: str | None = None
    proxy_protocol: Literal["v1", "v2"] | None = None
    etrn: Flag | None = None  # smtp: on unless false

    @field_validator("source", mode="before")
    @classmethod
    def _source(cls, value: object) -> str | None:
        return None if value is None else parse_source(value)

    @field_validator("notify", mode="before")
    @classmethod
    def _notify(cls, value: object) -> Endpoint | None:
        return None if value is None else parse_endpoint(value)

    @field_validator("domains", mode="after")
    @classmethod
    def _domains(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(dict.fromkeys(_domain(d, "mail domain") for d in value))

    @field_validator("zones", mode="after")
    @classmethod
    def _zones(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(dict.fromkeys(_domain(z, "zone name") for z in value))

    @model_validator(mode="after")
    def _consistent(self) -> Forward:
        if self.domains and self.service != "smtp":
            raise ValueError("'domains' only applies to service = \"smtp\"")
        if self.zones and self.service != "dns":
            raise ValueError("'zones' only applies to service = \"dns\"")
        if self.service == "dns" and not self.zones:
            raise ValueError("a dns forward needs 'zones' (the first one is probed)")
        if self.notify is not None and self.service != "dns":
            raise ValueError("'notify' only applies to service = \"dns\"")
        if self.proxy_protocol is not None and self.service == "dns":
            raise ValueError("'proxy_protocol' applies to smtp and tcp forwards, not dns")
        if self.etrn is not None and self.service != "smtp":
            raise ValueError("'etrn' only applies to service = \"smtp\"")
        source = self.source_address
        target_family = _family(self.target.host)  # None: a name, resolved per family
        if source is not None and target_family not in (None, _family(source)):
            raise ValueError(
                f"source {source} and target {self.target} are of different address families"
            )
        return self

    @property
    def source_address(self) -> str | None:
        """The local address connections to the target come from; None: the kernel's choice.

        By default a target in 127.0.0.0/8 is reached from 127.0.0.2, so that the internal
        servers never take a tunnelled connection for their own host's (sendmail relays for
        127.0.0.1, BIND's `localhost` ACL matches it). IPv6 has one loopback address, ::1, so
        an IPv6 target is reached from the kernel's choice unless `source` says otherwise.
        """
        if self.source is not None:
            return self.source or None
        return DEFAULT_SOURCE if _in_loopback_v4(self.target.host) else None

    @property
    def flushes(self) -> bool:
        """Whether this forward asks the relay's MTA for its held mail when whole again."""
        return self.service == "smtp" and self.etrn is not False and bool(self.domains)

    @property
    def etrn_arguments(self) -> list[tuple[str, str]]:
        """(domain, what follows ETRN) per domain: with `subdomains`, ETRN's `@domain`,
        "this domain and every domain below it" (sendmail then flushes every recipient whose
        address ends in the domain; `ETRN domain` alone leaves a subdomain's mail held)."""
        return [(d, f"@{d}" if self.subdomains else d) for d in self.domains]


DEFAULT_SOURCE = "127.0.0.2"


def parse_source(value: object) -> str:
    """`source`: an IP address of this host, or "" for the kernel's choice."""
    if not isinstance(value, str):
        raise ValueError('must be a string: an IP address of this host, or "" for the kernel\'s')
    text = value.strip()
    if not text:
        return ""
    try:
        return str(ipaddress.ip_address(text.strip("[]")))
    except ValueError:
        raise ValueError(f"{text!r} is not an IP address (a host name is not accepted)") from None


def _family(host: str) -> int | None:
    try:
        return ipaddress.ip_address(host).version
    except ValueError:
        return None  # a name: resolved at connect time, the kernel decides


def _in_loopback_v4(host: str) -> bool:
    if host == "localhost":  # reached over IPv4 from 127.0.0.2 (the loop skips its ::1)
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return address.version == 4 and address.is_loopback


class Local(_Forwarder):
    """One `[[tunnel.local]]`: a listen on this host whose connections go out through the
    relay to `target` (as the relay sees it): the internal MTA's smarthost, say."""

    EXPOSES: ClassVar[str] = "this host would let the network use the relay through it"


class Tunnel(TunnelSettings):
    """One `[[tunnel]]`: an SSH connection to a relay and the forwards it holds."""

    name: Name
    host: RelayHost
    port: Port = 22
    user: UserName
    identity: FilePath = Path("keys/tunnelkeeper_rsa")
    known_hosts: FilePath = Path("keys/known_hosts")
    host_key_policy: HostKeyPolicy = "strict"
    standby: Flag = False
    from_: FromPatterns = Field(default=(), alias="from")
    jump: tuple[Hop, ...] = ()
    proxy: Proxy | None = None
    proxy_auth_file: FilePath | None = None
    passphrase_file: FilePath | None = None
    agent: Flag = False
    certificate: FilePath | None = None
    relay_mta: Endpoint = Endpoint(host="127.0.0.1", port=25)
    forward: tuple[Forward, ...] = ()
    local: tuple[Local, ...] = ()

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="after")
    def _unique_forwards(self) -> Tunnel:
        if not self.forward and not self.local:
            raise ValueError("a tunnel needs at least one [[tunnel.forward]] or [[tunnel.local]]")
        names = [f.name for f in self.forward] + [lc.name for lc in self.local]
        _unique(names, "forward or local name")
        _unique([str(f.listen) for f in self.forward], "listen address")
        if self.proxy_auth_file is not None and self.proxy is None:
            raise ValueError("'proxy_auth_file' needs 'proxy'")
        return self

    @property
    def relay(self) -> str:
        return f"{self.user}@{host_port(self.host, self.port)}"


LogLevel = Literal["debug", "info", "warning", "error"]


class SupervisorSettings(_Model):
    """`[supervisor]`: process-wide settings."""

    control_socket: FilePath | None = None
    log_level: LogLevel = "info"
    allow_root: Flag = False
    shutdown_grace: Seconds = 10.0
    # Declared before metrics_listen so that its validator can see it.
    allow_public_metrics: Flag = False
    metrics_listen: Endpoint | None = None
    metrics_textfile: FilePath | None = None
    on_down: Argv = ()
    on_up: Argv = ()
    alert_after: Seconds = 60.0
    history: Flag = True
    history_path: FilePath | None = None
    history_days: Annotated[int, Field(strict=True, ge=1, le=36500)] = 90

    @field_validator("metrics_listen", mode="before")
    @classmethod
    def _metrics(cls, value: object, info: ValidationInfo) -> Endpoint | None:
        if value is None:
            return None
        exposes = "anyone who can reach it would read the tunnels' state"
        return _loopback_unless(value, info, "allow_public_metrics", exposes)

    @property
    def history_file(self) -> Path:
        """Where the history database lives: history_path, else under $XDG_STATE_HOME."""
        return self.history_path or default_history_path()


class Config(_Model):
    """The whole validated file. `path` is where it was read from."""

    path: Path
    supervisor: SupervisorSettings = SupervisorSettings()
    defaults: Defaults = Defaults()
    tunnel: tuple[Tunnel, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_tunnels(self) -> Config:
        _unique([t.name for t in self.tunnel], "tunnel name")
        _unique(
            [f"{t.host}:{t.port} {f.listen}" for t in self.tunnel for f in t.forward],
            "listen address on one relay",
        )
        _unique([str(lc.listen) for t in self.tunnel for lc in t.local], "local listen address")
        return self

    def tunnel_named(self, name: str) -> Tunnel:
        for tunnel in self.tunnel:
            if tunnel.name == name:
                return tunnel
        raise ConfigError(f"no tunnel named {name!r}", path=str(self.path), key="tunnel")

    @property
    def control_socket(self) -> Path:
        return self.supervisor.control_socket or default_control_socket()


def default_history_path(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    state = env.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "tunnelkeeper" / "history.db"


def default_control_socket(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    runtime = env.get("XDG_RUNTIME_DIR")
    if runtime:
        return Path(runtime) / "tunnelkeeper" / "control.sock"
    state = env.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "tunnelkeeper" / "control.sock"
