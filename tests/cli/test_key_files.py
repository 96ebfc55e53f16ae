"""Mistaken key files through the real CLI: `run` and `check` exit 2 naming the file."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support.faults import relay_config, smtp_forward
from tests.support.nobody import NOBODY, as_nobody
from tests.support.sshd import SSH_KEYGEN, free_port, keygen

pytestmark = pytest.mark.timeout(120)


def _cli(verb: str, cfg: Path) -> subprocess.CompletedProcess[str]:
    args = [sys.executable, "-m", "tunnelkeeper", verb, "-c", str(cfg)]
    if verb == "run":
        args += ["--no-dashboard", "--allow-root"]
    return subprocess.run(args, capture_output=True, text=True, timeout=30)


def _key(path: Path) -> Path:
    return keygen(path, "rsa", 1024)


def _encrypted(path: Path) -> Path:
    subprocess.run(
        [SSH_KEYGEN, "-q", "-t", "rsa", "-b", "1024", "-N", "secret", "-f", str(path)],
        check=True,
        timeout=60,
    )
    path.chmod(0o600)
    return path


def _mode(mode: int) -> Callable[[Path], Path]:
    def make(path: Path) -> Path:
        _key(path).chmod(mode)
        return path

    return make


def _garbage(path: Path) -> Path:
    path.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nnot a key\n")
    path.chmod(0o600)
    return path


def _public_as_private(path: Path) -> Path:
    _key(path)
    shutil.copy(f"{path}.pub", path)
    path.chmod(0o600)
    return path


def _dsa(path: Path) -> Path:
    made = subprocess.run(
        [SSH_KEYGEN, "-q", "-t", "dsa", "-N", "", "-f", str(path)], capture_output=True, timeout=60
    )
    if made.returncode != 0:
        pytest.skip("this ssh-keygen no longer makes DSA keys")
    path.chmod(0o600)
    return path


def _directory(path: Path) -> Path:
    path.mkdir(mode=0o700)
    return path


def _missing(path: Path) -> Path:
    return path


# case -> (make the identity, make known_hosts, which file the message must name, words in it)
IDENTITY_CASES: dict[str, tuple[Callable[[Path], Path], str]] = {
    "mode-0644": (_mode(0o644), "chmod 600"),
    "mode-0640": (_mode(0o640), "group or others"),
    "mode-0604": (_mode(0o604), "group or others"),
    "encrypted": (_encrypted, "encrypted"),
    "missing": (_missing, "not found"),
    "directory": (_directory, "not a regular file"),
    "garbage": (_garbage, "not a usable private key"),
    "public-key": (_public_as_private, "not a usable private key"),
    "dsa": (_dsa, "DSA"),
}


@pytest.mark.parametrize("verb", ["check", "run"])
@pytest.mark.parametrize("case", sorted(IDENTITY_CASES))
def test_bad_identity_is_refused_at_start(
    case: str, verb: str, make_relay, fdir: Path, outcome: dict[str, Any]
) -> None:
    make, words = IDENTITY_CASES[case]
    sshd = make_relay(start=False)
    identity = make(fdir / "id_key")
    cfg = relay_config(fdir / "tk.toml", sshd, [smtp_forward(free_port(), 25)])
    cfg.write_text(cfg.read_text().replace(str(sshd.client_key), str(identity)))
    result = _cli(verb, cfg)
    message = result.stderr.strip()
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert str(identity) in message and words in message, message
    assert "Traceback" not in result.stderr + result.stdout
    if verb == "check":
        outcome.update(case=case, exit=result.returncode, message=message.splitlines()[-1][:160])


@pytest.mark.parametrize("verb", ["check", "run"])
@pytest.mark.parametrize("case", ["missing", "directory"])
def test_bad_known_hosts_is_refused_at_start(
    case: str, verb: str, make_relay, fdir: Path, outcome: dict[str, Any]
) -> None:
    sshd = make_relay(start=False)
    cfg = relay_config(fdir / "tk.toml", sshd, [smtp_forward(free_port(), 25)])
    sshd.known_hosts.unlink()
    if case == "directory":
        sshd.known_hosts.mkdir()
    result = _cli(verb, cfg)
    message = result.stderr.strip()
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert str(sshd.known_hosts) in message and "known_hosts" in message, message
    assert "Traceback" not in result.stderr + result.stdout
    if verb == "check":
        outcome.update(case=case, exit=result.returncode, message=message[:160])


def test_files_unreadable_by_the_running_user(
    make_relay, fdir: Path, outcome: dict[str, Any]
) -> None:
    """The files belong to root; `check` runs as nobody (forked, in-process CLI)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to act as a second user (CI runs the suite as root)")
    import tunnelkeeper.cli.check  # noqa: F401 - imported now: nobody cannot read root's Python
    from tunnelkeeper.cli import main

    fdir.chmod(0o755)
    sshd = make_relay(start=False)
    sshd.root.chmod(0o755)
    cfg = relay_config(fdir / "tk.toml", sshd, [smtp_forward(free_port(), 25)])
    cfg.chmod(0o644)

    def check() -> dict[str, Any]:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(["check", "-c", str(cfg)])
        return {"exit": code, "stderr": err.getvalue()}

    sshd.client_key.chmod(0o600)  # root's key, 0600: nobody cannot read it
    key_case = as_nobody(check)
    sshd.client_key.chmod(0o644)  # ... the key readable, known_hosts not
    os.chown(sshd.client_key, NOBODY, -1)
    sshd.client_key.chmod(0o600)
    sshd.known_hosts.chmod(0o600)
    hosts_case = as_nobody(check)
    outcome.update(unreadable_key=key_case, unreadable_known_hosts=hosts_case)
    for result, path in ((key_case, sshd.client_key), (hosts_case, sshd.known_hosts)):
        value = result.get("value", result)
        assert value.get("exit") == 2, result
        assert str(path) in value["stderr"] and "Permission denied" in value["stderr"], result
        assert "Traceback" not in value["stderr"]


