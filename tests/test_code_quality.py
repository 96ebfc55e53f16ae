"""The code stays ruff- and mypy-clean: scripts/check runs in the suite, so CI enforces it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(300)
def test_scripts_check_passes() -> None:
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "check"), "--no-tests"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=280,
        env={"PY": sys.executable, "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
