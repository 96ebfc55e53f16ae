"""The check of a generated file against its golden copy under tests/relaykit/golden/. Not a test
module: the relay kit's test modules share it."""

from __future__ import annotations

import os
from pathlib import Path

UPDATE = bool(os.environ.get("TUNNELKEEPER_UPDATE_GOLDEN"))


def check_golden(path: Path, text: str) -> None:
    if UPDATE:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    assert path.exists(), f"no golden file {path}: run with TUNNELKEEPER_UPDATE_GOLDEN=1"
    assert text == path.read_text(encoding="utf-8")
