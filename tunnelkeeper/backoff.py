"""The pause before a tunnel reconnects, as a tenacity wait strategy: exponential from
backoff_initial to backoff_max with jitter, the cap at once for faults a quick retry cannot
mend, and no pause at all while a standby connection is ready. The keep-loop drives it with
tenacity.AsyncRetrying; a connection that stayed up stable_after starts a fresh one, so its
first reconnect is immediate and the curve begins again."""

from __future__ import annotations

import random
from collections.abc import Callable

import tenacity

from .config import TunnelSettings

# Up to +25 % on the curve: clients of one relay should not reconnect in lock-step. At the cap
# the jitter goes below it instead (backoff_max / 1.25 up to backoff_max), so it never ends.
JITTER = 0.25
SLOW_KINDS = frozenset({"host-key-mismatch", "host-key-unknown", "host-key-revoked", "config"})


class wait_tunnel(tenacity.wait.wait_base):
    """tenacity's wait_exponential, jittered, with the tunnel's rules on top."""

    def __init__(
        self,
        settings: TunnelSettings,
        spare_ready: Callable[[], bool] = lambda: False,
        rng: random.Random | None = None,
    ) -> None:
        self._max = settings.backoff_max
        self._curve = tenacity.wait_exponential(
            multiplier=settings.backoff_initial,
            exp_base=settings.backoff_multiplier,
            min=settings.backoff_initial,
            max=settings.backoff_max,
        )
        self._spare_ready = spare_ready
        self._rng = rng or random.Random()

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        if self._spare_ready():
            return 0.0  # the forwards move onto the standby at once
        outcome = retry_state.outcome
        error = outcome.exception() if outcome is not None else None
        if getattr(error, "error_kind", None) in SLOW_KINDS:
            # Retrying fast cannot fix a host key or a key file, and floods the relay's log.
            base = self._max
        else:
            base = float(self._curve(retry_state))
        return min(base, self._max / (1 + JITTER)) * (1 + JITTER * self._rng.random())
