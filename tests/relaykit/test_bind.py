"""The real BIND 9.18 tools: named-checkconf on the stanzas, named-checkzone on the MX lines."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tunnelkeeper.config import Config
from tunnelkeeper.relaykit.bind import named_conf
from tunnelkeeper.relaykit.mx import mx_records

from .conftest import need_tool, run

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
