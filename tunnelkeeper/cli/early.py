"""Stop and reload signals that come before the event loop's own handlers are in place.

Python's default for TERM and HUP is to die at once, and `run` takes a moment to import and to
read its files: from its first moment, a TERM, INT or HUP is noted instead, and the supervisor
acts on it as soon as it runs (stops, or reloads). Signal handlers belong to the process, so
this state is the module's.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any

SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
_noted: list[int] = []
_previous: dict[int, Any] = {}


def _note(signum: int, frame: FrameType | None) -> None:
    _noted.append(signum)


def hold() -> None:
    """Note TERM, INT and HUP from now on (from the main thread only, as Python allows)."""
    if threading.current_thread() is threading.main_thread():
        for sig in SIGNALS:
            _previous[sig] = signal.signal(sig, _note)


def take() -> list[int]:
    """The signals noted so far, each once, in order; forgotten once taken."""
    noted = list(dict.fromkeys(_noted))
    _noted.clear()
    return noted


def release() -> None:
    """Put the handlers back that were there before `hold()`."""
    for sig, handler in _previous.items():
        signal.signal(sig, handler)
    _previous.clear()
    _noted.clear()
