"""Every verb in a fresh interpreter with warnings shown (`python -W default -m tunnelkeeper`):
nothing on stderr names a Warning. The libraries under tunnelkeeper (asyncssh, cryptography)
change with any fresh install; their deprecation notices are not our users' business, and
they would land in the middle of a terminal table or beside a `--json` document."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.procs import fetch
from tests.support.sshd import free_port, keygen, wait_until

pytestmark = pytest.mark.timeout(90)

WARNING = re.compile(r"\w*Warning\b")
TUNNELKEEPER = [sys.executable, "-W", "default", "-m", "tunnelkeeper"]

CONFIG = """
[supervisor]
control_socket = "{folder}/control.sock"

[[tunnel]]
name = "relay1"
host = "127.0.0.1"
port = {port}
user = "tunnel"
identity = "keys/tunnelkeeper_rsa"
known_hosts = "keys/known_hosts"
connect_timeout = 3
backoff_initial = 0.2
backoff_max = 0.5
probe_interval = 0
  [[tunnel.forward]]
  name = "smtp"
  service = "smtp"
  listen = 2525
  target = 25
  domains = ["example.org"]
  [[tunnel.forward]]
  name = "dns"
  service = "dns"
  listen = 5353
  target = 53
  zones = ["example.org"]
  [[tunnel.local]]
  name = "smarthost"
  service = "smtp"
  listen = 2526
  target = 25
"""


def tk(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*TUNNELKEEPER, *args], capture_output=True, text=True, timeout=60, cwd=cwd, env=env
    )


def assert_quiet(proc: subprocess.CompletedProcess[str], code: int = 0) -> None:
    assert proc.returncode == code, (proc.args, proc.returncode, proc.stderr)
    assert not WARNING.search(proc.stderr), (proc.args, proc.stderr)


@pytest.fixture(scope="module")
def cfg(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A config whose relay refuses at once: nothing listens on its port."""
    folder = tmp_path_factory.mktemp("fresh")
    (folder / "keys").mkdir()
    key = keygen(folder / "keys" / "tunnelkeeper_rsa")
    pub = " ".join(Path(f"{key}.pub").read_text().split()[:2])
    port = free_port()
    (folder / "keys" / "known_hosts").write_text(f"[127.0.0.1]:{port} {pub}\n")
    path = folder / "tunnelkeeper.toml"
    path.write_text(CONFIG.format(folder=folder, port=port))
    return path


@pytest.mark.parametrize(
    "argv",
    [
        ["mailertable"],
        ["sendmail-mailer"],
        ["sendmail-mailer", "--m4"],
        ["transport"],
        ["named-conf"],
        ["mx-records", "--internal-host", "mail.example.org", "--relay-host", "mx.example.net"],
        ["smarthost"],
        ["smarthost", "--postfix"],
        ["authorized-keys"],
        ["authorized-keys", "--sshd", "dropbear"],
        ["sshd-config"],
        ["relay-kit", "--out", "kit"],
        ["relay-kit", "--out", "kit-dropbear", "--sshd", "dropbear"],
    ],
    ids=lambda argv: " ".join(argv[:2]),
)
def test_generators_write_no_warning(cfg: Path, argv: list[str]) -> None:
    proc = tk(*argv, "-c", str(cfg), cwd=cfg.parent)
    assert_quiet(proc)
    assert proc.stdout or argv[0] == "relay-kit"


def test_help_and_version_write_no_warning() -> None:
    assert_quiet(tk("--help"))
    assert_quiet(tk("--version"))


def test_keygen_writes_no_warning(cfg: Path) -> None:
    out = cfg.parent / "keys" / "new_rsa"
    proc = tk("keygen", "-c", str(cfg), "--out", str(out), "--bits", "2048")
    assert_quiet(proc)
    assert "SHA256:" in proc.stdout


def test_check_against_a_refusing_relay_writes_no_warning(cfg: Path) -> None:
    assert_quiet(tk("check", "-c", str(cfg)), 2)  # no forward up: the tunnel is refused
    proc = tk("check", "-c", str(cfg), "--json")
    assert_quiet(proc, 2)
    tunnel = json.loads(proc.stdout)["tunnels"][0]
    assert tunnel["error_kind"] == "connect-refused" and tunnel["relay_version"] is None


def test_run_status_and_history_write_no_warning(cfg: Path) -> None:
    log = cfg.parent / "run.log"
    args = [*TUNNELKEEPER, "run", "-c", str(cfg), "--no-dashboard"]
    args += ["--allow-root"] if os.getuid() == 0 else []
    with log.open("w") as err:
        run = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=err, text=True)
    try:

        def refused() -> bool:
            st = fetch(cfg.parent / "control.sock")
            return bool(st and st.tunnels and st.tunnels[0].error_kind == "connect-refused")

        wait_until(refused, 15, 0.1, "a refused attempt")
        assert_quiet(tk("status", "-c", str(cfg)), 2)  # no forward up
        status = tk("status", "-c", str(cfg), "--json")
        assert_quiet(status, 2)
        tunnel = json.loads(status.stdout)["tunnels"][0]
        assert tunnel["state"] in ("backoff", "connecting") and tunnel["relay_version"] is None
    finally:
        run.send_signal(signal.SIGTERM)
        code = run.wait(20)
    stderr = log.read_text()
    assert code == 0, stderr
    assert "connection refused" in stderr and not WARNING.search(stderr), stderr
    assert_quiet(tk("history", "-c", str(cfg)))
    assert json.loads(tk("history", "-c", str(cfg), "--json").stdout)["outages"]


def test_demo_writes_no_warning(tmp_path: Path) -> None:
    env = {**os.environ, "XDG_RUNTIME_DIR": str(tmp_path)}
    proc = tk("demo", "--no-dashboard", "--duration", "3", env=env)
    assert_quiet(proc)
    assert "probe smtp ok via relay" in proc.stderr
