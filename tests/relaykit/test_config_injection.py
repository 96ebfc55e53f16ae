"""Config values cannot add, split or reshape lines in the files written for the relay."""

from __future__ import annotations

import copy
import shutil
import tempfile
import unicodedata
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tunnelkeeper import config
from tunnelkeeper.errors import ConfigError
from tunnelkeeper.relaykit.bind import named_conf
from tunnelkeeper.relaykit.mailertable import mailertable
from tunnelkeeper.relaykit.mx import mx_records
from tunnelkeeper.relaykit.openssh import authorized_keys, sshd_config
from tunnelkeeper.relaykit.postfix import transport
from tunnelkeeper.relaykit.sendmail import mailer_definitions, mailer_definitions_m4

PUB = Path(__file__).parent / "data" / "example_rsa.pub"

BASE: dict[str, Any] = {
    "supervisor": {"control_socket": "run/control.sock", "on_down": ["/bin/true", "down"]},
    "tunnel": [
        {
            "name": "relay1",
            "host": "relay.example.net",
            "user": "tunnel",
            "identity": "keys/id_rsa",
            "known_hosts": "keys/known_hosts",
            "from": ["192.0.2.0/24"],
            "forward": [
                {
                    "name": "smtp",
                    "service": "smtp",
                    "listen": "127.0.0.1:2525",
                    "target": "127.0.0.1:25",
                    "domains": ["example.org"],
                },
                {
                    "name": "dns",
                    "service": "dns",
                    "listen": "127.0.0.1:5353",
                    "target": "127.0.0.1:53",
                    "zones": ["example.net"],
                },
            ],
        }
    ],
}
INTERNAL, RELAY = "mail.example.org", "relay.example.net"

# Every string slot of BASE, plus the two host names mx-records takes on its command line.
SLOTS: list[tuple[Any, ...]] = [
    ("supervisor", "control_socket"),
    ("supervisor", "on_down", 1),
    ("tunnel", 0, "name"),
    ("tunnel", 0, "host"),
    ("tunnel", 0, "user"),
    ("tunnel", 0, "identity"),
    ("tunnel", 0, "known_hosts"),
    ("tunnel", 0, "from", 0),
    ("tunnel", 0, "forward", 0, "name"),
    ("tunnel", 0, "forward", 0, "listen"),
    ("tunnel", 0, "forward", 0, "target"),
    ("tunnel", 0, "forward", 0, "domains", 0),
    ("tunnel", 0, "forward", 1, "listen"),
    ("tunnel", 0, "forward", 1, "zones", 0),
    ("mx", "internal"),
    ("mx", "relay"),
]


def good(slot: tuple[Any, ...]) -> str:
    if slot[0] == "mx":
        return INTERNAL if slot[1] == "internal" else RELAY
    node: Any = BASE
    for part in slot:
        node = node[part]
    assert isinstance(node, str)
    return node


# Pieces that end a line, a quoted value or a field in one of the generated files.
HOSTILE = [
    "\n",
    "\r",
    "\r\n",
    "\n.org",
    "\nevil.org",
    "\x00",
    "\x0b",
    "\x0c",
    "\x1c",
    "\x85",
    "\u2028",
    "\u2029",
    "\u202e",
    "\x1b[2J",
    "\t",
    " ",
    '"',
    '" ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA attacker',
    '",permitopen="*:*',
    ",",
    ";",
    "#",
    "'",
    "\\",
    '}; zone "evil" {',
    "\nMatch all\n\tPermitOpen any",
]


@st.composite
def hostile_value(draw: st.DrawFn, slot: tuple[Any, ...]) -> str:
    """The slot's good value with hostile pieces inside, or a hostile string of its own."""
    kind = draw(st.integers(0, 3))
    if kind == 0:
        return draw(st.text(max_size=24))
    if kind == 1:
        return draw(st.text(alphabet="ab.-:[]/*!?,\"' \t\n\r\x0b\x85\u2028", max_size=24))
    value = good(slot)
    for _ in range(draw(st.integers(1, 2))):
        at = draw(st.integers(0, len(value)))
        value = value[:at] + draw(st.sampled_from(HOSTILE)) + value[at:]
    return value


@pytest.fixture(scope="module")
def folder() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="tk-inject-"))
    (path / "keys").mkdir()
    shutil.copy(PUB, path / "keys" / "id_rsa.pub")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def generators(internal: str, relay: str) -> dict[str, Callable[[config.Config], str]]:
    return {
        "mailertable": mailertable,
        "transport": transport,
        "named-conf": named_conf,
        "named-conf --legacy": lambda c: named_conf(c, legacy=True),
        "authorized-keys": authorized_keys,
        "sshd-config": sshd_config,
        "sendmail-mailer": mailer_definitions,
        "sendmail-mailer --m4": mailer_definitions_m4,
        "mx-records": lambda c: mx_records(c, internal, relay),
    }


