"""Golden files for every generator on the example config and on two-relays.toml."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.relaykit.golden_files import check_golden
from tunnelkeeper.cli import main

from .conftest import GOLDEN, OUTBOUND, TWO_RELAYS, copy_example

COMMANDS: dict[str, list[str]] = {
    "mailertable": ["mailertable"],
    "sendmail-mailer.cf": ["sendmail-mailer"],
    "sendmail-mailer.mc": ["sendmail-mailer", "--m4"],
    "transport": ["transport"],
    "named.conf": ["named-conf"],
    "named-legacy.conf": ["named-conf", "--legacy"],
    "authorized_keys": ["authorized-keys"],
    "authorized_keys-dropbear": ["authorized-keys", "--sshd", "dropbear"],
    "sshd_config": ["sshd-config"],
}
EXAMPLE_COMMANDS = {
    **COMMANDS,
    "mx-records.txt": [
        "mx-records",
        "--internal-host",
        "mail.example.org",
        "--relay-host",
        "relay.example.net",
    ],
}
TWO_RELAYS_COMMANDS = {
    **COMMANDS,
    # Input with trailing dots and capitals comes out the same as without.
    "mx-records.txt": [
        "mx-records",
        "--internal-host",
        "Mail.Example.ORG.",
        "--relay-host",
        "mx-a.example.net.",
    ],
    "mailertable-mx-b": ["mailertable", "--tunnel", "mx-b"],
    "named-mx-b.conf": ["named-conf", "--tunnel", "mx-b"],
    "authorized_keys-mx-b": ["authorized-keys", "--tunnel", "mx-b"],
}


# Smarthost locals, NOTIFY, relay_mta, a locals-only tunnel.
OUTBOUND_COMMANDS: dict[str, list[str]] = {
    "smarthost.mc": ["smarthost", "--local", "submission"],
    "smarthost-postfix": ["smarthost", "--postfix", "--local", "smarthost", "--tunnel", "out"],
    "named.conf": ["named-conf"],
    "named-legacy.conf": ["named-conf", "--legacy"],
    "authorized_keys": ["authorized-keys"],
    "authorized_keys-dropbear": ["authorized-keys", "--sshd", "dropbear"],
    "sshd_config": ["sshd-config"],
}


KIT_IS_GENERATOR = {
    "mailertable": "mailertable",
    "named.conf.tunnelkeeper": "named.conf",
    "named.conf.tunnelkeeper-legacy": "named-legacy.conf",
    "sendmail-mailer.cf": "sendmail-mailer.cf",
    "sendmail-mailer.mc": "sendmail-mailer.mc",
    "sshd_config-tunnelkeeper.conf": "sshd_config",
    "transport": "transport",
}
AUTHORIZED = {"openssh": "", "dropbear": "-dropbear"}


def generate(argv: list[str], config: Path, capsys: pytest.CaptureFixture[str]) -> str:
    assert main([*argv, "-c", str(config)]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    return out


@pytest.mark.parametrize("name", EXAMPLE_COMMANDS)
def test_example(name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = copy_example(tmp_path)
    text = generate(EXAMPLE_COMMANDS[name], config, capsys)
    check_golden(GOLDEN / "example" / name, text)
    # Deterministic, and nothing about where the config lives leaks into the output.
    assert generate(EXAMPLE_COMMANDS[name], config, capsys) == text
    assert str(tmp_path) not in text


@pytest.mark.parametrize("name", TWO_RELAYS_COMMANDS)
def test_two_relays(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    text = generate(TWO_RELAYS_COMMANDS[name], TWO_RELAYS, capsys)
    check_golden(GOLDEN / "two-relays" / name, text)


@pytest.mark.parametrize("name", OUTBOUND_COMMANDS)
def test_outbound(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    text = generate(OUTBOUND_COMMANDS[name], OUTBOUND, capsys)
    check_golden(GOLDEN / "outbound" / name, text)
    assert generate(OUTBOUND_COMMANDS[name], OUTBOUND, capsys) == text


@pytest.mark.parametrize(
    ("sshd", "folder"), [("openssh", "example-kit"), ("dropbear", "example-dropbear-kit")]
)
def test_example_kit(
    sshd: str, folder: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = copy_example(tmp_path)
    out = tmp_path / "kit"
    assert main(["relay-kit", "-c", str(config), "--out", str(out), "--sshd", sshd]) == 0
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    printed = sorted(
        Path(line).relative_to(out).as_posix() for line in capsys.readouterr()[0].split()
    )
    assert printed == written
    # A kit file that one generator also writes is checked against that generator's golden
    # (the same bytes): only what the kit alone writes has goldens of its own.
    same = {**KIT_IS_GENERATOR, "authorized_keys": f"authorized_keys{AUTHORIZED[sshd]}"}
    for name in written:
        golden_file = GOLDEN / "example" / same[name] if name in same else GOLDEN / folder / name
        check_golden(golden_file, (out / name).read_text(encoding="utf-8"))
    own = sorted(
        p.relative_to(GOLDEN / folder).as_posix()
        for p in (GOLDEN / folder).rglob("*")
        if p.is_file()
    )
    assert [name for name in written if name not in same] == own


def test_two_relays_kit(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "kit"
    argv = [
        "relay-kit",
        "-c",
        str(TWO_RELAYS),
        "--out",
        str(out),
        "--internal-host",
        "mail.example.org",
    ]
    assert main(argv) == 0
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    for name in written:
        check_golden(GOLDEN / "two-relays-kit" / name, (out / name).read_text(encoding="utf-8"))


def test_outbound_kit(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Smarthost notes, NOTIFY and a locals-only relay account in the kit."""
    out = tmp_path / "kit"
    assert main(["relay-kit", "-c", str(OUTBOUND), "--out", str(out)]) == 0
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    for name in written:
        check_golden(GOLDEN / "outbound-kit" / name, (out / name).read_text(encoding="utf-8"))
    readme = (out / "out" / "README.md").read_text(encoding="utf-8")
    assert "Outgoing mail from the internal host (smarthost)" in readme
    assert "tunnelkeeper smarthost" in readme and "allow-notify" in readme
