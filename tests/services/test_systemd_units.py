"""examples/systemd: the directives the issue asks for, checked by systemd-analyze verify."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNITS = Path(__file__).parents[2] / "examples" / "systemd"
USER_UNIT = UNITS / "tunnelkeeper.service"
SYSTEM_UNIT = UNITS / "tunnelkeeper-system.service"


def directives(path: Path) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith(("#", "[", " ")) and "=" in line:
            key, _, value = line.partition("=")
            out.setdefault(key, []).append(value)
    return out


@pytest.mark.parametrize("unit", [USER_UNIT, SYSTEM_UNIT], ids=["user", "system"])
def test_common_directives(unit: Path) -> None:
    d = directives(unit)
    assert d["Type"] == ["notify"]
    assert d["Restart"] == ["on-failure"]
    assert d["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert int(d["WatchdogSec"][0]) > 0
    assert d["ExecStart"][0].endswith("tunnelkeeper run --no-dashboard")
    assert d["RestartPreventExitStatus"] == ["2"]
    # Never gives up on restarting, and holds the bounds a relay-side flood runs into.
    assert d["StartLimitIntervalSec"] == ["0"]
    assert int(d["LimitNOFILE"][0]) >= 4096
    assert d["MemoryMax"][0].endswith(("M", "G")) and int(d["TasksMax"][0]) >= 64


def test_system_unit_is_locked_down() -> None:
    d = directives(SYSTEM_UNIT)
    assert d["User"] == ["tunnelkeeper"]
    for key, value in {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "RuntimeDirectory": "tunnelkeeper",
        "StateDirectory": "tunnelkeeper",
        "ReadOnlyPaths": "/etc/tunnelkeeper",
        "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
        "CapabilityBoundingSet": "",
    }.items():
        assert d[key] == [value], key


@pytest.mark.parametrize("unit", [USER_UNIT, SYSTEM_UNIT], ids=["user", "system"])
def test_systemd_analyze_verify(unit: Path, tmp_path: Path) -> None:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed")
    # verify insists that ExecStart's program exists: point it at this interpreter.
    text = unit.read_text()
    text = text.replace("%h/.local/bin/tunnelkeeper", f"{sys.executable} -m tunnelkeeper")
    text = text.replace("/usr/local/bin/tunnelkeeper", f"{sys.executable} -m tunnelkeeper")
    copy = tmp_path / "tunnelkeeper.service"
    copy.write_text(text)
    args = [tool, "verify", str(copy)]
    env = dict(os.environ)
    if unit is USER_UNIT:
        args.insert(1, "--user")
        runtime = tmp_path / "runtime"
        runtime.mkdir(mode=0o700)
        env["XDG_RUNTIME_DIR"] = str(runtime)
    result = subprocess.run(args, capture_output=True, text=True, timeout=30, env=env, check=False)
    # verify exits 0 even for unknown keys; what it says about our file is the verdict.
    complaints = [line for line in result.stderr.splitlines() if str(copy) in line]
    assert result.returncode == 0 and not complaints, result.stderr
