"""A real terminal for the tests of live screens: a tmux server of our own, and its screen read
until it shows what is awaited."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable

from tests.support.polling import until_blocking


class Tmux:
    """A tmux server of our own (-L), so nothing else's sessions are touched."""

    def __init__(self, tool: str) -> None:
        self.base = [tool, "-L", f"tko-watch-{os.getpid()}", "-f", "/dev/null"]

    def __call__(self, *args: str) -> str:
        result = subprocess.run(
            [*self.base, *args], capture_output=True, text=True, timeout=10, check=True
        )
        return result.stdout

    def screen(self) -> str:
        return self("capture-pane", "-p", "-t", "watch")

    def wait_for(self, text: str, within: float = 15.0) -> str:
        return self.wait_until(lambda screen: text in " ".join(screen.split()), within, repr(text))

    def wait_until(self, good: Callable[[str], bool], within: float, what: str) -> str:
        """The screen once `good` holds for it (rich wraps long lines itself)."""
        screens = [""]

        def shown() -> str:
            screens.append(self.screen())
            return screens[-1] if good(screens[-1]) else ""

        return until_blocking(
            shown, within, lambda: f"{what} on screen; it shows:\n{screens[-1]}", interval=0.1
        )

    def kill(self) -> None:
        subprocess.run([*self.base, "kill-server"], capture_output=True, timeout=10, check=False)
