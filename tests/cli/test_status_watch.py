"""`tunnelkeeper status --watch` in a real terminal (tmux), against a control socket served by
a helper process: it waits for the supervisor, shows it, follows a change, ends on Ctrl-C."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.control import write_config
from tests.support.tmux import Tmux

REPO = Path(__file__).parents[2]


@pytest.fixture
def tmux() -> Iterator[Tmux]:
    tool = shutil.which("tmux")
    if tool is None:
        pytest.skip("tmux is not installed")
    server = Tmux(tool)
    yield server
    server.kill()


def test_status_watch_in_a_terminal(tmux: Tmux, short_tmp: Path) -> None:
    sock = short_tmp / "run" / "control.sock"
    name_file = short_tmp / "snapshot"
    name_file.write_text("healthy")
    cfg = write_config(short_tmp, sock)
    env = {**os.environ, "PYTHONPATH": str(REPO), "TERM": "xterm-256color"}
    env.pop("COLUMNS", None)
    env.pop("LINES", None)
    command = f"{sys.executable} -m tunnelkeeper status --watch -c {cfg}; echo EXIT=$?; sleep 60"
    subprocess.run(
        [*tmux.base, "new-session", "-d", "-s", "watch", "-x", "100", "-y", "30", command],
        env=env,
        cwd=REPO,
        timeout=10,
        check=True,
    )
    helper: subprocess.Popen[bytes] | None = None
    try:
        tmux.wait_for("waiting for it")  # started before the supervisor: it waits
        helper = subprocess.Popen(
            [sys.executable, "-m", "tests.support.serve_status", str(sock), str(name_file)],
            cwd=REPO,
            env=env,
        )
        screen = tmux.wait_for("ALL HEALTHY")
        assert "127.0.0.1:2525 → 127.0.0.1:25" in screen and "ok 4.2ms" in screen

        name_file.write_text("smtp_failing")  # the internal SMTP server stopped
        screen = tmux.wait_for("failing", within=5)
        assert "DEGRADED" in screen and "FAIL" in screen
        assert "refused behind" in screen  # the reason, not only the colour
        (short_tmp / "screen-100.txt").write_text(screen)

        tmux("send-keys", "-t", "watch", "C-c")
        screen = tmux.wait_for("EXIT=", within=5)
        assert "EXIT=1" in screen  # the status of the last poll
        assert "Traceback" not in screen
        if os.environ.get("TUNNELKEEPER_SCREEN_DUMP"):
            Path(os.environ["TUNNELKEEPER_SCREEN_DUMP"]).write_text(
                (short_tmp / "screen-100.txt").read_text()
            )
    finally:
        if helper is not None:
            helper.terminate()
            helper.wait(5)
