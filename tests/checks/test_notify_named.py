"""NOTIFY over the tunnel with real BIND: the primary's change reaches the relay's secondary
within a probe or two when the dns forward has `notify`; without it, the secondary waits for its
refresh timer (an hour here)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from tests.relaykit.conftest import need_tool
from tests.support.bind import PRIMARY_ZONE, named, named_options, soa
from tests.support.configs import write_config
from tests.support.procs import SupervisorProcess
from tests.support.sshd import free_port, wait_until
from tunnelkeeper.config import load
from tunnelkeeper.relaykit.bind import named_conf

pytestmark = pytest.mark.timeout(120)

SERIAL = 2026112601


def serial_at(port: int) -> int | None:
    answer = soa(port)
    return answer.answer[0][0].serial if answer is not None and answer.answer else None


@pytest.mark.parametrize("notify", [True, False], ids=["notify", "without-notify"])
def test_a_zone_change_reaches_the_secondary(
    make_sshd: Any, tmp_path: Path, notify: bool, outcome: dict[str, Any]
) -> None:
    need_tool("named")
    primary_port, listen, secondary_port = free_port(), free_port(), free_port()
    sshd = make_sshd(start=False)
    sshd.set_authorized(
        options=f'restrict,port-forwarding,permitlisten="127.0.0.1:{listen}",'
        f'permitopen="127.0.0.1:{listen}",permitopen="127.0.0.1:{secondary_port}"'
    )
    sshd.start()
    forward: dict[str, Any] = {
        "name": "dns",
        "service": "dns",
        "listen": f"127.0.0.1:{listen}",
        "target": f"127.0.0.1:{primary_port}",
        "zones": ["example.org"],
    }
    if notify:
        forward["notify"] = f"127.0.0.1:{secondary_port}"
    cfg = write_config(tmp_path / "tk.toml", sshd, [forward], probe_interval=0.5)

    primary = tmp_path / "primary"
    primary.mkdir()
    zone = primary / "example.org.zone"
    # Refresh an hour: only a NOTIFY makes the secondary look again within this test.
    zone.write_text(PRIMARY_ZONE.replace(" 900 300 ", " 3600 3600 "))
    # The transfers come from the forward's source, 127.0.0.2 by default, as the kit says.
    primary_conf = named_options(primary, primary_port) + (
        'zone "example.org" { type primary; file "example.org.zone"; '
        "allow-transfer { 127.0.0.2; }; };\n"
    )
    secondary = tmp_path / "secondary"
    stanzas = named_conf(load(cfg))
    with named(primary, primary_conf, primary_port) as primary_named:
        supervisor = SupervisorProcess(cfg)
        try:
            supervisor.wait_forward("up", 15)
            with named(
                secondary, named_options(secondary, secondary_port) + stanzas, secondary_port
            ):
                wait_until(lambda: serial_at(secondary_port) == SERIAL, 20, what="first load")
                if notify:  # the first probe tells the secondary of the serial it has
                    wait_until(
                        lambda: f"NOTIFY example.org serial {SERIAL} " in supervisor.log(),
                        10,
                        what="the first NOTIFY",
                    )
                time.sleep(2)  # let the secondary settle: any refresh queued is done
                zone.write_text(zone.read_text().replace(str(SERIAL), str(SERIAL + 1)))
                changed = time.monotonic()
                os.kill(primary_named.pid, signal.SIGHUP)  # named reloads its zones
                wait_until(lambda: serial_at(primary_port) == SERIAL + 1, 10, what="primary")
                if notify:
                    wait_until(
                        lambda: serial_at(secondary_port) == SERIAL + 1, 15, what="secondary"
                    )
                    took = time.monotonic() - changed
                else:
                    time.sleep(5)
                    took = None
                    assert serial_at(secondary_port) == SERIAL  # still the old one
        finally:
            assert supervisor.stop() == 0
    log = supervisor.log()
    outcome.update(notify=notify, change_to_secondary_s=None if took is None else round(took, 2))
    if notify:
        assert "NOTIFY example.org serial 2026112602" in log and took is not None and took < 10
    else:
        assert "NOTIFY" not in log
