"""Frozen snapshots of the supervisor's state: all that the dashboard, control socket and
sd_notify ever read. `SupervisorStatus.to_json()` is what `status --json` prints; `from_json()`
reads it back."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

TunnelState = Literal["connecting", "up", "backoff", "stopped"]
ForwardState = Literal["up", "pending", "refused", "down"]
StandbyState = Literal["ready", "connecting", "off"]


def refused_summary(forwards: Iterable[ForwardStatus]) -> str | None:
    """`name: why; …` for the forwards the relay refused; None when none was."""
    return "; ".join(f"{f.name}: {f.error}" for f in forwards if f.state == "refused") or None


def utcnow() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _dt(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


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
        return {
            "ok": self.ok,
            "latency_ms": latency,
            "at": _iso(self.at),
            "detail": self.detail,
            "via": self.via,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ProbeResult:
        return cls(
            ok=bool(data["ok"]),
            latency_ms=data.get("latency_ms"),
            at=_dt(data["at"]) or utcnow(),
            detail=str(data.get("detail", "")),
            via=data.get("via", "relay"),
        )


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
        return {
            "name": self.name,
            "service": self.service,
            "listen": self.listen,
            "target": self.target,
            "state": self.state,
            "connections_active": self.connections_active,
            "connections_total": self.connections_total,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "connections_refused": self.connections_refused,
            "probe": None if self.probe is None else self.probe.to_json(),
            "error": self.error,
            "since": _iso(self.since),
            "availability_24h": self.availability_24h,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ForwardStatus:
        probe = data.get("probe")
        return cls(
            name=data["name"],
            service=data["service"],
            listen=data["listen"],
            target=data["target"],
            state=data["state"],
            connections_active=data.get("connections_active", 0),
            connections_total=data.get("connections_total", 0),
            bytes_in=data.get("bytes_in", 0),
            bytes_out=data.get("bytes_out", 0),
            connections_refused=data.get("connections_refused", 0),
            probe=None if probe is None else ProbeResult.from_json(probe),
            error=data.get("error"),
            since=_dt(data.get("since")),
            availability_24h=data.get("availability_24h"),
        )


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
    forwards: tuple[ForwardStatus, ...] = ()  # the forwards, then the locals (see direction)
    relay_version: str | None = None  # the relay's SSH identification string, escaped
    internal_errors: int = 0  # bugs that ended one of this tunnel's tasks

    def next_retry_in(self, now: datetime | None = None) -> float | None:
        if self.next_retry_at is None:
            return None
        return max(0.0, round((self.next_retry_at - (now or datetime.now(UTC))).total_seconds(), 1))

    def to_json(self, now: datetime | None = None) -> dict[str, Any]:
        return {
            "name": self.name,
            "relay": self.relay,
            "state": self.state,
            "since": _iso(self.since),
            "connects": self.connects,
            "next_retry_in": self.next_retry_in(now),
            "error_kind": self.error_kind,
            "last_error": self.last_error,
            "cipher": self.cipher,
            "standby": self.standby,
            "relay_version": self.relay_version,
            "internal_errors": self.internal_errors,
            "forwards": [f.to_json() for f in self.forwards if f.direction == "forward"],
            "local": [f.to_json() for f in self.forwards if f.direction == "local"],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any], now: datetime | None = None) -> TunnelStatus:
        retry = data.get("next_retry_in")
        now = now or datetime.now(UTC)
        return cls(
            name=data["name"],
            relay=data["relay"],
            state=data["state"],
            since=_dt(data.get("since")),
            connects=data.get("connects", 0),
            next_retry_at=None if retry is None else now + timedelta(seconds=float(retry)),
            error_kind=data.get("error_kind"),
            last_error=data.get("last_error"),
            cipher=data.get("cipher"),
            standby=data.get("standby", "off"),
            relay_version=data.get("relay_version"),
            internal_errors=data.get("internal_errors", 0),
            forwards=tuple(ForwardStatus.from_json(f) for f in data.get("forwards", []))
            + tuple(
                replace(ForwardStatus.from_json(f), direction="local")
                for f in data.get("local", [])
            ),
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
            "supervisor": {
                "pid": self.pid,
                "started": _iso(self.started),
                "config": self.config,
                "internal_errors": self.internal_errors,
            },
            "tunnels": [t.to_json(now) for t in self.tunnels],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SupervisorStatus:
        sup = data["supervisor"]
        return cls(
            pid=int(sup["pid"]),
            started=_dt(sup["started"]) or utcnow(),
            config=sup["config"],
            internal_errors=sup.get("internal_errors", 0),
            tunnels=tuple(TunnelStatus.from_json(t) for t in data.get("tunnels", [])),
        )
