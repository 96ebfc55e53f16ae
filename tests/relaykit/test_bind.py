"""The real BIND 9.18 tools: named-checkconf on the stanzas, named-checkzone on the MX lines."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import dns.flags
import pytest

from tests.support.bind import PRIMARY_ZONE, named, named_options, soa
from tests.support.configs import write_config
from tests.support.procs import SupervisorProcess
from tests.support.sshd import free_port, wait_until
from tunnelkeeper.config import Config, load
from tunnelkeeper.relaykit.bind import named_conf
from tunnelkeeper.relaykit.mx import mx_records
from tunnelkeeper.relaykit.openssh import authorized_keys, sshd_config

from .conftest import need_tool, reverse_forward, run, write_tunnel_config

# The checks that make named-checkzone fail on a broken MX target instead of passing it.
STRICT = ["-i", "local", "-k", "fail", "-m", "fail", "-M", "fail", "-r", "fail"]


def checkconf(folder: Path, stanzas: str) -> str:
    """named-checkconf on a named.conf that includes `stanzas`; returns its canonical print."""
    checkconf = need_tool("named-checkconf")
    (folder / "tunnelkeeper.conf").write_text(stanzas)
    main = folder / "named.conf"
    main.write_text(
        f'options {{ directory "{folder}"; }};\ninclude "{folder / "tunnelkeeper.conf"}";\n'
    )
    return run([checkconf, "-p", main]).stdout


@pytest.mark.parametrize("legacy", [False, True], ids=["secondary", "legacy"])
def test_example_named_conf(tmp_path: Path, example: Config, legacy: bool) -> None:
    printed = checkconf(tmp_path, named_conf(example, legacy=legacy))
    kind, primaries = ("slave", "masters") if legacy else ("secondary", "primaries")
    for zone in ("example.org", "example.com"):
        assert f'zone "{zone}" {{\n\ttype {kind};\n\tfile "tunnelkeeper-{zone}.db";\n' in printed
    assert f"\t{primaries} {{\n\t\t127.0.0.1 port 5353;\n\t}};" in printed
    assert "server 127.0.0.1/32 {\n\ttcp-only yes;\n};" in printed


def test_two_relays_named_conf(tmp_path: Path, two_relays: Config) -> None:
    printed = checkconf(tmp_path, named_conf(two_relays))
    assert "server ::1/128 {\n\ttcp-only yes;\n};" in printed
    assert "\t\t::1 port 5353;" in printed
    assert 'zone "2.0.192.in-addr.arpa"' in printed


def zone_file(folder: Path, origin: str, records: str) -> Path:
    path = folder / f"{origin}.zone"
    path.write_text(
        "$TTL 300\n"
        f"{origin}. IN SOA ns1.{origin}. hostmaster.{origin}. 1 900 300 604800 300\n"
        f"{origin}. IN NS ns1.{origin}.\n"
        f"ns1.{origin}. IN A 192.0.2.53\n"
        f"mail.{origin}. IN A 192.0.2.25\n"
        f"{records}"
    )
    return path


def in_zone(records: str, origin: str) -> str:
    """The MX lines whose owner lies in the zone `origin`."""
    lines = [line for line in records.splitlines() if line and not line.startswith(";")]
    owned = [
        line
        for line in lines
        if line.split()[0] == f"{origin}." or line.split()[0].endswith(f".{origin}.")
    ]
    return "".join(f"{line}\n" for line in owned)


def checkzone(folder: Path, origin: str, records: str) -> subprocess.CompletedProcess[str]:
    return run(
        [need_tool("named-checkzone"), *STRICT, origin, zone_file(folder, origin, records)],
        check=False,
    )


@pytest.mark.parametrize(
    ("config_name", "relay_host", "zones"),
    [
        ("example", "relay.example.net", ["example.org", "example.com"]),
        ("two_relays", "mx-a.example.net.", ["example.org", "example.com"]),
    ],
)
def test_mx_records_pass_strict_checkzone(
    tmp_path: Path,
    request: pytest.FixtureRequest,
    config_name: str,
    relay_host: str,
    zones: list[str],
) -> None:
    config: Config = request.getfixturevalue(config_name)
    records = mx_records(config, "mail.example.org", relay_host)
    for origin in zones:
        owned = in_zone(records, origin)
        assert " MX   0 mail.example.org." in owned and " MX  10 " in owned
        proc = checkzone(tmp_path, origin, owned)
        assert proc.returncode == 0, proc.stdout + proc.stderr


def test_strict_checkzone_catches_the_trailing_dot_pitfall(tmp_path: Path) -> None:
    """The same check fails the hand-written line these generators never write."""
    proc = checkzone(tmp_path, "example.org", "example.org. IN MX 10 relay.example.net\n")
    assert proc.returncode != 0
    assert "relay.example.net.example.org" in proc.stdout


# -- a real secondary named pulling a zone through an SSH reverse forward ----------------------


@pytest.mark.parametrize("tcp_only", [True, False], ids=["as-generated", "without-tcp-only"])
def test_secondary_named_pulls_the_zone_through_the_tunnel(
    tmp_path: Path, make_sshd: Any, tcp_only: bool
) -> None:
    """Primary named <- ssh -R (the tunnel: TCP only) <- secondary named with named-conf.

    Without the generated `tcp-only` the secondary's SOA query goes out over UDP, which the
    tunnel does not carry, and the zone never loads: the control case shows the stanza matters.
    """
    need_tool("ssh")
    primary_port, tunnel_port, secondary_port = free_port(), free_port(), free_port()
    sshd = make_sshd(start=False)
    config = write_tunnel_config(tmp_path / "tk.toml", sshd, free_port(), tunnel_port, 25)
    sshd.authorized_keys.write_text(authorized_keys(config))
    sshd.extra_config = sshd_config(config)
    sshd.start()

    primary = tmp_path / "primary"
    primary.mkdir()
    (primary / "example.org.zone").write_text(PRIMARY_ZONE)
    # The transfers arrive from 127.0.0.1, where `ssh -R` hands them over.
    primary_conf = named_options(primary, primary_port) + (
        'zone "example.org" { type primary; file "example.org.zone"; '
        "allow-transfer { 127.0.0.1; }; };\n"
    )
    secondary = tmp_path / "secondary"
    stanzas = named_conf(config)
    if not tcp_only:
        stanzas = stanzas.replace("\ttcp-only yes;\n", "")
    log = secondary / "named.log"
    with (
        named(primary, primary_conf, primary_port),
        reverse_forward(sshd, tunnel_port, primary_port),
        named(secondary, named_options(secondary, secondary_port) + stanzas, secondary_port),
    ):
        if not tcp_only:
            wait_until(
                lambda: "refresh: failure trying primary" in log.read_text(),
                15,
                what="the secondary's refresh over UDP to fail",
            )
            answer = soa(secondary_port)
            assert answer is not None and not answer.answer
            return
        answer = wait_until(
            lambda: (a := soa(secondary_port)) is not None and a.answer and a,
            20,
            what="the secondary to load example.org",
        )
    assert answer.flags & dns.flags.AA  # served with authority: the zone was transferred
    assert answer.answer[0][0].serial == 2026112601
    assert (secondary / "tunnelkeeper-example.org.db").exists()
    assert "Transfer status: success" in log.read_text()


def test_outbound_named_conf_allows_the_tunnels_notify(tmp_path: Path, outbound: Config) -> None:
    for legacy in (False, True):
        printed = checkconf(tmp_path, named_conf(outbound, legacy=legacy))
        for zone in ("example.org", "example.com"):
            stanza = printed.split(f'zone "{zone}" {{', 1)[1].split("\n};", 1)[0]
            assert "allow-notify {\n\t\t127.0.0.1/32;\n\t};" in stanza


def test_notify_source_follows_the_address_family(tmp_path: Path) -> None:
    """sshd connects to an IPv6 loopback notify address from ::1; a zone without notify gets
    no allow-notify; named-checkconf takes both."""
    path = tmp_path / "tk.toml"
    path.write_text(
        '[[tunnel]]\nname = "t"\nhost = "relay.example.net"\nuser = "tunnel"\n'
        '[[tunnel.forward]]\nname = "dns"\nservice = "dns"\nlisten = "[::1]:5353"\n'
        'target = 53\nzones = ["example.org"]\nnotify = "[::1]:53"\n'
        '[[tunnel.forward]]\nname = "dns2"\nservice = "dns"\nlisten = 5354\n'
        'target = 53\nzones = ["example.net"]\n'
    )
    printed = checkconf(tmp_path, named_conf(load(path)))
    assert "allow-notify {\n\t\t::1/128;\n\t};" in printed
    assert printed.count("allow-notify") == 1


def test_secondary_named_refreshes_on_tunnelkeepers_notify(tmp_path: Path, make_sshd: Any) -> None:
    """Primary named <- tunnelkeeper's dns forward <- secondary named (named-conf). A serial
    change on the primary reaches the secondary within seconds although its refresh timer is
    900 s: tunnelkeeper's probe saw the change and sent NOTIFY over the tunnel, through the
    relay's sshd (permitopen from authorized-keys and sshd-config) to the secondary."""
    primary_port, tunnel_port, secondary_port = free_port(), free_port(), free_port()
    sshd = make_sshd(start=False)
    forward = {
        "name": "dns",
        "service": "dns",
        "listen": f"127.0.0.1:{tunnel_port}",
        "target": f"127.0.0.1:{primary_port}",
        "zones": ["example.org"],
        "notify": f"127.0.0.1:{secondary_port}",
    }
    cfg = write_config(tmp_path / "tk.toml", sshd, [forward], probe_interval=1, probe_timeout=3)
    config = load(cfg)
    sshd.authorized_keys.write_text(authorized_keys(config))
    sshd.extra_config = sshd_config(config)
    sshd.start()

    primary = tmp_path / "primary"
    primary.mkdir()
    zone = primary / "example.org.zone"
    zone.write_text(PRIMARY_ZONE)
    # The transfers come from the forward's source, 127.0.0.2 by default, as the kit says.
    primary_conf = named_options(primary, primary_port) + (
        'zone "example.org" { type primary; file "example.org.zone"; '
        "allow-transfer { 127.0.0.2; }; };\n"
    )
    secondary = tmp_path / "secondary"
    stanzas = named_conf(config)
    assert "allow-notify { 127.0.0.1; };" in stanzas
    sup = None
    with named(primary, primary_conf, primary_port) as primary_proc:
        sup = SupervisorProcess(cfg)
        try:
            sup.wait_forward("up", 15)
            with named(
                secondary, named_options(secondary, secondary_port) + stanzas, secondary_port
            ):
                wait_until(lambda: serial(secondary_port) == 2026112601, 20, what="first load")
                zone.write_text(PRIMARY_ZONE.replace("2026112601", "2026112602"))
                t0 = time.monotonic()
                primary_proc.send_signal(signal.SIGHUP)  # named reloads its zones
                wait_until(lambda: serial(secondary_port) == 2026112602, 15, what="the new serial")
                took = time.monotonic() - t0
        finally:
            assert sup.stop() == 0
    log = (secondary / "named.log").read_text()
    assert "notify from 127.0.0.1#" in log, log
    print(f"\nMEASURED notify: serial change on the primary to the secondary {took:.2f}s")


def serial(port: int) -> int | None:
    answer = soa(port)
    return answer.answer[0][0].serial if answer is not None and answer.answer else None
