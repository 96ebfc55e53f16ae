"""Frozen snapshots of the supervisor's state: all that the dashboard, control socket and
sd_notify ever read. `SupervisorStatus.to_json()` is what `status --json` prints; `from_json()`
reads it back.

Each field is declared once, in its dataclass: `_to_json` and `_from_json` carry every field
under its own name (dates as ISO 8601, nested snapshots as objects), and a class names only the
fields whose JSON differs from that — a rounded latency, a retry time given as seconds from now,
forwards and locals in lists of their own."""

from __future__ import annotations

import functools
import types
from collections.abc import Iterable
from dataclasses import dataclass, field, fields, is_dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal, TypeVar, get_args, get_origin, get_type_hints

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

_Snapshot = TypeVar("_Snapshot", bound="DataclassInstance")

TunnelState = Literal["connecting", "up", "backoff", "stopped"]
ForwardState = Literal["up", "pending", "refused", "down"]
StandbyState = Literal["ready", "connecting", "off"]


def refused_summary(forwards: Iterable[ForwardStatus]) -> str | None:
    """`name: why; …` for the forwards the relay refused; None when none was."""
    return "; ".join(f"{f.name}: {f.error}" for f in forwards if f.state == "refused") or None


def utcnow() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def _plain(value: Any) -> Any:
    """One field's value as JSON has it."""
    if isinstance(value, datetime):
        return value.isoformat()
    if is_dataclass(value) and hasattr(value, "to_json"):
        return value.to_json()
    return value


def _to_json(snapshot: DataclassInstance, **instead: dict[str, Any]) -> dict[str, Any]:
    """Every field of `snapshot` under its own name, in declared order; `instead` gives, for a
    field, the keys written in its place (none: the field is not in the JSON)."""
    out: dict[str, Any] = {}
    for f in fields(snapshot):
        if f.name in instead:
            out.update(instead[f.name])
        else:
            out[f.name] = _plain(getattr(snapshot, f.name))
    return out


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return get_type_hints(cls)


def _typed(hint: Any, value: Any) -> Any:
    """A JSON value back as the field's type (ISO 8601 to datetime, an object to a snapshot);
    TypeError when it is not of that type, so a malformed reply fails here, not later."""
    kinds = get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    for kind in kinds:
        if value is None and kind is type(None):
            return None
        if kind is datetime and isinstance(value, str):
            when = datetime.fromisoformat(value)
            if when.tzinfo is None:
                raise TypeError(f"{value!r} has no UTC offset")
            return when
        if is_dataclass(kind) and isinstance(value, dict) and hasattr(kind, "from_json"):
            return kind.from_json(value)
        if get_origin(kind) is Literal and isinstance(value, str) and value in get_args(kind):
            return value
        if kind is float and isinstance(value, int | float) and not isinstance(value, bool):
            return value
        if kind in (int, str, bool) and type(value) is kind:
            return value
    raise TypeError(f"{value!r} is not {hint}")


def _object(data: Any) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise TypeError(f"expected a JSON object, not {data!r:.40}")
    return data


def _list(data: Any) -> list[Any]:
    if not isinstance(data, list):
        raise TypeError(f"expected a JSON array, not {data!r:.40}")
    return data


def _from_json(cls: type[_Snapshot], data: dict[str, Any], **given: Any) -> _Snapshot:
    """`cls` from its JSON object: each field under its own name (absent: its default), those
    in `given` as given."""
    hints = _hints(cls)
    values = {
        f.name: _typed(hints[f.name], data[f.name])
        for f in fields(cls)
        if f.name in _object(data) and f.name not in given
    }
    return cls(**(values | given))


@dataclass(frozen=True)
class ProbeResult:
    """One end-to-end probe. `via` is "relay" (the whole path) or "local" (fallback)."""

    ok: bool
    latency_ms: float | None
    at: datetime
    detail: str
    via: Literal["relay", "local"] = "relay"

    def to_json(self) -> dict[str, Any]:
        latency = None if self.latency_ms is None else round(self.latency_ms, 1)
        return _to_json(self, latency_ms={"latency_ms": latency})

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ProbeResult:
        return _from_json(cls, {"latency_ms": None, "detail": "", **_object(data)})


