"""Postfix's own postmap on the transport map, from the Debian package unpacked beside sendmail.

Postfix and sendmail cannot both be installed from Debian packages, so unless a postmap is on
PATH the package is fetched with `apt-get download` and unpacked with `dpkg-deb -x` into a cache
folder; LD_LIBRARY_PATH finds its libraries there.
"""

from __future__ import annotations

from pathlib import Path

from tests.support.postfix import Postmap
from tunnelkeeper.config import Config
from tunnelkeeper.relaykit.postfix import transport


def build(folder: Path, postmap: Postmap, config: Config) -> Path:
    table = folder / "transport"
    table.write_text(transport(config))
    postmap.build(table)
    assert (folder / "transport.db").exists()
    return table


def test_example_transport(tmp_path: Path, postmap: Postmap, example: Config) -> None:
    table = build(tmp_path, postmap, example)
    for key in ("example.org", ".example.org", "example.com", ".example.com"):
        assert postmap.query(key, table) == "smtp:[127.0.0.1]:2525"
    # postmap -q looks up exact keys; trivial-rewrite walks up to ".example.org" itself.
    assert postmap.query("host.example.org", table) is None
    assert postmap.query("example.net", table) is None
    assert postmap.query("#", table) is None  # the header is comments, not entries


def test_two_relays_transport(tmp_path: Path, postmap: Postmap, two_relays: Config) -> None:
    table = build(tmp_path, postmap, two_relays)
    assert postmap.query(".lists.example.org", table) == "smtp:[127.0.0.1]:2525"
    assert postmap.query("example.com", table) == "smtp:[127.0.0.1]:2526"
    assert postmap.query(".example.com", table) is None  # subdomains = false
