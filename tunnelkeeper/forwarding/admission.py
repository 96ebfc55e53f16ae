"""Whether a forwarder takes one more connection: below its max_connections and within the
process's descriptor budget. A burst of refusals is said once, with its real cause, and the
end of the burst once more."""

from __future__ import annotations

import logging

from ..errors import ForwardFull
from .limits import BUDGET
from .traffic import ForwardTraffic

log = logging.getLogger(__name__)


class Admission:
    """The door of one forwarder (`what` says which: "forward smtp", "local out")."""

    def __init__(self, what: str, max_connections: int) -> None:
        self.what = what
        self.max_connections = max_connections
        self._burst = 0  # connections refused since the forwarder was last below its limits

    def admit(self, traffic: ForwardTraffic, opening: int = 0) -> None:
        """Let one more connection in, `opening` others still being set up.

        Raises ForwardFull (counted in `traffic.refused`) past max_connections or the budget.
        """
        held = traffic.active + opening
        limit = self.max_connections
        if held < limit and BUDGET.allows(ForwardTraffic.open_everywhere + opening):
            if self._burst:
                log.info(
                    "%s: accepting again after refusing %d connection(s)", self.what, self._burst
                )
                self._burst = 0
            return
        traffic.refused += 1
        self._burst += 1
        why = (
            f"{held} connections open (max_connections = {limit})"
            if held >= limit
            else "the process is short of file descriptors"
        )
        if self._burst == 1:
            log.warning("%s: refusing new connections: %s", self.what, why)
        raise ForwardFull(f"{self.what}: {why}")
