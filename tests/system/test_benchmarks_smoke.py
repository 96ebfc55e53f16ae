"""The benchmark harness still works: one tiny figure end to end, through `python -m benchmarks`."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import need
from tests.support.sshd import SSHD

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(60)
def test_quick_latency_figure_runs(tmp_path: Path) -> None:
    need(SSHD)
    need("ssh")
    out = tmp_path / "BENCHMARKS.md"
    t0 = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--only", "2", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=50,
    )
    elapsed = time.monotonic() - t0
    assert done.returncode == 0, done.stdout + done.stderr
    report = out.read_text()
    assert "### 2. Connect latency" in report
    assert "| tunnelkeeper |" in report and "| ssh -R |" in report
    assert "latency median vs ssh -R" in report  # the targets table
    assert "| OpenSSH | OpenSSH_" in report and "| asyncssh |" in report
    assert elapsed < 20, f"the smoke figure took {elapsed:.1f}s"
