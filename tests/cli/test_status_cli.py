"""`tunnelkeeper status` through `main([...])` against a real control socket: exit 0/1/2/3."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.control import ThreadedControlServer
from tests.support.snapshots import SNAPSHOTS
from tunnelkeeper.cli import main


@pytest.mark.parametrize(
    ("snapshot", "code"), [("healthy", 0), ("mixed", 1), ("smtp_failing", 1), ("down", 2)]
)
def test_exit_code_follows_the_forwards(
    snapshot: str,
    code: int,
    control_server: ThreadedControlServer,
    config_for: Callable[[Path], Path],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("COLUMNS", raising=False)
    control_server.status = SNAPSHOTS[snapshot]()
    assert main(["status", "-c", str(config_for(control_server.path))]) == code
    out, err = capsys.readouterr()
    assert err == ""
    assert "\x1b" not in out  # not a terminal: plain text
    assert "relay" in out and "Name" in out


def test_failing_probe_is_shown_with_its_reason(
    control_server: ThreadedControlServer,
    config_for: Callable[[Path], Path],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("COLUMNS", raising=False)
    control_server.status = SNAPSHOTS["smtp_failing"]()
    assert main(["status", "-c", str(config_for(control_server.path))]) == 1
    out = capsys.readouterr().out
    assert out.startswith("DEGRADED")
    assert "failing" in out and "refused behind the" in out


def test_no_supervisor_is_3(short_tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = short_tmp / "tunnelkeeper.toml"
    from tests.support.control import write_config

    write_config(short_tmp, short_tmp / "nobody.sock")
    assert main(["status", "-c", str(cfg)]) == 3
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1 and "no supervisor reachable" in err and "nobody.sock" in err
    assert main(["status", "-c", str(cfg), "--json"]) == 3


def test_without_a_config_the_default_socket_is_asked(
    short_tmp: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from tests.support.control import ThreadedControlServer
    from tests.support.snapshots import healthy

    for var in ("TUNNELKEEPER_CONFIG",):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(short_tmp / "nothing-here"))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(short_tmp))
    monkeypatch.chdir(short_tmp)
    assert main(["status"]) == 3
    assert str(short_tmp / "tunnelkeeper" / "control.sock") in capsys.readouterr().err
    server = ThreadedControlServer(short_tmp / "tunnelkeeper" / "control.sock", healthy()).start()
    try:
        assert main(["status", "--json"]) == 0
    finally:
        server.stop()


def test_a_broken_config_is_a_configuration_error(
    short_tmp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # status is a monitoring plugin: a configuration error it cannot get past is UNKNOWN.
    cfg = short_tmp / "bad.toml"
    cfg.write_text("[supervisor]\nbogus = 1\n")
    assert main(["status", "-c", str(cfg)]) == 3
    assert "bogus" in capsys.readouterr().err


def test_json_and_watch_exclude_each_other(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status", "--json", "--watch"]) == 3  # a usage error: UNKNOWN
    capsys.readouterr()


def test_watch_not_on_a_terminal_prints_summary_lines(
    control_server: ThreadedControlServer,
    config_for: Callable[[Path], Path],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import tunnelkeeper.cli.status as status_cli

    control_server.status = SNAPSHOTS["mixed"]()
    polls = 0
    poll_once = status_cli._Watch.poll_once

    async def poll_then_stop(self: status_cli._Watch) -> None:
        nonlocal polls
        polls += 1
        if polls == 2:
            control_server.status = SNAPSHOTS["healthy"]()
        if polls == 4:
            raise KeyboardInterrupt  # what Ctrl-C does to asyncio.run
        await poll_once(self)

    monkeypatch.setattr(status_cli._Watch, "poll_once", poll_then_stop)
    monkeypatch.setattr(status_cli, "WATCH_INTERVAL", 0.01)
    assert main(["status", "-c", str(config_for(control_server.path)), "--watch"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    assert lines[0].endswith(
        "1/4 forwards healthy, 1/2 tunnels up; relay1/dns failing, "
        "relay1/submission refused, relay2 backoff (connect-refused)"
    )
    assert lines[1].endswith("2/2 forwards healthy, 1/1 tunnels up")
