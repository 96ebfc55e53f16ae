"""Process limits: the descriptor ceiling raised at start, and a reserve the forwards never
touch, so the control socket, the relay connections and the log always have descriptors."""

from __future__ import annotations

import os
import resource

RESERVE = 64  # descriptors kept for everything that is not a forwarded connection


class DescriptorBudget:
    """How many forwarded connections (one local socket each) the process may hold at once."""

    def __init__(self) -> None:
        self.limit: int | None = None  # None: no ceiling known, do not count

    def set_limit(self, soft_limit: int, in_use: int) -> None:
        self.limit = max(0, soft_limit - in_use - RESERVE)

    def allows(self, open_now: int) -> bool:
        return self.limit is None or open_now < self.limit


BUDGET = DescriptorBudget()


def raise_nofile() -> tuple[int, int]:
    """Raise RLIMIT_NOFILE's soft limit to the hard one and size BUDGET; returns (soft, hard).

    A limit we may not raise is used as it is: the budget then simply starts lower.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    BUDGET.set_limit(soft, _open_descriptors())
    return soft, hard


def _open_descriptors() -> int:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return 16  # no /proc: a typical count at start
