"""Config loading: SPEC §2's file, validated once, errors naming file and key path."""

from __future__ import annotations

from pathlib import Path

import pytest

from tunnelkeeper import config
from tunnelkeeper.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]

MINIMAL = """
[[tunnel]]
name = "relay1"
host = "relay.example.net"
user = "tunnel"
  [[tunnel.forward]]
  name = "smtp"
  service = "smtp"
  listen = "2525"
  target = "127.0.0.1:25"
  domains = ["Example.ORG."]
"""


def load_text(tmp_path: Path, text: str) -> config.Config:
    path = tmp_path / "tunnelkeeper.toml"
    path.write_text(text)
    return config.load(path)


def error_of(tmp_path: Path, text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_text(tmp_path, text)
    return info.value


def test_example_config_loads() -> None:
    cfg = config.load(ROOT / "examples" / "tunnelkeeper.toml")
    tunnel = cfg.tunnel[0]
    assert tunnel.relay == "tunnel@relay.example.net:22"
    assert [f.name for f in tunnel.forward] == ["smtp", "dns"]
    assert tunnel.identity == ROOT / "examples" / "keys" / "tunnelkeeper_rsa"


def test_defaults_bare_port_and_relative_paths(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, MINIMAL)
    tunnel = cfg.tunnel[0]
    fwd = tunnel.forward[0]
    assert str(fwd.listen) == "127.0.0.1:2525"
    assert fwd.domains == ("example.org",)  # lower-cased, trailing dot dropped
    assert tunnel.identity == tmp_path / "keys" / "tunnelkeeper_rsa"
    assert tunnel.known_hosts == tmp_path / "keys" / "known_hosts"
    assert (tunnel.keepalive_interval, tunnel.keepalive_count_max) == (5, 3)
    assert tunnel.host_key_policy == "strict" and not tunnel.standby


def test_defaults_table_applies_to_every_tunnel_and_tunnels_override(tmp_path: Path) -> None:
    text = '[defaults]\nkeepalive_interval = 2\nuser = "shared"\n' + MINIMAL.replace(
        'user = "tunnel"\n', 'user = "tunnel"\nkeepalive_count_max = 7\n'
    )
    tunnel = load_text(tmp_path, text).tunnel[0]
    assert tunnel.keepalive_interval == 2 and tunnel.keepalive_count_max == 7
    assert tunnel.user == "tunnel"


def test_defaults_jump_proxy_and_relay_mta_reach_every_tunnel(tmp_path: Path) -> None:
    """Values [defaults] parses (a hop chain, a proxy, an address) are inherited as parsed."""
    second = MINIMAL.replace('"relay1"', '"relay2"').replace('"2525"', '"2526"')
    second = second.replace('user = "tunnel"\n', 'user = "tunnel"\njump = "bastion2"\n')
    text = (
        '[defaults]\njump = ["tk@bastion.example.net:2222", "hop2"]\n'
        'proxy = "socks5://127.0.0.1:1080"\nrelay_mta = "127.0.0.1:2500"\n' + MINIMAL + second
    )
    first, other = load_text(tmp_path, text).tunnel
    assert [str(h) for h in first.jump] == ["tk@bastion.example.net:2222", "hop2:22"]
    assert str(first.proxy) == "socks5://127.0.0.1:1080"
    assert str(first.relay_mta) == "127.0.0.1:2500"
    assert [str(h) for h in other.jump] == ["bastion2:22"]  # a tunnel's own value wins
    assert other.proxy == first.proxy and other.relay_mta == first.relay_mta


def test_defaults_host_user_and_from_for_two_accounts_on_one_relay(tmp_path: Path) -> None:
    """Any per-tunnel setting may be given in [defaults]: here the relay and its `from`."""
    one = MINIMAL.replace('host = "relay.example.net"\n', "")
    two = one.replace('"relay1"', '"relay2"').replace('"2525"', '"2526"')
    two = two.replace('user = "tunnel"\n', 'user = "tunnel2"\nfrom = ["10.0.0.0/8"]\n')
    text = '[defaults]\nhost = "MX.Example.NET"\nfrom = ["192.0.2.7"]\n' + one + two
    first, second = load_text(tmp_path, text).tunnel
    assert first.host == second.host == "mx.example.net"
    assert first.from_ == ("192.0.2.7",) and second.from_ == ("10.0.0.0/8",)
    assert (first.user, second.user) == ("tunnel", "tunnel2")


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('[defaults]\npassphrase_file = ""\n', "defaults.passphrase_file"),
        ('[supervisor]\nallow_root = "true"\n', "supervisor.allow_root"),  # true, not text
        ("[supervisor]\nhistory = 1\n", "supervisor.history"),
        ("[defaults]\nkeepalive_interval = 1e308\n", "defaults.keepalive_interval"),
        ("[defaults]\nbackoff_initial = 90\n", "defaults"),  # above backoff_max's default
        ('[defaults]\nidentity = " "\n', "defaults.identity"),
        ('[defaults]\nhost = "bad host"\n', "defaults.host"),
        ('[defaults]\nuser = "-x"\n', "defaults.user"),
        ('[defaults]\nfrom = ["a b"]\n', "defaults.from"),
    ],
)
def test_a_bad_default_is_named_where_it_is(tmp_path: Path, text: str, key: str) -> None:
    assert error_of(tmp_path, text + MINIMAL).key == key


