"""The generator verbs through `tunnelkeeper.cli.main`: exit codes, messages, stdout only."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tunnelkeeper.cli import main

from .conftest import REPO, TWO_RELAYS

GENERATORS = [
    ["mailertable"],
    ["sendmail-mailer"],
    ["sendmail-mailer", "--m4"],
    ["transport"],
    ["named-conf"],
    ["named-conf", "--legacy"],
    ["mx-records", "--internal-host", "mail.example.org", "--relay-host", "relay.example.net"],
    ["authorized-keys"],
    ["sshd-config"],
]


def cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize("argv", GENERATORS, ids=" ".join)
def test_unknown_tunnel_is_a_config_error(
    argv: list[str], example_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = cli([*argv, "-c", str(example_path), "--tunnel", "nope"], capsys)
    assert (code, out) == (2, "")
    assert "no tunnel named 'nope'" in err and str(example_path.resolve()) in err


def test_tunnel_filter(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(["authorized-keys", "-c", str(TWO_RELAYS), "--tunnel", "mx-b"], capsys)
    assert code == 0
    assert "tunnel mx-b" in out and "tunnel mx-a" not in out


def test_missing_public_key_names_the_file(
    example_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pub = example_path.parent / "keys" / "tunnelkeeper_rsa.pub"
    pub.unlink()
    for verb in ("authorized-keys", "relay-kit"):
        extra = ["--out", str(example_path.parent / "kit")] if verb == "relay-kit" else []
        code, out, err = cli([verb, "-c", str(example_path), *extra], capsys)
        assert (code, out) == (2, "")
        assert str(pub) in err and "tunnelkeeper keygen" in err
    assert not (example_path.parent / "kit").exists()  # nothing half-written


@pytest.mark.parametrize(
    "text",
    ["", "ssh-rsa\n", "ssh-rsa not-base64!\n", "ssh-ed25519 AAAAB3NzaC1yc2EAAAADAQABAAABAQC+\n"],
)
def test_malformed_public_key(
    text: str, example_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pub = write(example_path.parent / "keys" / "tunnelkeeper_rsa.pub", text)
    code, _, err = cli(["authorized-keys", "-c", str(example_path)], capsys)
    assert code == 2
    assert str(pub) in err and "not an OpenSSH public key" in err


def test_from_restricts_the_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(["authorized-keys", "-c", str(TWO_RELAYS), "--tunnel", "mx-a"], capsys)
    assert code == 0
    line = out.splitlines()[-1]
    assert ',command="/bin/false",from="192.0.2.10,2001:db8::/32" ssh-rsa AAAA' in line
    assert line.startswith('restrict,port-forwarding,permitlisten="127.0.0.1:2525",')


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--internal-host", "192.0.2.25", "must be a host name, not an address"),
        ("--internal-host", "mail", "give the fully qualified name"),
        ("--relay-host", "relay..example.net", "not a valid host name"),
        ("--relay-host", "-relay.example.net", "not a valid host name"),
    ],
)
def test_mx_records_bad_names(
    option: str,
    value: str,
    message: str,
    example_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = [
        "mx-records",
        "-c",
        str(example_path),
        "--internal-host",
        "mail.example.org",
        "--relay-host",
        "relay.example.net",
        f"{option}={value}",  # the = form, so that argparse takes "-relay…" as a value
    ]
    code, out, err = cli(argv, capsys)
    assert (code, out) == (2, "")
    assert option in err and message in err


@pytest.mark.parametrize("missing", ["--internal-host", "--relay-host"])
def test_mx_records_needs_both_hosts(
    missing: str, example_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["mx-records", "-c", str(example_path)]
    for option in ("--internal-host", "--relay-host"):
        if option != missing:
            argv += [option, "x.example.org"]
    code, out, err = cli(argv, capsys)
    assert (code, out) == (2, "")
    assert missing in err


NO_MAIL_NO_DNS = """\
[[tunnel]]
name = "t"
host = "relay.example.net"
user = "u"
  [[tunnel.forward]]
  name = "imap"
  listen = 1143
  target = 143
