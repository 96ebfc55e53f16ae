"""The internal kit: golden files, and each file checked by its real tool — postconf (Postfix
unpacked from Debian's package), named-checkconf and a real named, makemap and a real sendmail
daemon that shows the access lines do what the README says."""

from __future__ import annotations

import os
import shutil
import smtplib
import time
from pathlib import Path

import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import dns.xfr
import dns.zone
import pytest

from tests.relaykit.golden_files import check_golden
from tests.support.bind import PRIMARY_ZONE, loaded, named, named_options
from tests.support.postfix import unpacked_postfix
from tests.support.sendmail import InternalSendmail
from tests.support.sshd import free_port
from tunnelkeeper.cli import main
from tunnelkeeper.relaykit.internal_kit import internal_kit

from .conftest import GOLDEN, HERE, copy_example, need_tool, run

INTERNAL = HERE / "configs" / "internal.toml"


def write(config: Path, out: Path, capsys: pytest.CaptureFixture[str]) -> list[str]:
    assert main(["internal-kit", "-c", str(config), "--out", str(out)]) == 0
    printed, err = capsys.readouterr()
    assert err == ""
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert sorted(Path(line).relative_to(out).as_posix() for line in printed.split()) == written
    return written


@pytest.mark.parametrize(
    ("name", "folder"), [("example", "example-internal-kit"), ("internal", "internal-kit")]
)
def test_golden(name: str, folder: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = copy_example(tmp_path) if name == "example" else INTERNAL
    written = write(config, tmp_path / "kit", capsys)
    for file in written:
        check_golden(GOLDEN / folder / file, (tmp_path / "kit" / file).read_text("utf-8"))
    assert written == sorted(p.name for p in (GOLDEN / folder).iterdir())
    # Deterministic: the same config gives the same bytes, wherever it lives.
    again = write(config, tmp_path / "again", capsys)
    for file in again:
        same = (tmp_path / "again" / file).read_bytes() == (tmp_path / "kit" / file).read_bytes()
        assert same and str(tmp_path).encode() not in (tmp_path / "kit" / file).read_bytes()


def test_what_the_kit_holds(tmp_path: Path) -> None:
    """master.cf only with proxy_protocol; the smarthost files only with an smtp local; a
    forward without a source of its own is named, and no source reaches mynetworks."""
    from tunnelkeeper.config import load

    files = internal_kit(load(INTERNAL))
    assert "postfix-master.cf" in files and "smarthost.mc" in files
    assert 'mx-b/smtp-old has source = ""' in files["sendmail-access"]
    assert "mx-b/dns6 has an IPv6 target" in files["named.conf.tunnelkeeper-acl"]
    assert files["postfix-main.cf"].endswith("\nmynetworks = 127.0.0.1/32 [::1]/128\n")
    example = internal_kit(load(copy_example(tmp_path)))
    assert "postfix-master.cf" not in example and not any(
        n.startswith("smarthost") for n in example
    )


# -- Postfix: postconf reads main.cf and master.cf built from the kit ------------------------


def test_postconf_reads_the_kits_main_and_master_cf(tmp_path: Path) -> None:
    root = unpacked_postfix() if not shutil.which("postconf") else None
    postconf = root / "usr/sbin/postconf" if root else Path(need_tool("postconf"))
    env = {**os.environ, "LD_LIBRARY_PATH": str(root / "usr/lib/postfix")} if root else None
    from tunnelkeeper.config import load

    files = internal_kit(load(INTERNAL))
    etc = tmp_path / "etc"
    etc.mkdir()
    # Debian's main.cf as it comes, its mynetworks replaced by the kit's.
    base = "compatibility_level = 3.6\nmail_owner = daemon\nsetgid_group = mail\n"
    (etc / "main.cf").write_text(base + files["postfix-main.cf"])
    master = (root / "usr/share/postfix/master.cf.dist") if root else Path("/etc/postfix/master.cf")
    (etc / "master.cf").write_text(master.read_text() + files["postfix-master.cf"])
    for path in (etc / "main.cf", etc / "master.cf"):  # postconf waits on a file this new
        os.utime(path, (time.time() - 3600, time.time() - 3600))

    def postconf_(*args: str) -> str:
        proc = run([postconf, "-c", etc, *args], env=env)
        assert proc.stderr == "", proc.stderr  # no warning: every line is one Postfix knows
        return proc.stdout

    assert postconf_("mynetworks") == "mynetworks = 127.0.0.1/32 [::1]/128\n"
    services = postconf_("-M", "127.0.0.1:10025/inet")
    assert services.split()[:2] == ["127.0.0.1:10025", "inet"] and services.split()[7] == "smtpd"
    assert postconf_("-P", "127.0.0.1:10025/inet/smtpd_upstream_proxy_protocol") == (
        "127.0.0.1:10025/inet/smtpd_upstream_proxy_protocol = haproxy\n"
    )


# -- BIND: named-checkconf on a named.conf that uses the ACL, and a real primary -------------


def acl_conf(folder: Path, acl: Path, port: int) -> str:
    """A primary as internal name servers are: recursion for its own networks, the tunnel
    kept out of it first, the zone's transfers allowed to the tunnel."""
    return named_options(folder, port).replace(
        "\trecursion no;\n",
        "\trecursion yes;\n"
        "\tallow-recursion { !tunnelkeeper; localnets; localhost; };\n"
        "\tallow-query-cache { !tunnelkeeper; localnets; localhost; };\n",
    ).replace("options {", f'include "{acl}";\noptions {{', 1) + (
        'zone "example.org" { type primary; file "example.org.zone"; '
        "allow-transfer { tunnelkeeper; }; };\n"
    )


def test_named_checkconf_takes_the_acl_where_the_kit_says(tmp_path: Path) -> None:
    from tunnelkeeper.config import load

    acl = tmp_path / "named.conf.tunnelkeeper-acl"
    acl.write_text(internal_kit(load(INTERNAL))["named.conf.tunnelkeeper-acl"])
    conf = tmp_path / "named.conf"
    conf.write_text(
        f'include "{acl}";\n'
        f'options {{ directory "{tmp_path}"; }};\n'
        'view "internal" {\n'
        "  match-clients { !tunnelkeeper; localnets; };\n"
        "  allow-recursion { !tunnelkeeper; localnets; localhost; };\n"
        "  allow-query-cache { !tunnelkeeper; localnets; localhost; };\n"
        '  zone "example.org" { type primary; file "internal.zone"; };\n'
        "};\n"
        'view "external" {\n'
        "  match-clients { any; };\n"
        "  recursion no;\n"
        '  zone "example.org" { type primary; file "example.org.zone";\n'
        "    allow-transfer { tunnelkeeper; }; };\n"
        "};\n"
    )
    printed = run([need_tool("named-checkconf"), "-p", conf]).stdout
    assert 'acl "tunnelkeeper" {\n\t127.0.0.2/32;\n};' in printed
    internal = printed.split('view "internal" {', 1)[1].split('view "external"', 1)[0]
    for clause in ("match-clients", "allow-recursion", "allow-query-cache"):
        assert f'\t{clause} {{\n\t\t!"tunnelkeeper";\n\t\t"localnets";' in internal
    assert 'allow-transfer  {\n\t\t\t"tunnelkeeper";\n\t\t};' in printed


def test_a_real_primary_with_the_acl(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """named with the kit's ACL as its README says: from 127.0.0.2 (the tunnel's source) the
    zone transfers and recursion is refused; from 127.0.0.3 (not in the ACL) no transfer."""
    port = free_port()
    folder = tmp_path / "primary"
    folder.mkdir()
    (folder / "example.org.zone").write_text(PRIMARY_ZONE)
    write(copy_example(tmp_path), tmp_path / "kit", capsys)
    acl = tmp_path / "kit" / "named.conf.tunnelkeeper-acl"
    with named(folder, acl_conf(folder, acl, port), port):
        loaded(port)
        zone = dns.zone.Zone("example.org")
        dns.query.inbound_xfr("127.0.0.1", zone, port=port, timeout=5, source="127.0.0.2")
        soa = zone.get_rdataset("@", "SOA")
        assert soa is not None and soa[0].serial == 2026112601
        with pytest.raises(dns.xfr.TransferError) as refused:
            dns.query.inbound_xfr(
                "127.0.0.1", dns.zone.Zone("example.org"), port=port, timeout=5, source="127.0.0.3"
            )
        assert refused.value.rcode == dns.rcode.REFUSED
        # Recursion for a name of the wider Internet: refused to the tunnel at once.
        query = dns.message.make_query("www.example.net", "A")
        answer = dns.query.tcp(query, "127.0.0.1", port=port, timeout=5, source="127.0.0.2")
        assert answer.rcode() == dns.rcode.REFUSED and not answer.flags & dns.flags.RA


# -- sendmail: makemap takes the lines, and a real daemon does what the README says ----------


def test_makemap_reads_the_access_lines(tmp_path: Path) -> None:
    from tunnelkeeper.config import load

    source = tmp_path / "access"
    source.write_text(internal_kit(load(INTERNAL))["sendmail-access"])
    makemap = need_tool("makemap")
    run([makemap, "hash", source], input=source.read_text())
    dump = run([makemap, "-u", "hash", source]).stdout
    assert sorted(tuple(line.split()) for line in dump.splitlines()) == [
        ("connect:127.0.0.2", "OK"),  # sendmail's access keys are case-folded
        ("connect:127.0.0.3", "OK"),
    ]


def rcpt(port: int, source: str, recipient: str) -> int:
    """The internal MTA's answer to RCPT TO, asked from `source`; never DATA."""
    with smtplib.SMTP("127.0.0.1", port, timeout=20, source_address=(source, 0)) as client:
        client.ehlo("relay.example.net")
        assert client.mail("someone@example.net")[0] == 250
        code, _ = client.rcpt(recipient)
        client.rset()
    return code


@pytest.mark.parametrize("with_kit", [True, False], ids=["kit-lines", "connect-127-only"])
def test_sendmail_with_connect_127_relay(
    tmp_path: Path, with_kit: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    """An access map that trusts all of 127 (as Debian's does) relays for 127.0.0.2; the kit's
    `Connect:127.0.0.2 OK` stops that, while mail for the host itself is still taken and
    127.0.0.1 (the host's own submission) still relays."""
    config = copy_example(tmp_path)
    write(config, tmp_path / "kit", capsys)
    access = "Connect:127\tRELAY\n"
    if with_kit:
        access += (tmp_path / "kit" / "sendmail-access").read_text()
    port = free_port()
    mta = InternalSendmail(tmp_path / "internal", config, port, access)
    try:
        relay_from_source = rcpt(port, "127.0.0.2", "someone@elsewhere.example")
        own_from_source = rcpt(port, "127.0.0.2", "postmaster@mail.example.org")
        relay_from_host = rcpt(port, "127.0.0.1", "someone@elsewhere.example")
    finally:
        mta.stop()
    assert own_from_source == 250 and relay_from_host == 250
    assert relay_from_source == (550 if with_kit else 250)
