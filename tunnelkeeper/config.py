"""Configuration: pydantic models of the TOML file and `load(path)`; data only, validated once."""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
import unicodedata
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from .errors import ConfigError

# inf would silently mean "never": no keepalive verdict, no connect timeout, an endless drain.
Seconds = Annotated[float, Field(strict=True, ge=0, allow_inf_nan=False)]
PositiveSeconds = Annotated[float, Field(strict=True, gt=0, allow_inf_nan=False)]
Port = Annotated[int, Field(strict=True, ge=1, le=65535)]
# pydantic matches `pattern` with its Rust engine, where "$" is the very end (no newline).
Name = Annotated[str, Field(strict=True, pattern=r"^[a-z0-9][a-z0-9_-]*$", max_length=64)]
Service = Literal["smtp", "dns", "tcp"]
HostKeyPolicy = Literal["strict", "accept-new"]

# Always matched whole (fullmatch): "$" in re.match also accepts a trailing newline.
_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")
_HOSTNAME = re.compile(r"[A-Za-z0-9.-]{1,253}")
# An OpenSSH pattern-list entry (from="..."): host names, addresses, CIDR, wildcards, negation.
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


FilePath = Annotated[Path, AfterValidator(_no_nul)]
Argv = tuple[Annotated[str, AfterValidator(_no_nul)], ...]


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


class Endpoint(_Model):
    """An address:port pair; `str()` gives it back in the canonical `host:port` form."""

    host: str
    port: Port

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

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


def _domain(value: str, what: str) -> str:
    name = value.strip().lower().rstrip(".")
    if name.startswith("."):
        raise ValueError(f"{value!r}: give the {what} without a leading dot (see 'subdomains')")
    labels = name.split(".")
    if len(name) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        raise ValueError(f"{value!r} is not a valid {what}")
    return name


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


class Defaults(TunnelSettings):
    """`[defaults]`: the tunnel settings plus per-tunnel fields that are often shared."""

    port: Port | None = None
    user: str | None = None
    identity: FilePath | None = None
    known_hosts: FilePath | None = None
    host_key_policy: HostKeyPolicy | None = None
    standby: bool | None = None


class Forward(_Model):
    """One `[[tunnel.forward]]`: a listen on the relay handed to a target on this host."""

    # Declared first so that the listen validator below can see it.
    allow_public_listen: bool = False
    name: Name
    service: Service = "tcp"
    listen: Endpoint
    target: Endpoint
    domains: tuple[str, ...] = ()
    subdomains: bool = True
    zones: tuple[str, ...] = ()
    # Postfix's default_process_limit: as many SMTP sessions as a stock MTA serves at once.
    max_connections: Annotated[int, Field(strict=True, ge=1, le=100_000)] = 100

    @field_validator("target", mode="before")
    @classmethod
    def _target(cls, value: object) -> Endpoint:
        return parse_endpoint(value)

    @field_validator("listen", mode="before")
    @classmethod
    def _listen(cls, value: object, info: ValidationInfo) -> Endpoint:
        listen = parse_endpoint(value)
        if not listen.is_loopback and not info.data.get("allow_public_listen", False):
            raise ValueError(
                f"{listen} is not a loopback address: the relay would expose this port to the "
                "network; set allow_public_listen = true if that is intended"
            )
        return listen

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
        return self