def outputs(doc: dict[str, Any], folder: Path, internal: str, relay: str) -> dict[str, str]:
    """Each generator's text; a generator that refuses the config (ConfigError) is left out."""
    cfg = config.from_dict(doc, folder / "tunnelkeeper.toml")
    texts = {}
    for name, generate in generators(internal, relay).items():
        try:
            texts[name] = generate(cfg)
        except ConfigError:
            continue
    return texts


COMMENTS = ("#", "//", ";", "dnl")


def shape(text: str) -> list[tuple[str, int | str]]:
    """One entry per line: a comment's marker, or how many fields a data line has."""
    out: list[tuple[str, int | str]] = []
    for line in text.split("\n"):
        marker = next((m for m in COMMENTS if line.lstrip().startswith(m)), None)
        out.append(("comment", marker) if marker else ("data", len(line.split())))
    return out


def assert_clean(name: str, text: str) -> None:
    # splitlines() also breaks at \r, \v, \f, \x1c-\x1e, \x85, \u2028 and \u2029: none may hide
    # in a line, nor any other control character but the tab.
    assert text.splitlines() == text.split("\n")[:-1], name
    bad = [c for c in text if c not in "\n\t" and unicodedata.category(c) in ("Cc", "Cf")]
    assert not bad, (name, bad)


def test_baseline_outputs_are_all_there(folder: Path) -> None:
    texts = outputs(BASE, folder, INTERNAL, RELAY)
    assert sorted(texts) == sorted(generators(INTERNAL, RELAY))
    assert 'from="192.0.2.0/24"' in texts["authorized-keys"]


def test_from_cannot_add_a_second_key_line(folder: Path) -> None:
    doc = copy.deepcopy(BASE)
    doc["tunnel"][0]["from"] = ['x" ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA attacker']
    with pytest.raises(ConfigError, match=r"tunnel\[0\]\.from"):
        config.from_dict(doc, folder / "tunnelkeeper.toml")


@pytest.mark.parametrize(
    "pattern",
    ["relay.example.net", "192.0.2.1", "10.0.0.0/8", "*.example.net", "!10.1.*,2001:db8::/32"],
)
def test_from_takes_openssh_patterns(folder: Path, pattern: str) -> None:
    doc = copy.deepcopy(BASE)
    doc["tunnel"][0]["from"] = [pattern]
    text = authorized_keys(config.from_dict(doc, folder / "tunnelkeeper.toml"))
    assert f'from="{pattern}"' in text


def test_domain_ending_in_a_newline_routes_nothing_extra(folder: Path) -> None:
    doc = copy.deepcopy(BASE)
    doc["tunnel"][0]["forward"][0]["domains"] = ["evil\n.org"]
    with pytest.raises(ConfigError, match=r"tunnel\[0\]\.forward\[0\]\.domains"):
        config.from_dict(doc, folder / "tunnelkeeper.toml")


def test_host_ending_in_a_newline_is_refused(folder: Path) -> None:
    doc = copy.deepcopy(BASE)
    doc["tunnel"][0]["host"] = "relay.example.net\n"
    with pytest.raises(ConfigError, match=r"tunnel\[0\]\.host"):
        config.from_dict(doc, folder / "tunnelkeeper.toml")


def test_mx_host_with_a_newline_is_refused(folder: Path) -> None:
    cfg = config.from_dict(BASE, folder / "tunnelkeeper.toml")
    with pytest.raises(ConfigError, match="internal_host"):  # the CLI names its flag
        mx_records(cfg, "mail\n.example.org", RELAY)


@pytest.mark.parametrize("char", ["\x1b", "\t", "\r", "\x7f", "\u2028", "\u202e"])
def test_control_characters_are_refused_naming_the_key(folder: Path, char: str) -> None:
    doc = copy.deepcopy(BASE)
    doc["supervisor"]["on_down"] = ["/bin/true", f"tunnel{char}down"]
    with pytest.raises(ConfigError, match=r"supervisor\.on_down: .*control character") as info:
        config.from_dict(doc, folder / "tunnelkeeper.toml")
    assert char not in str(info.value)  # the message shows it escaped


@settings(
    max_examples=600,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(st.data())
def test_no_config_value_changes_the_shape_of_generated_files(
    folder: Path, data: st.DataObject
) -> None:
    baseline = {name: shape(text) for name, text in outputs(BASE, folder, INTERNAL, RELAY).items()}
    doc = copy.deepcopy(BASE)
    mx = {"internal": INTERNAL, "relay": RELAY}
    for slot in data.draw(st.lists(st.sampled_from(SLOTS), min_size=1, max_size=3, unique=True)):
        value = data.draw(hostile_value(slot))
        if slot[0] == "mx":
            mx[slot[1]] = value
            continue
        node: Any = doc
        for part in slot[:-1]:
            node = node[part]
        node[slot[-1]] = value
    try:
        texts = outputs(doc, folder, mx["internal"], mx["relay"])
    except ConfigError:
        return  # refused: nothing is written
    for name, text in texts.items():
        assert_clean(name, text)
        assert shape(text) == baseline[name], name
