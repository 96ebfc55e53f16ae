"""Hostile and mistaken configuration: every document loads or fails with a ConfigError."""

from __future__ import annotations

import copy
import datetime as dt
import math
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tunnelkeeper import config
from tunnelkeeper.errors import ConfigError

FUZZ = settings(
    max_examples=2500,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
FOLDER = Path(tempfile.gettempdir())

BASE: dict[str, Any] = {
    "supervisor": {"control_socket": "run/control.sock", "shutdown_grace": 5},
    "defaults": {"keepalive_interval": 5, "backoff_max": 30.0},
    "tunnel": [
        {
            "name": "relay1",
            "host": "relay.example.net",
            "user": "tunnel",
            "identity": "keys/id_rsa",
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
                    "listen": 5353,
                    "target": "53",
                    "zones": ["example.org"],
                },
            ],
        }
    ],
}

# Values a hurried or hostile hand might write, next to ones that are right.
WORDS = [
    "",
    " ",
    "\x00",
    "a\x00b",
    "keys/\x00id",
    "..",
    "/",
    "~",
    "127.0.0.1:25",
    "[::1]:25",
    "::1:25",
    "0.0.0.0:25",
    "[::]:25",
    "localhost:25",
    "relay.example.net:25",
    "127.0.0.1:0",
    "127.0.0.1:65536",
    "127.0.0.1:-1",
    "127.0.0.1:２５",
    "[fe80::1%eth0]:25",
    "25",
    "smtp",
    "dns",
    "tcp",
    "strict",
    "accept-new",
    "debug",
    "example.org",
    ".example.org",
    "-bad-.org",
    "x" * 300,
    "é.example",
    "relay1",
    "Relay",
    "true",
    "1e309",
    "nan",
]
scalars = st.one_of(
    st.sampled_from(WORDS),
    st.text(max_size=20),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(10**6), max_value=10**6),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, 1, 22, 25, 53, 2525, 65535, 65536, -1, 10**30, 0.0, 1e-300, -0.0]),
    st.sampled_from([math.inf, -math.inf, math.nan, 1e308]),
    st.datetimes(),
    st.dates(),
    st.times(),
)
nested = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=6,
)
values = st.one_of(st.sampled_from(WORDS), scalars, scalars, nested)
TABLE_KEYS: dict[str, list[str]] = {
    "top": ["supervisor", "defaults", "tunnel", "path"],
    "supervisor": sorted(config.SupervisorSettings.model_fields),
    "defaults": sorted(config.Defaults.model_fields),
    "tunnel": sorted(set(config.Tunnel.model_fields) - {"from_"} | {"from"}),
    "forward": sorted(config.Forward.model_fields),
}


@st.composite
def documents(draw: st.DrawFn) -> dict[str, Any]:
    """The good document with a few keys set to odd values, or removed, anywhere in it."""
    doc = copy.deepcopy(BASE)
    for _ in range(draw(st.integers(1, 3))):
        tunnel = doc["tunnel"][0] if isinstance(doc.get("tunnel"), list) and doc["tunnel"] else {}
        forwards = tunnel.get("forward") if isinstance(tunnel, dict) else None
        tables = [("top", doc), ("supervisor", doc.get("supervisor"))]
        tables += [("defaults", doc.get("defaults")), ("tunnel", tunnel)]
        if isinstance(forwards, list):
            tables += [("forward", f) for f in forwards]
        kind, table = draw(st.sampled_from([(k, t) for k, t in tables if isinstance(t, dict)]))
        key = draw(st.sampled_from(TABLE_KEYS[kind]) | st.text(max_size=10))
        if draw(st.integers(0, 5)) == 0:
            table.pop(key, None)
        else:
            table[key] = draw(values)
    return doc


def _check(loaded: config.Config) -> None:
    """What a loaded config promises, whatever went in."""
    for tunnel in loaded.tunnel:
        assert tunnel.identity.is_absolute() and tunnel.known_hosts.is_absolute()
        for path in (tunnel.identity, tunnel.known_hosts):
            assert "\x00" not in str(path)
        for name in config.TunnelSettings.model_fields:
            assert math.isfinite(getattr(tunnel, name)), name
        for fwd in tunnel.forward:
            assert fwd.listen.is_loopback or fwd.allow_public_listen
    assert math.isfinite(loaded.supervisor.shutdown_grace)


@FUZZ
@given(documents())
def test_from_dict_loads_or_raises_config_error(doc: dict[str, Any]) -> None:
    try:
        loaded = config.from_dict(doc, FOLDER / "fuzz.toml")
    except ConfigError as exc:
        assert str(exc).startswith(str(FOLDER / "fuzz.toml"))
        return
    _check(loaded)