@dataclass(frozen=True)
class FlushResult:
    """The relay MTA's answer to the last ETRN of an smtp forward (`reply` escaped)."""

    at: datetime
    ok: bool
    reply: str

    def to_json(self) -> dict[str, Any]:
        return _to_json(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FlushResult:
        return _from_json(cls, data)


@dataclass(frozen=True)
class ForwardStatus:
    name: str
    service: str
    listen: str
    target: str
    state: ForwardState = "pending"
    connections_active: int = 0
    connections_total: int = 0
    bytes_in: int = 0  # relay -> target
    bytes_out: int = 0  # target -> relay
    connections_refused: int = 0  # turned away at max_connections or short of descriptors
    probe: ProbeResult | None = None
    error: str | None = None  # why it is refused or down, for people
    since: datetime | None = None
    availability_24h: float | None = None  # percent, from the history database; None: unknown
    direction: Literal["forward", "local"] = "forward"  # local: this host listens, relay dials
    source: str | None = None  # the address connections to the target come from; None: kernel's
    refused_queries: int = 0  # dns: queries answered REFUSED here, not for the forward's zones
    last_flush: FlushResult | None = None  # smtp: the relay MTA's answer to the last ETRN
    etrn_accepted: int = 0  # smtp: ETRNs the relay's MTA accepted (one per domain)
    etrn_refused: int = 0  # ... it refused (500/502 unknown command, 458/459, ...)
    etrn_unreachable: int = 0  # ... that could not be asked (no channel, no answer)

    @property
    def healthy(self) -> bool:
        """Up, and the last probe (if any) got through."""
        return self.state == "up" and (self.probe is None or self.probe.ok)

    @property
    def failing(self) -> bool:
        """Up on the relay, yet the last probe did not get through."""
        return self.state == "up" and self.probe is not None and not self.probe.ok

    def reason(self) -> str | None:
        """Why this forward is not healthy, for people; None when it is."""
        if self.healthy:
            return None
        if self.failing and self.probe is not None:
            return self.error or f"probe failed: {self.probe.detail}"
        return self.error or self.state

    def to_json(self) -> dict[str, Any]:
        return _to_json(self, direction={})  # said by the list it is in: forwards or local

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ForwardStatus:
        return _from_json(cls, data)


@dataclass(frozen=True)
class TunnelStatus:
    name: str
    relay: str
    state: TunnelState = "connecting"
    since: datetime | None = None
    connects: int = 0
    next_retry_at: datetime | None = None
    error_kind: str | None = None
    last_error: str | None = None
    cipher: str | None = None
    standby: StandbyState = "off"
    relay_version: str | None = None  # the relay's SSH identification string, escaped
    internal_errors: int = 0  # bugs that ended one of this tunnel's tasks
    forwards: tuple[ForwardStatus, ...] = ()  # the forwards, then the locals (see direction)

    def next_retry_in(self, now: datetime | None = None) -> float | None:
        if self.next_retry_at is None:
            return None
        return max(0.0, round((self.next_retry_at - (now or datetime.now(UTC))).total_seconds(), 1))

    def to_json(self, now: datetime | None = None) -> dict[str, Any]:
        return _to_json(
            self,
            next_retry_at={"next_retry_in": self.next_retry_in(now)},
            forwards={
                "forwards": [f.to_json() for f in self.forwards if f.direction == "forward"],
                "local": [f.to_json() for f in self.forwards if f.direction == "local"],
            },
        )

    @classmethod
    def from_json(cls, data: dict[str, Any], now: datetime | None = None) -> TunnelStatus:
        retry = _typed(float | None, _object(data).get("next_retry_in"))
        now = now or datetime.now(UTC)
        forwards = [ForwardStatus.from_json(f) for f in _list(data.get("forwards", []))]
        local = [
            ForwardStatus.from_json(_object(f) | {"direction": "local"})
            for f in _list(data.get("local", []))
        ]
        return _from_json(
            cls,
            data,
            next_retry_at=None if retry is None else now + timedelta(seconds=float(retry)),
            forwards=(*forwards, *local),
        )


@dataclass(frozen=True)
class SupervisorStatus:
    pid: int
    started: datetime
    config: str
    tunnels: tuple[TunnelStatus, ...] = field(default=())
    internal_errors: int = 0  # bugs in the supervisor's own services (metrics, alerts, ...)

    @property
    def forwards(self) -> tuple[ForwardStatus, ...]:
        return tuple(f for t in self.tunnels for f in t.forwards)

    @property
    def healthy(self) -> int:
        """How many forwards are up with their last probe through."""
        return sum(1 for f in self.forwards if f.healthy)

    @property
    def tunnels_up(self) -> int:
        return sum(1 for t in self.tunnels if t.state == "up")

    def exit_code(self) -> int:
        """Monitoring-plugin convention: 0 all forwards up, 1 some down, 2 none up."""
        healthy = self.healthy
        if self.forwards and healthy == len(self.forwards):
            return 0
        return 1 if healthy else 2

    def summary(self) -> str:
        """One line for sd_notify STATUS= and log lines; changes only when health does."""
        forwards, up = self.forwards, self.tunnels_up
        text = (
            f"{self.healthy}/{len(forwards)} forwards healthy, {up}/{len(self.tunnels)} tunnels up"
        )
        problems: list[str] = []
        for tunnel in self.tunnels:
            if tunnel.state != "up":
                kind = f" ({tunnel.error_kind})" if tunnel.error_kind else ""
                problems.append(f"{tunnel.name} {tunnel.state}{kind}")
                continue
            for fwd in tunnel.forwards:
                if not fwd.healthy:
                    state = "failing" if fwd.failing else fwd.state
                    problems.append(f"{tunnel.name}/{fwd.name} {state}")
        if problems:
            more = f" +{len(problems) - 3} more" if len(problems) > 3 else ""
            text += "; " + ", ".join(problems[:3]) + more
        return text

    def to_json(self, now: datetime | None = None) -> dict[str, Any]:
        return {
            "supervisor": _to_json(self, tunnels={}),
            "tunnels": [t.to_json(now) for t in self.tunnels],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SupervisorStatus:
        tunnels = tuple(TunnelStatus.from_json(t) for t in _list(_object(data).get("tunnels", [])))
        return _from_json(cls, data["supervisor"], tunnels=tunnels)
