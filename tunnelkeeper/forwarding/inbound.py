"""Forwards (`[[tunnel.forward]]`): the relay listens, and each connection it hands us is
spliced to the forward's target on this host, within max_connections and the descriptor
budget."""

from __future__ import annotations

import logging

from .. import config, ssh
from ..errors import ForwardFull, TunnelkeeperError
from .dnsgate import ZonePolicy
from .endpoint import EndpointRuntime
from .limits import BUDGET
from .splice import ForwardTraffic, Splice
from .zonecut import ZoneCuts, primary

log = logging.getLogger(__name__)

TARGET_CONNECT_TIMEOUT = 10.0


class ForwardRuntime(EndpointRuntime):
    """The live side of one forward: traffic, state, last probe, its relay listener."""

    def __init__(self, cfg: config.Forward) -> None:
        super().__init__(cfg)
        self.cfg = cfg
        self.local_probes = False  # the relay forbade probe channels; probe the target instead
        self.notified: dict[str, int] = {}  # zone -> serial the relay's named was told of
        self.listener: ssh.Listener | None = None
        self._opening = 0  # channels whose local side is still connecting
        self._burst = 0  # channels refused since the forward was last below its limit
        if cfg.service == "dns":  # only queries for its zones get through (see dnsgate)
            cuts = ZoneCuts(primary(cfg.target, cfg.source_address))
            self.counters.dns = ZonePolicy(cfg.name, cfg.zones, cuts)

    async def accept(self, _orig_host: str, _orig_port: int) -> Splice:
        """A connection arrived on the relay: open the local side.

        Raises ForwardFull past max_connections or the descriptor budget (one log line per
        burst of refusals), TargetUnavailable when the target does not answer.
        """
        self._admit()
        splice = Splice(self.counters)
        self._opening += 1
        try:
            await splice.connect_target(self.cfg.target, TARGET_CONNECT_TIMEOUT)
        except TunnelkeeperError as exc:
            log.warning("forward %s: %s", self.cfg.name, exc)
            raise
        finally:
            self._opening -= 1
        return splice

    def _admit(self) -> None:
        held = self.counters.active + self._opening
        limit = self.cfg.max_connections
        if held < limit and BUDGET.allows(ForwardTraffic.open_everywhere + self._opening):
            if self._burst:
                log.info(
                    "forward %s: accepting again after refusing %d connection(s)",
                    self.cfg.name,
                    self._burst,
                )
                self._burst = 0
            return
        self.counters.refused += 1
        self._burst += 1
        why = (
            f"{held} connections open (max_connections = {limit})"
            if held >= limit
            else "the process is short of file descriptors"
        )
        if self._burst == 1:
            log.warning("forward %s: refusing new connections: %s", self.cfg.name, why)
        raise ForwardFull(f"forward {self.cfg.name}: {why}")
