"""`check` proves the boundary with the real internal servers behind a real sshd: a sendmail
that would relay for the tunnel's source is named as an open relay (exit 1), one as it comes is
not; a BIND primary that allows transfers to 127.0.0.1 alone (the first relay kit's advice)
refuses the tunnel's source, and check says what to allow."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.relaykit.conftest import need_tool
from tests.support.bind import PRIMARY_ZONE, loaded, named, named_options
from tests.support.configs import write_config
from tests.support.procs import SupervisorProcess
from tests.support.sendmail import InternalSendmail
from tests.support.sshd import free_port
from tunnelkeeper.checks.boundary import NO_TRANSFER, OPEN_RELAY

pytestmark = pytest.mark.timeout(120)


def check(config: Path) -> tuple[int, dict[str, Any], str]:
    """`tunnelkeeper check --json`, and the plain output of a second run."""
    runs = [
        subprocess.run(
            [sys.executable, "-m", "tunnelkeeper", "check", "-c", str(config), *args],
            capture_output=True,
            text=True,
            timeout=90,
        )
        for args in (["--json"], [])
    ]
    try:
        document = json.loads(runs[0].stdout)
    except json.JSONDecodeError:
        raise AssertionError(
            f"exit {runs[0].returncode}: {runs[0].stdout}{runs[0].stderr}"
        ) from None
    assert runs[1].returncode == runs[0].returncode, runs[1].stdout
    return runs[0].returncode, document["tunnels"][0]["forwards"][0], runs[1].stdout


def smtp_setup(make_sshd: Any, folder: Path, access: str | None) -> tuple[Path, InternalSendmail]:
    listen, mta = free_port(), free_port()
    sshd = make_sshd(permitlisten=[f"127.0.0.1:{listen}"])
    forward = {
        "name": "smtp",
        "service": "smtp",
        "listen": f"127.0.0.1:{listen}",
        "target": f"127.0.0.1:{mta}",
        "domains": ["example.org"],
    }
    config = write_config(folder / "tk.toml", sshd, [forward])
    return config, InternalSendmail(folder / "internal", config, mta, access)


@pytest.mark.parametrize("trusting", [True, False], ids=["trusts-the-source", "as-it-comes"])
def test_check_names_an_internal_mta_that_relays_for_the_tunnel(
    make_sshd: Any, tmp_path: Path, trusting: bool, outcome: dict[str, Any]
) -> None:
    """Told to trust the tunnel's source (127.0.0.2), sendmail would relay for anyone on the
    relay: exit 1, open_relay true, and the words. As it comes it relays only for 127.0.0.1,
    which the tunnel no longer is: open_relay false, exit 0."""
    access = "Connect:127.0.0.2\tRELAY\n" if trusting else None
    config, mta = smtp_setup(make_sshd, tmp_path, access)
    try:
        code, forward, plain = check(config)
    finally:
        mta.stop()
    outcome.update(trusting=trusting, exit=code, open_relay=forward.get("open_relay"))
    assert forward["state"] == "up" and forward["probe"]["ok"], forward
    if trusting:
        assert code == 1 and forward["open_relay"] is True, forward
        assert OPEN_RELAY in forward["boundary"] and "Recipient ok" in forward["boundary"]
        assert "Connect:127.0.0.2 OK" in forward["boundary"]
        assert "mynetworks" in forward["boundary"] and "internal-kit" in forward["boundary"]
        assert "OPEN RELAY" in plain and OPEN_RELAY in plain
    else:
        assert code == 0 and forward["open_relay"] is False, forward
        assert "Relaying denied" in forward["boundary"]


def test_check_proves_the_boundary_through_a_running_supervisor(
    make_sshd: Any, tmp_path: Path
) -> None:
    """A supervisor holds the forward: check goes through it, the way a relay user would."""
    config, mta = smtp_setup(make_sshd, tmp_path, "Connect:127.0.0.2\tRELAY\n")
    supervisor = SupervisorProcess(config)
    try:
        supervisor.wait_forward("up", 15)
        code, forward, _ = check(config)
    finally:
        assert supervisor.stop() == 0
        mta.stop()
    # check could not listen itself (the supervisor holds the port): the answer came through
    # the supervisor's forward.
    assert code == 1 and forward["open_relay"] is True, forward


@pytest.mark.parametrize("allowed", ["127.0.0.1", "127.0.0.2"], ids=["old-kit", "source"])
def test_check_names_a_primary_that_refuses_the_tunnels_transfers(
    make_sshd: Any, tmp_path: Path, allowed: str, outcome: dict[str, Any]
) -> None:
    """A primary that allows transfers to 127.0.0.1 alone (the first relay kit's advice) would
    starve the relay's secondary once connections come from 127.0.0.2: check says so, with the
    line to add. Allowing 127.0.0.2, the transfer goes through."""
    need_tool("named")
    listen, port = free_port(), free_port()
    sshd = make_sshd(permitlisten=[f"127.0.0.1:{listen}"])
    forward = {
        "name": "dns",
        "service": "dns",
        "listen": f"127.0.0.1:{listen}",
        "target": f"127.0.0.1:{port}",
        "zones": ["example.org"],
    }
    config = write_config(tmp_path / "tk.toml", sshd, [forward])
    primary = tmp_path / "primary"
    primary.mkdir()
    (primary / "example.org.zone").write_text(PRIMARY_ZONE)
    conf = named_options(primary, port) + (
        'zone "example.org" { type primary; file "example.org.zone"; '
        f"allow-transfer {{ {allowed}; }}; }};\n"
    )
    with named(primary, conf, port):
        loaded(port)
        code, result, plain = check(config)
    (transfer,) = result["transfers"]
    outcome.update(allowed=allowed, exit=code, transfer_ok=transfer["transfer_ok"])
    assert result["probe"]["ok"], result
    if allowed == "127.0.0.1":
        assert code == 1 and transfer == {
            "zone": "example.org",
            "transfer_ok": False,
            "detail": "IXFR of example.org answered REFUSED",
        }, result
        assert NO_TRANSFER in result["boundary"]
        assert "allow-transfer { 127.0.0.2; };" in result["boundary"]
        assert "transfer example.org: REFUSED" in plain and NO_TRANSFER in plain
    else:
        assert code == 0 and transfer["transfer_ok"] is True, result
        assert transfer["detail"] == "IXFR of example.org at serial 2026112601 answered"