class Tunnel(TunnelSettings):
    """One `[[tunnel]]`: an SSH connection to a relay and the forwards it holds."""

    name: Name
    host: Annotated[str, Field(strict=True, min_length=1, max_length=253)]
    port: Port = 22
    user: Annotated[str, Field(strict=True, pattern=r"^[A-Za-z0-9._][A-Za-z0-9._-]*$")]
    identity: FilePath = Path("keys/tunnelkeeper_rsa")
    known_hosts: FilePath = Path("keys/known_hosts")
    host_key_policy: HostKeyPolicy = "strict"
    standby: bool = False
    from_: tuple[str, ...] = Field(default=(), alias="from")
    forward: tuple[Forward, ...] = Field(min_length=1)

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @field_validator("host", mode="after")
    @classmethod
    def _host(cls, value: str) -> str:
        if not _HOSTNAME.fullmatch(value) and not _is_ip(value):
            raise ValueError(f"{value!r} is not a host name or address")
        return value.lower()

    @field_validator("from_", mode="after")
    @classmethod
    def _from(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for entry in value:
            if not _FROM_PATTERN.fullmatch(entry):
                raise ValueError(
                    f"{entry!r} is not an OpenSSH pattern list (host names, addresses, "
                    "address/bits, *, ?, ! and commas)"
                )
        return value

    @model_validator(mode="after")
    def _unique_forwards(self) -> Tunnel:
        _unique([f.name for f in self.forward], "forward name")
        _unique([str(f.listen) for f in self.forward], "listen address")
        return self

    @property
    def relay(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.user}@{host}:{self.port}"

    def settings(self) -> TunnelSettings:
        return TunnelSettings(**{k: getattr(self, k) for k in TunnelSettings.model_fields})


LogLevel = Literal["debug", "info", "warning", "error"]


class SupervisorSettings(_Model):
    """`[supervisor]`: process-wide settings."""

    control_socket: FilePath | None = None
    log_level: LogLevel = "info"
    allow_root: bool = False
    shutdown_grace: Seconds = 10.0
    # Declared before metrics_listen so that its validator can see it.
    allow_public_metrics: bool = False
    metrics_listen: Endpoint | None = None
    metrics_textfile: FilePath | None = None
    on_down: Argv = ()
    on_up: Argv = ()
    alert_after: Seconds = 60.0
    history: bool = True
    history_path: FilePath | None = None
    history_days: Annotated[int, Field(strict=True, ge=1, le=36500)] = 90

    @field_validator("metrics_listen", mode="before")
    @classmethod
    def _metrics(cls, value: object, info: ValidationInfo) -> Endpoint | None:
        if value is None:
            return None
        listen = parse_endpoint(value)
        if not listen.is_loopback and not info.data.get("allow_public_metrics", False):
            raise ValueError(
                f"{listen} is not a loopback address: anyone who can reach it would read the "
                "tunnels' state; set allow_public_metrics = true if that is intended"
            )
        return listen

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
        return self

    def tunnel_named(self, name: str) -> Tunnel:
        for tunnel in self.tunnel:
            if tunnel.name == name:
                return tunnel
        raise ConfigError(f"no tunnel named {name!r}", path=str(self.path), key="tunnel")

    @property
    def control_socket(self) -> Path:
        return self.supervisor.control_socket or default_control_socket()


def _is_ip(value: str) -> bool:
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


def find_config(
    explicit: str | os.PathLike[str] | None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> Path:
    """The config path by SPEC §2's order: -c, $TUNNELKEEPER_CONFIG, ./tunnelkeeper.toml, XDG.

    Raises ConfigError when none of them exists.
    """
    env = os.environ if env is None else env
    if explicit:
        return Path(explicit)
    if env.get("TUNNELKEEPER_CONFIG"):
        return Path(env["TUNNELKEEPER_CONFIG"])
    local = (cwd or Path.cwd()) / CONFIG_NAME
    if local.exists():
        return local
    xdg = Path(env.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    candidate = xdg / "tunnelkeeper" / "config.toml"
    if candidate.exists():
        return candidate
    raise ConfigError(
        f"no configuration found: give -c PATH, set TUNNELKEEPER_CONFIG, or create "
        f"./{CONFIG_NAME} or {candidate}"
    )


def load(path: str | os.PathLike[str]) -> Config:
    """Read and validate the TOML file at `path`.

    Raises ConfigError naming the file, the key path and what is wrong.
    """
    file = Path(path)
    try:
        raw = tomllib.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError("file not found", path=str(file)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read: {exc}", path=str(file)) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"not valid TOML: {exc}", path=str(file)) from None
    except RecursionError:  # tomllib recurses once per nested array or inline table
        raise ConfigError(
            "not valid TOML: arrays or tables nested too deeply", path=str(file)
        ) from None
    return from_dict(raw, file)


def from_dict(raw: Mapping[str, Any], file: Path) -> Config:
    """Validate an already parsed document as if read from `file`."""
    base = file.resolve().parent
    if "path" in raw:  # Config.path is where the file was read from; it is no setting
        raise ConfigError("unknown key", path=str(file), key="path")
    try:
        defaults = Defaults.model_validate(raw.get("defaults", {}))
    except ValidationError as exc:
        raise _config_error(exc, str(file), prefix=("defaults",)) from None
    inherited = defaults.model_dump(exclude_unset=True)
    data: dict[str, Any] = {k: v for k, v in raw.items()}
    tunnels = raw.get("tunnel")
    if isinstance(tunnels, list):
        data["tunnel"] = [{**inherited, **t} if isinstance(t, dict) else t for t in tunnels]
    try:
        config = Config.model_validate({**data, "path": file.resolve()})
    except ValidationError as exc:
        raise _config_error(exc, str(file)) from None
    return _resolve_paths(config, base)


def _resolve_paths(config: Config, base: Path) -> Config:
    def resolve(p: Path) -> Path:
        return p if p.is_absolute() else base / p

    tunnels = tuple(
        t.model_copy(
            update={"identity": resolve(t.identity), "known_hosts": resolve(t.known_hosts)}
        )
        for t in config.tunnel
    )
    sup = config.supervisor
    paths = ("control_socket", "history_path", "metrics_textfile")
    sup = sup.model_copy(
        update={k: resolve(getattr(sup, k)) for k in paths if getattr(sup, k) is not None}
    )
    return config.model_copy(update={"tunnel": tunnels, "supervisor": sup})


def _config_error(exc: ValidationError, file: str, prefix: tuple[str, ...] = ()) -> ConfigError:
    lines = []
    first_key = None
    errors = exc.errors(include_url=False)
    deeper = {tuple(e["loc"][:n]) for e in errors for n in range(len(e["loc"]))}
    for err in errors:
        if err["type"] == "too_short" and tuple(err["loc"]) in deeper:
            continue  # a list whose items failed also reports itself as short
        key = _key_path(prefix + tuple(err["loc"]))
        if first_key is None:
            first_key = key
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            message = "unknown key"
        elif err["type"] == "missing":
            message = "required key is missing"
        lines.append(f"{key}: {message}" if key else message)
    error = ConfigError("\n  ".join(lines), path=file)
    error.key = first_key
    return error


def _key_path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part == "path":
            continue
        else:
            text = str(part)
            if control_character(text) is not None:  # an unknown key may hold anything
                text = repr(text)
            out += f".{text}" if out else text
    return out.replace("from_", "from")