def test_ed25519_identity_works(make_relay, smtp_sink, fdir: Path, outcome: dict[str, Any]) -> None:
    """RSA is what keygen makes; an ed25519 key the relay accepts works as well."""
    listen = free_port()
    ed = keygen(fdir / "id_ed25519", "ed25519")
    sshd = make_relay(client_key=ed, permitlisten=[f"127.0.0.1:{listen}"])
    cfg = relay_config(fdir / "tk.toml", sshd, [smtp_forward(listen, smtp_sink.port)])
    result = subprocess.run(
        [sys.executable, "-m", "tunnelkeeper", "check", "--json", "-c", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    tunnel = json.loads(result.stdout)["tunnels"][0]
    assert tunnel["state"] == "up" and tunnel["forwards"][0]["probe"]["ok"]
    outcome.update(key="ssh-ed25519", check_exit=0, probe=tunnel["forwards"][0]["probe"]["detail"])


@pytest.mark.parametrize("verb", ["check", "run"])
@pytest.mark.parametrize(
    ("case", "old", "new", "key"),
    [
        ("public-listen", "127.0.0.1:{listen}", "0.0.0.0:{listen}", "tunnel[0].forward[0].listen"),
        ("nul-in-identity", "{identity}", "{identity}\\u0000x", "tunnel[0].identity"),
        ("inf-keepalive", "keepalive_interval = 1", "keepalive_interval = inf", "keepalive"),
    ],
)
def test_refused_at_load_time(
    case: str, old: str, new: str, key: str, verb: str, make_relay, fdir: Path
) -> None:
    """Nothing starts: exit 2 naming the file and the key, no control socket, no traceback."""
    listen = free_port()
    sshd = make_relay(start=False)
    cfg = relay_config(fdir / "tk.toml", sshd, [smtp_forward(listen, 25)])
    fill = {"listen": listen, "identity": sshd.client_key}
    text = cfg.read_text()
    assert old.format(**fill) in text
    cfg.write_text(text.replace(old.format(**fill), new.format(**fill), 1))
    result = _cli(verb, cfg)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert str(cfg) in result.stderr and key in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert not (fdir / "control.sock").exists()
