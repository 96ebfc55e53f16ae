"""The ways out of a restrictive network to a relay, each built on real peers: a config for
tunnelkeeper, the relay at the end, and the peers in between by role."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.conftest import SmtpSink
from tests.support.bastion import hop, host_line
from tests.support.configs import write_config
from tests.support.firewall_kit import Rigs, smtp_forward
from tests.support.keyfiles import encrypted_copy, passphrase_file
from tests.support.sshd import Sshd, free_port

PASSPHRASE = "correct horse battery staple"
# tinyproxy reads BasicAuth words of letters, digits and "-._" only: no ":" to split at here.
PROXY_USER = ("tunnel", "pr0xy-pass.x")


@dataclass
class Route:
    """One way to the relay. `env` is what tunnelkeeper's process needs in its environment."""

    name: str
    cfg: Path
    relay: Sshd
    listen: int
    env: dict[str, str] = field(default_factory=dict)
    peers: dict[str, Any] = field(default_factory=dict)

    def full_env(self) -> dict[str, str]:
        return {**os.environ, **self.env}


def _config(rigs: Rigs, relay: Sshd, sink: SmtpSink, **tunnel: Any) -> tuple[Path, int]:
    listen = free_port()
    cfg = write_config(rigs.root / "tk.toml", relay, [smtp_forward(listen, sink)], **tunnel)
    return cfg, listen


def direct(rigs: Rigs, sink: SmtpSink, **tunnel: Any) -> Route:
    relay = rigs.relay()
    cfg, listen = _config(rigs, relay, sink, **tunnel)
    return Route("direct", cfg, relay, listen)


def jump(rigs: Rigs, sink: SmtpSink, **tunnel: Any) -> Route:
    """One bastion: it alone may reach the relay; known_hosts pins both."""
    relay = rigs.relay()
    bastion = rigs.bastion(relay)
    known = rigs.known_hosts(bastion, relay)
    cfg, listen = _config(rigs, relay, sink, jump=[hop(bastion)], known_hosts=known, **tunnel)
    return Route("jump", cfg, relay, listen, peers={"bastion": bastion})


def jump2(rigs: Rigs, sink: SmtpSink, **tunnel: Any) -> Route:
    """Two bastions in a chain: outer → inner → relay, each reaching only the next."""
    relay = rigs.relay()
    inner = rigs.bastion(relay, "inner")
    outer = rigs.bastion(inner, "outer")
    known = rigs.known_hosts(outer, inner, relay)
    hops = [hop(outer), hop(inner)]
    cfg, listen = _config(rigs, relay, sink, jump=hops, known_hosts=known, **tunnel)
    return Route("jump2", cfg, relay, listen, peers={"outer": outer, "inner": inner})


def _by_name(rigs: Rigs, relay: Sshd) -> Path:
    """known_hosts for the relay called "localhost": only a proxy that resolves it gets there."""
    path = rigs.root / "known_hosts.byname"
    path.write_text(host_line(relay, "localhost") + "\n")
    return path


def http(rigs: Rigs, sink: SmtpSink, **tunnel: Any) -> Route:
    """tinyproxy allowing CONNECT to the relay's port only; the relay named, not addressed."""
    relay = rigs.relay()
    proxy = rigs.tinyproxy(relay.port)
    known = _by_name(rigs, relay)
    cfg, listen = _config(
        rigs, relay, sink, host="localhost", known_hosts=known, proxy=proxy.url, **tunnel
    )
    return Route("http", cfg, relay, listen, peers={"proxy": proxy})


def http_auth(rigs: Rigs, sink: SmtpSink, *, auth_file: bool = True, **tunnel: Any) -> Route:
    """tinyproxy with Basic auth, and (unless not `auth_file`) the proxy_auth_file that
    satisfies it."""
    relay = rigs.relay()
    proxy = rigs.tinyproxy(relay.port, auth=PROXY_USER)
    auth = proxy.write_auth_file(rigs.root / "proxy-auth")
    if auth_file:
        tunnel["proxy_auth_file"] = str(auth)
    cfg, listen = _config(rigs, relay, sink, proxy=proxy.url, **tunnel)
    return Route("http-auth", cfg, relay, listen, peers={"proxy": proxy, "auth": auth})


