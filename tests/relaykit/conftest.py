"""Relay-kit fixtures: the example config with a fixed public key, the second config, tools."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest

from tunnelkeeper.config import Config, load

HERE = Path(__file__).parent
REPO = HERE.parent.parent
EXAMPLE = REPO / "examples" / "tunnelkeeper.toml"
TWO_RELAYS = HERE / "configs" / "two-relays.toml"
EXAMPLE_PUB = HERE / "data" / "example_rsa.pub"
GOLDEN = HERE / "golden"


def need_tool(tool: str) -> str:
    """The tool's path; a missing tool fails the test in CI and skips it elsewhere."""
    found = shutil.which(tool) or next(
        (f"{d}/{tool}" for d in ("/usr/sbin", "/sbin") if Path(f"{d}/{tool}").exists()), None
    )
    if found:
        return found
    message = f"{tool} is not installed (CI installs it; apt-get install the package to run this)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def run(
    args: Sequence[str | os.PathLike[str]],
    *,
    input: str | None = None,
    timeout: float = 30,
    check: bool = True,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a real program with a time limit; on failure the assertion shows its output."""
    proc = subprocess.run(
        [str(a) for a in args],
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=cwd,
        check=False,
    )
    if check:
        assert proc.returncode == 0, (
            f"{args} exited {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
        )
    return proc


def copy_example(folder: Path) -> Path:
    """examples/tunnelkeeper.toml in `folder`, with the test public key where it looks."""
    config = folder / "tunnelkeeper.toml"
    shutil.copy(EXAMPLE, config)
    (folder / "keys").mkdir(exist_ok=True)
    shutil.copy(EXAMPLE_PUB, folder / "keys" / "tunnelkeeper_rsa.pub")
    return config


@pytest.fixture
def example_path(tmp_path: Path) -> Path:
    return copy_example(tmp_path)


@pytest.fixture
def example(example_path: Path) -> Config:
    return load(example_path)


@pytest.fixture
def two_relays() -> Config:
    return load(TWO_RELAYS)
