"""The published status: the frozen snapshot every reader gets, taken by the supervisor and
amended on the way out with what services add to it (history's availability_24h); and the
`ServiceContext` a service runs with instead of the supervisor itself."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from typing import Any

from .config import Config
from .state import SupervisorStatus

Amender = Callable[[SupervisorStatus], SupervisorStatus]


class Publisher:
    """Holds the last published status; `publish()` takes a fresh one and amends it."""

    def __init__(self, take: Callable[[], SupervisorStatus]) -> None:
        self._take = take
        self._amenders: list[Amender] = []
        self._latest = take()

    def publish(self) -> SupervisorStatus:
        """Take a snapshot now, amend it, and make it what readers get. Event loop only."""
        status = self._take()
        for amend in tuple(self._amenders):
            status = amend(status)
        self._latest = status
        return status

    def latest(self) -> SupervisorStatus:
        """The last published status; safe from any thread."""
        return self._latest

    @property
    def amenders(self) -> tuple[Amender, ...]:
        return tuple(self._amenders)

    @contextlib.contextmanager
    def amending(self, amender: Amender) -> Iterator[None]:
        """Apply `amender` to every status published while the block runs."""
        self._amenders.append(amender)
        try:
            yield
        finally:
            self._amenders.remove(amender)


@dataclass(frozen=True)
class ServiceContext:
    """What a service is given: the published status and what it needs to act on it."""

    published: Callable[[], SupervisorStatus]
    ready: asyncio.Event  # every tunnel had its first attempt
    config: Callable[[], Config]  # the running configuration (a reload replaces it)
    pid: int
    amending: Callable[[Amender], contextlib.AbstractContextManager[None]]


Service = Callable[[ServiceContext], Coroutine[Any, Any, None]]