def socks5(rigs: Rigs, sink: SmtpSink, **tunnel: Any) -> Route:
    """SOCKS5 (`ssh -D` through a third sshd), the relay named: the proxy resolves it."""
    relay = rigs.relay()
    socks = rigs.socks(relay)
    known = _by_name(rigs, relay)
    cfg, listen = _config(
        rigs, relay, sink, host="localhost", known_hosts=known, proxy=socks.url, **tunnel
    )
    return Route("socks5", cfg, relay, listen, peers={"socks": socks})


def passphrase(rigs: Rigs, sink: SmtpSink, **tunnel: Any) -> Route:
    """The identity encrypted; passphrase_file (0600, trailing newline) opens it."""
    relay = rigs.relay()
    locked = encrypted_copy(relay.client_key, rigs.root / "locked_rsa", PASSPHRASE)
    secret = passphrase_file(rigs.root / "passphrase", PASSPHRASE)
    cfg, listen = _config(rigs, relay, sink, identity=locked, passphrase_file=str(secret), **tunnel)
    return Route("passphrase", cfg, relay, listen, peers={"key": locked, "secret": secret})


def credential(rigs: Rigs, sink: SmtpSink, **tunnel: Any) -> Route:
    """passphrase_file as a bare name: a systemd credential in $CREDENTIALS_DIRECTORY."""
    relay = rigs.relay()
    locked = encrypted_copy(relay.client_key, rigs.root / "locked_rsa", PASSPHRASE)
    creds = rigs.root / "credentials"
    creds.mkdir(mode=0o700)
    passphrase_file(creds / "tk-passphrase", PASSPHRASE)
    cfg, listen = _config(
        rigs, relay, sink, identity=locked, passphrase_file="tk-passphrase", **tunnel
    )
    env = {"CREDENTIALS_DIRECTORY": str(creds)}
    return Route("credential", cfg, relay, listen, env=env, peers={"creds": creds})


def agent(rigs: Rigs, sink: SmtpSink, **tunnel: Any) -> Route:
    """agent = true: the key lives in an ssh-agent; only its .pub is on disk."""
    relay = rigs.relay()
    keydir = rigs.root / "agent-key"
    keydir.mkdir(mode=0o700)
    identity = keydir / "tunnel_rsa"
    shutil.copyfile(relay.client_key, identity)
    identity.chmod(0o600)
    shutil.copyfile(f"{relay.client_key}.pub", f"{identity}.pub")
    ssh_agent = rigs.agent(identity)
    identity.unlink()  # the private file is absent: only the agent can sign
    cfg, listen = _config(rigs, relay, sink, identity=identity, agent=True, **tunnel)
    env = {"SSH_AUTH_SOCK": str(ssh_agent.socket)}
    peers = {"agent": ssh_agent, "key": keydir}
    return Route("agent", cfg, relay, listen, env=env, peers=peers)


def certificate(
    rigs: Rigs,
    sink: SmtpSink,
    *,
    validity: str = "-5m:+1h",
    principal: str | None = None,
    beside_key: bool = False,
    **tunnel: Any,
) -> Route:
    """A relay that trusts a user CA and lists no plain key: only a certificate logs in.
    `certificate = PATH` names it, or with `beside_key` it is identity + "-cert.pub"."""
    relay = rigs.relay(start=False)
    ca = rigs.user_ca()
    ca.trust_in(relay)
    relay.start()
    out = None if beside_key else rigs.root / "tunnel-cert.pub"
    cert = ca.sign(relay.client_key, principal or relay.user, validity, out=out)
    if not beside_key:
        tunnel["certificate"] = str(cert)
    cfg, listen = _config(rigs, relay, sink, **tunnel)
    name = "certificate-beside-key" if beside_key else "certificate"
    return Route(name, cfg, relay, listen, peers={"ca": ca, "cert": cert})


ROUTES: dict[str, Callable[..., Route]] = {
    "direct": direct,
    "jump": jump,
    "jump2": jump2,
    "http": http,
    "http-auth": http_auth,
    "socks5": socks5,
    "passphrase": passphrase,
    "credential": credential,
    "agent": agent,
    "certificate": certificate,
    "certificate-beside-key": lambda rigs, sink, **kw: certificate(
        rigs, sink, beside_key=True, **kw
    ),
}