@pytest.mark.parametrize(
    ("change", "key", "words"),
    [
        (
            ('name = "smtp"', 'name = "smtp"\n  colour = "red"'),
            "tunnel[0].forward[0].colour",
            "unknown key",
        ),
        (
            ('listen = "2525"', 'listen = "0.0.0.0:2525"'),
            "tunnel[0].forward[0].listen",
            "not a loopback address",
        ),
        (
            ('listen = "2525"', 'listen = "127.0.0.1:99999"'),
            "tunnel[0].forward[0].listen",
            "port must be",
        ),
        (('name = "relay1"', 'name = "Relay 1"'), "tunnel[0].name", "should match"),
        (('user = "tunnel"\n', ""), "tunnel[0].user", "required key is missing"),
        (('service = "smtp"', 'service = "imap"'), "tunnel[0].forward[0].service", "smtp"),
        (
            ('host = "relay.example.net"', 'host = "relay.example.net"\nport = "22"'),
            "tunnel[0].port",
            "integer",
        ),
        (
            ('domains = ["Example.ORG."]', 'domains = ["bad domain"]'),
            "tunnel[0].forward[0].domains",
            "not a valid mail domain",
        ),
    ],
)
def test_errors_name_file_and_key(
    tmp_path: Path, change: tuple[str, str], key: str, words: str
) -> None:
    error = error_of(tmp_path, MINIMAL.replace(*change))
    message = str(error)
    assert str(tmp_path / "tunnelkeeper.toml") in message
    assert key in message, message
    assert words in message, message


def test_public_listen_allowed_when_explicit(tmp_path: Path) -> None:
    text = MINIMAL.replace(
        'listen = "2525"', 'allow_public_listen = true\n  listen = "0.0.0.0:2525"'
    )
    assert str(load_text(tmp_path, text).tunnel[0].forward[0].listen) == "0.0.0.0:2525"


def test_duplicate_names_and_listens_are_refused(tmp_path: Path) -> None:
    twice = MINIMAL + MINIMAL.split("\n", 6)[-1].replace('"smtp"', '"smtp"', 1)
    assert "duplicate" in str(error_of(tmp_path, MINIMAL + MINIMAL))
    assert "duplicate" in str(error_of(tmp_path, twice))


def test_dns_forward_needs_zones(tmp_path: Path) -> None:
    text = MINIMAL.replace('service = "smtp"', 'service = "dns"').replace(
        'domains = ["Example.ORG."]', ""
    )
    assert "needs 'zones'" in str(error_of(tmp_path, text))


def test_toml_syntax_error_and_missing_file(tmp_path: Path) -> None:
    assert "not valid TOML" in str(error_of(tmp_path, "[[tunnel]\n"))
    with pytest.raises(ConfigError, match="file not found"):
        config.load(tmp_path / "nope.toml")


def test_find_config_order(tmp_path: Path) -> None:
    env = {"XDG_CONFIG_HOME": str(tmp_path / "xdg")}
    with pytest.raises(ConfigError, match="no configuration found"):
        config.find_config(None, env, cwd=tmp_path)
    xdg = tmp_path / "xdg" / "tunnelkeeper" / "config.toml"
    xdg.parent.mkdir(parents=True)
    xdg.write_text("")
    assert config.find_config(None, env, cwd=tmp_path) == xdg
    (tmp_path / "tunnelkeeper.toml").write_text("")
    assert config.find_config(None, env, cwd=tmp_path) == tmp_path / "tunnelkeeper.toml"
    assert config.find_config(
        None, {**env, "TUNNELKEEPER_CONFIG": "/x.toml"}, cwd=tmp_path
    ) == Path("/x.toml")
    assert config.find_config("/y.toml", env, cwd=tmp_path) == Path("/y.toml")


def test_default_control_socket() -> None:
    assert config.default_control_socket({"XDG_RUNTIME_DIR": "/run/user/7"}) == Path(
        "/run/user/7/tunnelkeeper/control.sock"
    )
    assert config.default_control_socket({"XDG_STATE_HOME": "/s"}) == Path(
        "/s/tunnelkeeper/control.sock"
    )