"""


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["mailertable"], "no smtp forward with 'domains'"),
        (["transport"], "no smtp forward with 'domains'"),
        (["sendmail-mailer"], "no smtp forward with 'domains'"),
        (["named-conf"], "no dns forward with 'zones'"),
    ],
)
def test_nothing_to_generate_is_a_config_error(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write(tmp_path / "t.toml", NO_MAIL_NO_DNS)
    code, out, err = cli([*argv, "-c", str(config)], capsys)
    assert (code, out) == (2, "")
    assert message in err


def test_kit_without_mail_or_dns(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write(tmp_path / "t.toml", NO_MAIL_NO_DNS)
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "tunnelkeeper_rsa.pub").write_text(
        (REPO / "tests/relaykit/data/example_rsa.pub").read_text()
    )
    code, _, _ = cli(["relay-kit", "-c", str(config), "--out", str(tmp_path / "kit")], capsys)
    assert code == 0
    assert sorted(p.name for p in (tmp_path / "kit").iterdir()) == [
        "README.md",
        "authorized_keys",
        "check-relay.sh",
        "sshd_config-tunnelkeeper.conf",
    ]
    readme = (tmp_path / "kit" / "README.md").read_text()
    assert "sendmail" not in readme and "BIND" not in readme
    script = (tmp_path / "kit" / "check-relay.sh").read_text()
    assert "sendmail" not in script and "named" not in script


CONFLICT = """\
[defaults]
user = "u"
[[tunnel]]
name = "a"
host = "a.example.net"
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
[[tunnel]]
name = "b"
host = "b.example.net"
  [[tunnel.forward]]
  name = "smtp"
  service = "smtp"
  listen = 2600
  target = 25
  domains = ["example.org"]
  [[tunnel.forward]]
  name = "dns"
  service = "dns"
  listen = 5400
  target = 53
  zones = ["example.org"]
"""


@pytest.mark.parametrize("verb", ["mailertable", "transport", "named-conf"])
def test_one_domain_two_ways_needs_tunnel(
    verb: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write(tmp_path / "t.toml", CONFLICT)
    code, out, err = cli([verb, "-c", str(config)], capsys)
    assert (code, out) == (2, "")
    assert "'example.org'" in err and "a/" in err and "b/" in err and "--tunnel" in err
    code, out, _ = cli([verb, "-c", str(config), "--tunnel", "b"], capsys)
    assert code == 0 and ("2600" in out or "5400" in out)


def test_ipv6_listen_spellings(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write(
        tmp_path / "t.toml",
        NO_MAIL_NO_DNS.replace('name = "imap"', 'name = "smtp"\n  service = "smtp"')
        .replace("listen = 1143", 'listen = "[::1]:2525"')
        .replace("target = 143", 'target = 25\n  domains = ["example.org"]'),
    )
    _, out, _ = cli(["mailertable", "-c", str(config)], capsys)
    assert "example.org   tk2525:[IPv6:::1]" in out
    _, out, _ = cli(["transport", "-c", str(config)], capsys)
    assert "example.org   smtp:[::1]:2525" in out


def test_grouped_help_lists_the_relay_verbs(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    relay = out.split("Relay configuration:")[1]
    for verb in (
        "mailertable",
        "sendmail-mailer",
        "transport",
        "named-conf",
        "mx-records",
        "authorized-keys",
        "sshd-config",
        "relay-kit",
    ):
        assert f"  {verb} " in relay


def test_generators_start_without_asyncssh_or_rich() -> None:
    """The verbs and the library import neither (CLI start-up stays fast)."""
    code = (
        "import sys, tunnelkeeper.cli as c\n"
        "c.build_parser()\n"
        "import tunnelkeeper.relaykit.kit\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('asyncssh', 'rich'))\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60, cwd=REPO)


def test_sshd_option(example_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(["authorized-keys", "-c", str(example_path), "--sshd", "dropbear"], capsys)
    assert code == 0
    assert out.splitlines()[-1].startswith("no-pty,no-agent-forwarding,no-X11-forwarding,")
    assert "Dropbear cannot limit listen ports per key" in out
    code, default, _ = cli(["authorized-keys", "-c", str(example_path)], capsys)
    assert code == 0 and default.splitlines()[-1].startswith("restrict,port-forwarding,")
    for verb in (["authorized-keys"], ["relay-kit", "--out", str(example_path.parent / "k")]):
        code, out, err = cli([*verb, "-c", str(example_path), "--sshd", "lsh"], capsys)
        assert (code, out) == (2, "")
        assert "invalid choice: 'lsh'" in err
