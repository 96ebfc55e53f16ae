"""The dashboard as plain text at a given width, and its check against tests/dashboard/golden/.
Not a test module: the dashboard's test modules share it."""

from __future__ import annotations

import io
import os
from pathlib import Path

from rich.console import Console

GOLDEN = Path(__file__).parent / "golden"
# TUNNELKEEPER_UPDATE_GOLDEN=1 rewrites the files after a deliberate change of the view.
UPDATE = os.environ.get("TUNNELKEEPER_UPDATE_GOLDEN") == "1"


def render(renderable: object, width: int, terminal: bool = False) -> str:
    out = io.StringIO()
    console = Console(file=out, width=width, color_system=None, force_terminal=terminal)
    console.print(renderable)
    return "".join(line.rstrip() + "\n" for line in out.getvalue().splitlines())


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if UPDATE:
        path.write_text(text, encoding="utf-8")
    assert text == path.read_text(encoding="utf-8"), f"{name} differs from the golden file"