GOOD_TOML = """\
[supervisor]
shutdown_grace = 5

[[tunnel]]
name = "relay1"
host = "relay.example.net"
user = "tunnel"
identity = "keys/id_rsa"

  [[tunnel.forward]]
  name = "smtp"
  service = "smtp"
  listen = "127.0.0.1:2525"
  target = "127.0.0.1:25"
  domains = ["example.org"]
"""


@st.composite
def mangled_toml(draw: st.DrawFn) -> str:
    """The good file with characters cut, doubled or replaced at random places."""
    text = GOOD_TOML
    for _ in range(draw(st.integers(1, 5))):
        at = draw(st.integers(0, len(text)))
        how = draw(st.sampled_from(["cut", "insert", "replace"]))
        piece = draw(
            st.sampled_from(['"', "[", "]", "=", "\n", "\\u0000", "inf", "#", "'", ".", ""])
        )
        piece = piece or draw(st.text(max_size=4))
        if how == "cut":
            text = text[:at] + text[at + draw(st.integers(1, 10)) :]
        elif how == "insert":
            text = text[:at] + piece + text[at:]
        else:
            text = text[:at] + piece + text[at + len(piece) :]
    return text


@FUZZ
@given(text=mangled_toml())
def test_load_mangled_files(text: str, fdir: Path) -> None:
    path = fdir / "tunnelkeeper.toml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        loaded = config.load(path)
    except ConfigError as exc:
        assert str(exc).startswith(str(path))
        return
    _check(loaded)


@pytest.mark.parametrize(
    ("text", "key", "words"),
    [
        ("x = " + "[" * 5000 + "]" * 5000, None, "nested"),
        (GOOD_TOML.replace("keys/id_rsa", "keys/\\u0000id_rsa"), "tunnel[0].identity", "NUL"),
        (GOOD_TOML.replace("shutdown_grace = 5", "shutdown_grace = inf"), "supervisor", "finite"),
        (GOOD_TOML + "keepalive_interval = nan\n", "tunnel[0].forward[0]", ""),
        (
            GOOD_TOML.replace('user = "tunnel"', 'user = "tunnel"\nconnect_timeout = inf'),
            "tunnel[0].connect_timeout",
            "finite",
        ),
        ('path = "/etc/passwd"\n' + GOOD_TOML, "path", "unknown key"),
        (
            GOOD_TOML.replace("127.0.0.1:2525", "0.0.0.0:2525"),
            "tunnel[0].forward[0].listen",
            "allow_public_listen",
        ),
        (
            GOOD_TOML.replace("127.0.0.1:2525", "[::]:2525"),
            "tunnel[0].forward[0].listen",
            "allow_public_listen",
        ),
        (
            GOOD_TOML.replace("127.0.0.1:2525", "relay.example.net:2525"),
            "tunnel[0].forward[0].listen",
            "allow_public_listen",
        ),
        (b"\xff\xfe not utf-8".decode("latin-1"), None, ""),
    ],
    ids=[
        "deep-nesting",
        "nul-in-path",
        "inf-grace",
        "nan-in-forward",
        "inf-timeout",
        "top-level-path",
        "public-v4",
        "public-v6",
        "public-name",
        "not-utf8",
    ],
)
def test_named_hostile_documents(text: str, key: str | None, words: str, fdir: Path) -> None:
    """Each found by the fuzzing above or asked for by the issue; each a ConfigError."""
    path = fdir / "tunnelkeeper.toml"
    path.write_bytes(text.encode("latin-1") if "not utf-8" in text else text.encode())
    with pytest.raises(ConfigError) as caught:
        config.load(path)
    message = str(caught.value)
    assert message.startswith(str(path)), message
    if key is not None:
        assert key in message, message
    assert words in message, message


def test_public_listen_allowed_only_when_asked(fdir: Path) -> None:
    path = fdir / "tunnelkeeper.toml"
    path.write_text(
        GOOD_TOML.replace("127.0.0.1:2525", "0.0.0.0:2525") + "  allow_public_listen = true\n"
    )
    assert str(config.load(path).tunnel[0].forward[0].listen) == "0.0.0.0:2525"


def test_datetime_values_are_config_errors() -> None:
    doc = copy.deepcopy(BASE)
    doc["tunnel"][0]["connect_timeout"] = dt.datetime(2026, 1, 1)
    with pytest.raises(ConfigError, match=r"tunnel\[0\]\.connect_timeout"):
        config.from_dict(doc, FOLDER / "x.toml")
