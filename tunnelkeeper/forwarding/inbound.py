"""Forwards (`[[tunnel.forward]]`): the relay listens, and each connection it hands us is
spliced to the forward's target on this host, within max_connections and the descriptor
budget."""

from __future__ import annotations

import logging

from .. import config, ssh
from ..errors import TunnelkeeperError
from .admission import Admission
from .endpoint import ForwarderRuntime
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

    async def accept(self, _orig_host: str, _orig_port: int) -> Splice:
        """A connection arrived on the relay: open the local side.

        Raises ForwardFull past max_connections or the descriptor budget (one log line per
        burst of refusals), TargetUnavailable when the target does not answer.
        """
        self._admission.admit(self.traffic, self._opening)
        splice = Splice(self.traffic)
        self._opening += 1
        try:
            await splice.connect_target(self.cfg.target, TARGET_CONNECT_TIMEOUT)
        except TunnelkeeperError as exc:
            log.warning("forward %s: %s", self.cfg.name, exc)
            raise
        finally:
            self._opening -= 1
        return splice
