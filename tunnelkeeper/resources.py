"""The one shape of every resource: an async context manager that starts on entry and whose
exit is `close()` then `await wait_closed()` (the control socket, a relay connection, the
embedded relay)."""

from __future__ import annotations

import abc
from typing import Self


class Resource(abc.ABC):
    """Subclasses say how to close; `start()` is for those that open in a step of their own."""

    async def start(self) -> None:
        """Open what `__init__` could not (a listening socket, say). Nothing by default."""
        return None  # a hook with a default, not an abstract method

    @abc.abstractmethod
    def close(self) -> None:
        """Start closing; never blocks."""

    @abc.abstractmethod
    async def wait_closed(self) -> None:
        """Return once everything `close()` began is closed."""

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()
        await self.wait_closed()
