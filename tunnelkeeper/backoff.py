"""Every rule of the pause before a tunnel reconnects, in one tenacity wait strategy.

In the order they are asked:
  1. the connection that just ended had been up stable_after: reconnect at once, and the curve
     starts over (the next failure waits backoff_initial again);
  2. a standby connection is ready: no pause, the forwards move onto it;
  3. a fault a quick retry cannot mend (host key, key file, config): the cap at once;
  4. else exponential from backoff_initial by backoff_multiplier up to backoff_max.
Every pause but 1 and 2 is jittered. The keep-loop runs `tenacity.AsyncRetrying(wait=this)`
for as long as the tunnel lives.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import tenacity

from .config import TunnelSettings

# Up to +25 % on the curve: clients of one relay should not reconnect in lock-step. At the cap
# the jitter goes below it instead (backoff_max / 1.25 up to backoff_max), so it never ends.
JITTER = 0.25
SLOW_KINDS = frozenset({"host-key-mismatch", "host-key-unknown", "host-key-revoked", "config"})


class TunnelBackoff(tenacity.wait.wait_base):
    """The tunnel's pause before its next attempt (a tenacity wait strategy)."""

    def __init__(
        self,
        settings: TunnelSettings,
        *,
        up_for: Callable[[], float | None] = lambda: None,
        standby_ready: Callable[[], bool] = lambda: False,
        rng: random.Random | None = None,
    ) -> None:
        self._settings = settings
        self._up_for = up_for  # how long the connection that just ended was up (None: never)
        self._standby_ready = standby_ready
        self._rng = rng or random.Random()
        self._curve_start = 0  # the attempt after which the current curve began

    def restarted(self, retry_state: tenacity.RetryCallState) -> bool:
        """The failure just seen ended a stable connection: the curve starts over."""
        return self._curve_start == retry_state.attempt_number

    def retry_number(self, retry_state: tenacity.RetryCallState) -> int:
        """Which retry of the current curve comes next (1 after its first failure)."""
        return retry_state.attempt_number - self._curve_start

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        settings = self._settings
        up_for = self._up_for()
        if up_for is not None and up_for >= settings.stable_after:
            self._curve_start = retry_state.attempt_number
            return 0.0
        if self._standby_ready():
            return 0.0
        outcome = retry_state.outcome
        error = outcome.exception() if outcome is not None else None
        if getattr(error, "error_kind", None) in SLOW_KINDS:
            # Retrying fast cannot fix a host key or a key file, and floods the relay's log.
            base = settings.backoff_max
        else:
            base = self._curve(self.retry_number(retry_state))
        capped = min(base, settings.backoff_max / (1 + JITTER))
        return capped * (1 + JITTER * self._rng.random())

    def _curve(self, retry: int) -> float:
        settings = self._settings
        try:
            grown = settings.backoff_initial * settings.backoff_multiplier ** (retry - 1)
        except OverflowError:  # days of failures: long past the cap
            return settings.backoff_max
        return max(settings.backoff_initial, min(grown, settings.backoff_max))
