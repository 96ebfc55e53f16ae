"""Files that make tunnelkeeper act are refused when another user could change them."""

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.sshd import keygen
from tunnelkeeper import config, filetrust
from tunnelkeeper.cli import main
from tunnelkeeper.config import vetting
from tunnelkeeper.control import ControlServer
from tunnelkeeper.errors import ConfigError, ControlError
from tunnelkeeper.state import SupervisorStatus

NOBODY = 65534
CONFIG = """\
[supervisor]
control_socket = "run/control.sock"
on_down = ["/bin/sh", "-c", "echo run by tunnelkeeper"]
[[tunnel]]
name = "relay1"
host = "127.0.0.1"
port = 9
user = "tunnel"
identity = "keys/id_rsa"
known_hosts = "keys/known_hosts"
  [[tunnel.forward]]
  name = "smtp"
  service = "smtp"
  listen = 2525
  target = 25
  domains = ["example.org"]
"""


def need_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to give a file to another user (CI runs the suite as root)")


@pytest.fixture(autouse=True)
def strict(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(filetrust.STRICT_MODES_ENV, raising=False)


@pytest.fixture
def setup(fdir: Path) -> Iterator[Path]:
    """A config with its key and known_hosts, all as they should be; yields the config."""
    keys = fdir / "keys"
    keys.mkdir(mode=0o700)
    key = keygen(keys / "id_rsa")
    (keys / "known_hosts").write_text("127.0.0.1 " + Path(f"{key}.pub").read_text())
    cfg = fdir / "tunnelkeeper.toml"
    cfg.write_text(CONFIG)
    cfg.chmod(0o600)
    yield cfg


def test_files_as_they_should_be_pass(setup: Path) -> None:
    cfg = config.load(setup)
    vetting.check_tunnel_files(cfg)
    filetrust.check_private_folder(cfg.control_socket.parent, "control socket folder")


@pytest.mark.parametrize("mode", [0o620, 0o602, 0o666])
def test_config_writable_by_others_is_refused(
    setup: Path, mode: int, capsys: pytest.CaptureFixture[str]
) -> None:
    setup.chmod(mode)
    with pytest.raises(ConfigError, match="writable by group or others") as info:
        config.load(setup)
    assert str(setup) in str(info.value) and filetrust.STRICT_MODES_ENV in str(info.value)
    for verb in ("run", "check"):
        assert main([verb, "-c", str(setup)]) == 2
        err = capsys.readouterr().err
        assert str(setup) in err and "writable by group or others" in err


def test_config_in_a_folder_others_may_write_is_refused(setup: Path) -> None:
    setup.parent.chmod(0o777)  # not sticky: anyone can swap the file for their own
    with pytest.raises(ConfigError, match="folder holding the configuration") as info:
        config.load(setup)
    assert str(setup.parent) in str(info.value)


def test_config_in_a_sticky_folder_passes(fdir: Path) -> None:
    """A root-owned sticky folder like /tmp: others may add files, not touch ours."""
    sticky = fdir / "sticky"
    sticky.mkdir()
    sticky.chmod(0o1777)
    (sticky / "keys").mkdir(mode=0o700)
    cfg = sticky / "tunnelkeeper.toml"
    cfg.write_text(CONFIG)
    assert config.load(cfg).tunnel[0].name == "relay1"


def test_symlinked_config_checks_the_folder_of_the_link(setup: Path, fdir: Path) -> None:
    open_folder = fdir / "shared"
    open_folder.mkdir()
    open_folder.chmod(0o777)
    link = open_folder / "tunnelkeeper.toml"
    link.symlink_to(setup)
    with pytest.raises(ConfigError, match="folder holding the configuration") as info:
        config.load(link)
    assert str(open_folder) in str(info.value)


def test_config_of_another_user_is_refused(setup: Path) -> None:
    need_root()
    os.chown(setup, NOBODY, -1)
    with pytest.raises(ConfigError, match=f"belongs to uid {NOBODY}"):
        config.load(setup)


def test_config_in_the_current_folder_from_another_user_is_refused(
    setup: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """./tunnelkeeper.toml wins the search; one planted by someone else is not used."""
    need_root()
    os.chown(setup, NOBODY, -1)
    monkeypatch.chdir(setup.parent)
    monkeypatch.delenv("TUNNELKEEPER_CONFIG", raising=False)
    assert main(["check"]) == 2
    err = capsys.readouterr().err
    assert "tunnelkeeper.toml" in err and f"belongs to uid {NOBODY}" in err


@pytest.mark.parametrize(
    ("target", "words"),
    [
        ("keys/known_hosts", "known_hosts file is writable"),
        ("keys/id_rsa.pub", "public key is writable"),
        ("keys", "folder holding the private key"),
    ],
)
def test_key_files_others_may_write_are_refused(
    setup: Path, target: str, words: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = setup.parent / target
    path.chmod(stat.S_IMODE(path.stat().st_mode) | 0o020)
    with pytest.raises(ConfigError, match=words) as info:
        vetting.check_tunnel_files(config.load(setup))
    assert str(path) in str(info.value)
    assert main(["check", "-c", str(setup)]) == 2
    assert str(path) in capsys.readouterr().err


def test_key_of_another_user_is_refused(setup: Path) -> None:
    need_root()
    os.chown(setup.parent / "keys" / "id_rsa", NOBODY, -1)
    with pytest.raises(ConfigError, match=f"private key belongs to uid {NOBODY}"):
        vetting.check_tunnel_files(config.load(setup))


def test_generators_refuse_it_too(setup: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Their output is what the relay admin installs (the key's restrictions among it)."""
    setup.chmod(0o666)
    assert main(["mailertable", "-c", str(setup)]) == 2
    assert str(setup) in capsys.readouterr().err


def test_strict_modes_no_is_the_named_way_out(
    setup: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A group that keeps the config together may say so; secrets stay private regardless."""
    setup.chmod(0o664)
    (setup.parent / "keys").chmod(0o770)
    monkeypatch.setenv(filetrust.STRICT_MODES_ENV, "no")
    cfg = config.load(setup)
    vetting.check_tunnel_files(cfg)
    key = setup.parent / "keys" / "id_rsa"
    key.chmod(0o640)
    with pytest.raises(ConfigError, match="chmod 600"):
        vetting.check_tunnel_files(cfg)
    key.chmod(0o600)
    main(["check", "-c", str(setup)])
    assert f"{filetrust.STRICT_MODES_ENV}=no" in capsys.readouterr().err


def _status() -> SupervisorStatus:
    raise AssertionError("not asked")


@pytest.mark.parametrize("mode", [0o777, 0o770, 0o722])
async def test_control_folder_open_to_others_is_refused_as_it_is(fdir: Path, mode: int) -> None:
    folder = fdir / "run"
    folder.mkdir()
    folder.chmod(mode)
    server = ControlServer(folder / "control.sock", _status)
    with pytest.raises(ConfigError, match="control socket folder is writable") as info:
        await server.start()
    assert str(folder) in str(info.value)
    assert stat.S_IMODE(folder.stat().st_mode) == mode  # refused, not quietly chmodded
    assert list(folder.iterdir()) == []


async def test_control_folder_of_another_user_is_refused(fdir: Path) -> None:
    need_root()
    folder = fdir / "run"
    folder.mkdir(mode=0o700)
    os.chown(folder, NOBODY, -1)
    with pytest.raises(ConfigError, match=f"belongs to uid {NOBODY}"):
        await ControlServer(folder / "control.sock", _status).start()


@pytest.mark.parametrize("what", ["file", "folder", "symlink"])
async def test_control_socket_path_holding_something_else_is_left_alone(
    fdir: Path, what: str
) -> None:
    """control_socket naming a file (the config itself, say), a folder or a symlink: refused,
    and what is there stays, untouched."""
    folder = fdir / "run"
    folder.mkdir(mode=0o700)
    path = folder / "control.sock"
    if what == "file":
        path.write_text("precious\n")
    elif what == "folder":
        path.mkdir()
    else:
        path.symlink_to(fdir / "elsewhere")
    server = ControlServer(path, _status)
    with pytest.raises(ControlError, match="exists and is not a socket"):
        await server.start()
    server.close()
    assert path.is_symlink() if what == "symlink" else path.exists()
    if what == "file":
        assert path.read_text() == "precious\n"


async def test_control_socket_path_too_long_for_a_socket(fdir: Path) -> None:
    folder = fdir / ("d" * 60) / ("e" * 60)
    folder.mkdir(parents=True, mode=0o700)
    with pytest.raises(ControlError, match="a Unix socket path has at most 107"):
        await ControlServer(folder / "control.sock", _status).start()


async def test_control_lock_symlink_is_not_followed(fdir: Path) -> None:
    folder = fdir / "run"
    folder.mkdir(mode=0o700)
    victim = fdir / "victim"
    (folder / "control.sock.lock").symlink_to(victim)
    with pytest.raises(ControlError, match="symbolic link"):
        await ControlServer(folder / "control.sock", _status).start()
    assert not victim.exists()


async def test_control_folder_is_made_private(fdir: Path) -> None:
    folder = fdir / "new" / "run"
    async with ControlServer(folder / "control.sock", _status):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
        await asyncio.sleep(0)


def test_run_refuses_an_open_control_folder_with_exit_2(
    setup: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = setup.parent / "run"
    folder.mkdir()
    folder.chmod(0o777)
    assert main(["run", "-c", str(setup), "--no-dashboard", "--allow-root"]) == 2
    err = capsys.readouterr().err
    assert str(folder) in err and "writable by group or others" in err
