"""The CLI through `main([...])` and as a process: exit codes, clear errors, keygen, check."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.configs import write_config
from tests.support.procs import SupervisorProcess
from tests.support.sshd import free_port, keygen, wait_until
from tunnelkeeper.cli import main

CONFIG = """
[supervisor]
control_socket = "{sock}"
[[tunnel]]
name = "relay1"
host = "127.0.0.1"
port = 22
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


@pytest.fixture
def cfg_file(tmp_path: Path) -> Path:
    path = tmp_path / "tunnelkeeper.toml"
    path.write_text(CONFIG.format(sock=tmp_path / "control.sock"))
    (tmp_path / "keys").mkdir()
    return path


def test_help_groups_the_commands(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert out.index("Supervisor:") < out.index("run ") < out.index("Relay configuration:")
    assert out.index("Relay configuration:") < out.index("mailertable")


def test_usage_error_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--no-such-flag"]) == 2
    assert main([]) == 2
    capsys.readouterr()
    assert main(["check", "--bogus"]) == 2  # told with check's own usage
    assert "tunnelkeeper check: error: unrecognized arguments: --bogus" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["keygen", "--out", ""], "--out: an empty path names nothing"),
        (["relay-kit", "--out", " "], "--out: an empty path names nothing"),
        (["check", "-c", ""], "-c/--config: an empty path names nothing"),
        (["demo", "--duration", "-1"], "give a positive number of seconds"),
        (["demo", "--duration", "inf"], "give a positive number of seconds"),
        (["history", "--since", "3000000d"], "at most"),
    ],
)
def test_arguments_that_name_nothing_are_usage_errors(
    argv: list[str], words: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    assert words in capsys.readouterr().err


def test_invalid_config_exits_2_naming_file_and_key(
    cfg_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg_file.write_text(cfg_file.read_text().replace("listen = 2525", 'listen = "1.2.3.4:25"'))
    assert main(["check", "-c", str(cfg_file)]) == 2
    err = capsys.readouterr().err
    assert str(cfg_file) in err and "tunnel[0].forward[0].listen" in err
    assert "Traceback" not in err


def test_missing_key_exits_2(cfg_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "-c", str(cfg_file), "--no-dashboard", "--allow-root"]) == 2
    err = capsys.readouterr().err
    assert "keys/id_rsa" in err and "not found" in err and "keygen" in err


def test_key_readable_by_others_exits_2(cfg_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key = keygen(cfg_file.parent / "keys" / "id_rsa")
    key.chmod(0o644)
    assert main(["check", "-c", str(cfg_file)]) == 2
    err = capsys.readouterr().err
    assert str(key) in err and "0644" in err and "chmod 600" in err


def test_missing_known_hosts_under_strict_exits_2(
    cfg_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keygen(cfg_file.parent / "keys" / "id_rsa")
    assert main(["run", "-c", str(cfg_file), "--no-dashboard", "--allow-root"]) == 2
    err = capsys.readouterr().err
    assert "known_hosts" in err and "accept-new" in err


def test_root_is_refused_without_allow_root(
    cfg_file: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert main(["run", "-c", str(cfg_file), "--no-dashboard"]) == 1
    assert "refusing to run as root" in capsys.readouterr().err


def test_root_by_effective_uid_is_refused(
    cfg_file: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A setuid-root start has a real uid of the user and the powers of root: refused too."""
    monkeypatch.setattr(os, "getuid", lambda: 1000)
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert main(["run", "-c", str(cfg_file), "--no-dashboard"]) == 1
    assert "refusing to run as root" in capsys.readouterr().err


def test_keygen_writes_0600_key_and_never_overwrites(
    cfg_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = cfg_file.parent / "keys" / "new_rsa"
    assert main(["keygen", "-c", str(cfg_file), "--out", str(out), "--bits", "2048"]) == 0
    printed = capsys.readouterr().out
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    pub = Path(str(out) + ".pub").read_text()
    assert pub.startswith("ssh-rsa ") and "SHA256:" in printed
    before = out.read_bytes()
    assert main(["keygen", "-c", str(cfg_file), "--out", str(out), "--bits", "2048"]) == 1
    assert "--force" in capsys.readouterr().err
    assert out.read_bytes() == before
    assert (
        main(["keygen", "-c", str(cfg_file), "--out", str(out), "--bits", "2048", "--force"]) == 0
    )
    assert out.read_bytes() != before and stat.S_IMODE(out.stat().st_mode) == 0o600


def test_keygen_default_path_prints_authorized_keys_line(
    cfg_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg_file.write_text(cfg_file.read_text().replace("keys/id_rsa", "keys/tunnelkeeper_rsa"))
    assert main(["keygen", "-c", str(cfg_file), "--bits", "2048"]) == 0
    out = capsys.readouterr().out
    key = cfg_file.parent / "keys" / "tunnelkeeper_rsa"
    assert key.exists() and 'permitlisten="127.0.0.1:2525"' in out and "restrict" in out


def test_check_against_real_sshd(
    make_sshd,
    smtp_sink,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    listen = free_port()
    sshd = make_sshd(permitlisten=[f"127.0.0.1:{listen}"])
    cfg = write_config(
        tmp_path / "tk.toml",
        sshd,
        [
            {
                "name": "smtp",
                "service": "smtp",
                "listen": f"127.0.0.1:{listen}",
                "target": f"127.0.0.1:{smtp_sink.port}",
                "domains": ["example.org"],
            }
        ],
    )
    assert main(["check", "-c", str(cfg), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    fwd = data["tunnels"][0]["forwards"][0]
    assert data["tunnels"][0]["state"] == "up"
    assert fwd["state"] == "up" and fwd["probe"]["ok"] and fwd["probe"]["detail"].startswith("220")
    assert fwd["open_relay"] is False  # the sink refuses to relay, as a real MTA does
    smtp_sink.stop()
    assert main(["check", "-c", str(cfg)]) == 2  # the only forward's probe fails
    assert "probe FAILED" in capsys.readouterr().out
    smtp_sink.start()


def test_sighup_reloads_changed_tunnel_only(make_sshd, smtp_sink, tmp_path: Path) -> None:
    a, b = free_port(), free_port()
    sshd = make_sshd(permitlisten=[f"127.0.0.1:{a}", f"127.0.0.1:{b}"])
    fwd = {
        "name": "smtp",
        "service": "smtp",
        "target": f"127.0.0.1:{smtp_sink.port}",
        "domains": ["example.org"],
    }
    cfg = write_config(tmp_path / "tk.toml", sshd, [{**fwd, "listen": f"127.0.0.1:{a}"}])
    sup = SupervisorProcess(cfg)
    try:
        sup.wait_forward("up", 15)
        text = cfg.read_text()
        cfg.write_text(text.replace("[[tunnel.forward]]", "[[tunnel.forward]]\ncolour = 1"))
        sup.signal(signal.SIGHUP)
        wait_until(lambda: "reload refused" in sup.log(), 10, what="invalid reload refused")
        assert sup.status_now().forwards[0].state == "up"
        cfg.write_text(text.replace(f"127.0.0.1:{a}", f"127.0.0.1:{b}"))
        sup.signal(signal.SIGHUP)
        st = sup.wait_status(
            lambda s: (
                s.forwards
                and s.forwards[0].listen == f"127.0.0.1:{b}"
                and s.forwards[0].state == "up"
            ),
            15,
            "moved forward",
        )
        assert st.tunnels[0].connects == 1  # a fresh tunnel, started anew
        cfg.write_text(text.replace(f"127.0.0.1:{a}", f"127.0.0.1:{b}"))
        sup.signal(signal.SIGHUP)
        wait_until(lambda: "configuration unchanged" in sup.log(), 10, what="no-op reload")
    finally:
        assert sup.stop() == 0


@pytest.mark.timeout(60)
def test_demo_runs_and_delivers_mail(tmp_path: Path) -> None:
    env = {**os.environ, "XDG_RUNTIME_DIR": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-m", "tunnelkeeper", "demo", "--no-dashboard", "--duration", "8"],
        capture_output=True,
        text=True,
        timeout=50,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    assert "probe smtp ok via relay" in result.stderr
    assert "probe dns ok via relay" in result.stderr and "SOA serial" in result.stderr
    delivered = int(result.stderr.split("demo: ")[-1].split()[0])
    assert delivered >= 1, result.stderr


def test_a_full_disk_under_a_generator_is_said_not_a_traceback() -> None:
    example = Path(__file__).resolve().parents[2] / "examples" / "tunnelkeeper.toml"
    with open("/dev/full", "w") as full:
        proc = subprocess.run(
            [sys.executable, "-m", "tunnelkeeper", "mailertable", "-c", str(example)],
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            timeout=30,
        )
    assert proc.returncode == 1
    assert proc.stderr == "tunnelkeeper: cannot write the output: No space left on device\n"


def test_relay_kit_says_which_flag_the_mx_name_needs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The relay's MX name defaults to the tunnel's host; an address there asks for
    --relay-host, and a bad --relay-host is named as the flag."""
    from tests.support.sshd import keygen

    (tmp_path / "keys").mkdir()
    keygen(tmp_path / "keys" / "tunnelkeeper_rsa")
    cfg = tmp_path / "tunnelkeeper.toml"
    cfg.write_text(
        '[[tunnel]]\nname = "relay1"\nhost = "127.0.0.1"\nuser = "t"\n[[tunnel.forward]]\n'
        'name = "smtp"\nservice = "smtp"\nlisten = 2525\ntarget = 25\ndomains = ["example.org"]\n'
    )
    base = ["relay-kit", "-c", str(cfg), "--out", str(tmp_path / "kit")]
    assert main([*base, "--internal-host", "mail.example.org"]) == 2
    err = capsys.readouterr().err
    assert "tunnel's host" in err and "give --relay-host NAME" in err
    assert main([*base, "--internal-host", "mail.example.org", "--relay-host", "10.0.0.1"]) == 2
    assert "--relay-host: '10.0.0.1': an MX target must be a host name" in capsys.readouterr().err
    assert (
        main([*base, "--internal-host", "mail.example.org", "--relay-host", "mx.example.net"]) == 0
    )


def test_one_domain_on_two_forwards_of_a_tunnel_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """mailertable cannot route a domain to two ports: the message says which forwards, and
    does not send the user to --tunnel, which cannot help."""
    cfg = tmp_path / "tunnelkeeper.toml"
    forward = (
        '[[tunnel.forward]]\nname = "{name}"\nservice = "smtp"\nlisten = {port}\ntarget = 25\n'
        'domains = ["example.org"]\n'
    )
    cfg.write_text(
        '[[tunnel]]\nname = "relay1"\nhost = "relay.example.net"\nuser = "t"\n'
        + forward.format(name="smtp", port=2525)
        + forward.format(name="smtp2", port=2526)
    )
    assert main(["mailertable", "-c", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "goes to smtp and to smtp2 of tunnel relay1" in err and "keep it in one" in err
    assert "--tunnel" not in err
