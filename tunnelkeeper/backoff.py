"""Backoff between connection attempts: tenacity's exponential curve with jitter, and the rules
of SPEC §5 (immediate retry after a stable connection, host-key faults retried slowly)."""

from __future__ import annotations

import random

import tenacity

from .config import TunnelSettings
from .errors import TunnelkeeperError

JITTER = 0.25  # up to +25 %: clients of one relay should not reconnect in lock-step
SLOW_KINDS = frozenset({"host-key-mismatch", "host-key-unknown", "config"})


class Backoff:
    """Delays for one tunnel's keep-loop."""

    def __init__(self, settings: TunnelSettings, rng: random.Random | None = None) -> None:
        self._settings = settings
        self._curve = tenacity.wait_exponential(
            multiplier=settings.backoff_initial,
            exp_base=settings.backoff_multiplier,
            min=settings.backoff_initial,
            max=settings.backoff_max,
        )
        # tenacity's wait strategies read only attempt_number from the call state.
        self._state = tenacity.RetryCallState(tenacity.AsyncRetrying(), None, (), {})
        self._rng = rng or random.Random()
        self._immediate = False
        self.failures = 0

    def connection_ended(self, up_for: float | None) -> None:
        """Report how long the connection that just ended was up (None: it never came up)."""
        if up_for is not None and up_for >= self._settings.stable_after:
            self.failures = 0
            self._immediate = True

    def next_delay(self, error: TunnelkeeperError) -> float:
        """Seconds to wait before the next attempt."""
        top = self._settings.backoff_max
        if error.error_kind in SLOW_KINDS:
            # Retrying fast cannot fix a host key or a key file, and floods the relay's log.
            self.failures += 1
            return top
        if self._immediate:
            self._immediate = False
            return 0.0
        self.failures += 1
        self._state.attempt_number = self.failures
        base = float(self._curve(self._state))
        return min(top, base * (1 + JITTER * self._rng.random()))
