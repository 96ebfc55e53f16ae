"""What a forward and a local forward have alike at run time (a forwarder): traffic, state,
last probe, and the snapshot readers get of them."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from .. import config
from ..state import ForwardState, ForwardStatus, ProbeResult, utcnow
from .traffic import ForwardTraffic


class ForwarderRuntime:
    """A forwarder: the live side of one forward (`direction` "forward") or local ("local")."""

    direction: Literal["forward", "local"] = "forward"

    def __init__(self, cfg: config.Forward | config.Local) -> None:
        self.traffic = ForwardTraffic()
        self.state: ForwardState = "down"
        self.error: str | None = None
        self.since: datetime | None = None
        self.probe: ProbeResult | None = None
        self._cfg = cfg

    def set_state(self, state: ForwardState, error: str | None = None) -> None:
        """`since` moves when the forward comes up or stops being up: a forward that goes on
        failing (pending, down, pending…) is down since its first failure."""
        if (state == "up") != (self.state == "up") or self.since is None:
            self.since = utcnow()
        self.state, self.error = state, error

    def snapshot(self) -> ForwardStatus:
        c, cfg = self.traffic, self._cfg
        return ForwardStatus(
            name=cfg.name,
            service=cfg.service,
            listen=str(cfg.listen),
            target=str(cfg.target),
            state=self.state,
            connections_active=c.active,
            connections_total=c.total,
            bytes_in=c.bytes_in,
            bytes_out=c.bytes_out,
            connections_refused=c.refused,
            probe=self.probe,
            error=self.error,
            since=self.since,
            direction=self.direction,
            source=cfg.source_address if isinstance(cfg, config.Forward) else None,
            refused_queries=0 if c.dns is None else c.dns.refused,
        )
