"""Forwards (`[[tunnel.forward]]`): the relay listens, and each connection it hands us is
spliced to the forward's target on this host, within max_connections and the descriptor
budget."""

from __future__ import annotations

import logging

from .. import config, ssh
from ..errors import SourceUnavailable, TunnelkeeperError
from .admission import Admission
from .forwarder import ForwarderRuntime
from .proxyheader import proxy_header
from .splice import Splice

log = logging.getLogger(__name__)

TARGET_CONNECT_TIMEOUT = 10.0


class ForwardRuntime(ForwarderRuntime):
    """The live side of one forward: traffic, state, last probe, its relay listener."""

    def __init__(self, cfg: config.Forward) -> None:
        super().__init__(cfg)
        self.cfg = cfg
        self.local_probes = False  # the relay forbade probe channels; probe the target instead
        self.notified: dict[str, int] = {}  # zone -> serial the relay's named was told of
        self.listener: ssh.Listener | None = None
        self._opening = 0  # channels whose local side is still connecting
        self._admission = Admission(f"forward {cfg.name}", cfg.max_connections)
        self._unbound = 0  # channels refused since `source` last worked
        # The relay's address as this host reached it, for the PROXY header: set by whoever
        # listens on an SSH connection (tunnel, check), from that connection.
        self.relay_address: str | None = None
        if cfg.service == "dns":  # only queries for its zones get through (see dnsgate)
            from .dnsgate import ZonePolicy  # dnspython: loaded only for a dns forward
            from .zonecut import ZoneCuts, primary

            cuts = ZoneCuts(primary(cfg.target, cfg.source_address))
            self.traffic.dns = ZonePolicy(cfg.name, cfg.zones, cuts)

    async def accept(self, _orig_host: str, orig_port: int) -> Splice:
        """A connection arrived on the relay: open the local side, from `source`.

        Raises ForwardFull past max_connections or the descriptor budget (one log line per
        burst of refusals), SourceUnavailable when `source` is not this host's (one log line
        per burst), TargetUnavailable when the target does not answer.
        """
        self._admission.admit(self.traffic, self._opening)
        splice = Splice(self.traffic)
        header = b""
        if self.cfg.proxy_protocol is not None:
            # The relay names the port its local client came from; a relay-made-up one is 0.
            port = orig_port if 0 < orig_port <= 0xFFFF else 0
            header = proxy_header(
                self.cfg.proxy_protocol,
                None if self.relay_address is None else (self.relay_address, port),
                (self.cfg.listen.host, self.cfg.listen.port),
            )
        self._opening += 1
        try:
            await splice.connect_target(
                self.cfg.target, self.cfg.source_address, TARGET_CONNECT_TIMEOUT, header
            )
        except SourceUnavailable as exc:
            self._unbound += 1
            if self._unbound == 1:
                log.error("forward %s: %s", self.cfg.name, exc)
            raise
        except TunnelkeeperError as exc:
            log.warning("forward %s: %s", self.cfg.name, exc)
            raise
        finally:
            self._opening -= 1
        if self._unbound:
            log.info(
                "forward %s: source usable again after %d refusal(s)", self.cfg.name, self._unbound
            )
            self._unbound = 0
        return splice
