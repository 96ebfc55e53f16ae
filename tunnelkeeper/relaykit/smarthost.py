"""The internal MTA's side of an smtp `[[tunnel.local]]`: sendmail .mc lines, Postfix relayhost."""

from __future__ import annotations

from ..config import Config, Local, Tunnel
from ..errors import ChooseTunnel, ConfigError
from .common import is_ipv6, select_tunnels

# A listen on every address is reached by this host's MTA on loopback.
_WILDCARDS = {"0.0.0.0": "127.0.0.1", "::": "::1"}


class ChooseLocal(ConfigError):
    """Several smtp locals could be the smarthost: name the one to use."""


def smtp_locals(config: Config, tunnel: str | None = None) -> list[tuple[Tunnel, Local]]:
    """The smtp locals, in config order, with the tunnel each belongs to."""
    return [
        (tun, local)
        for tun in select_tunnels(config, tunnel)
        for local in tun.local
        if local.service == "smtp"
    ]


def _label(tunnel: Tunnel, local: Local) -> str:
    return f"{tunnel.name}/{local.name}"


def pick_local(
    config: Config, name: str | None = None, tunnel: str | None = None
) -> tuple[Tunnel, Local]:
    """The one smtp local the internal MTA sends through.

    Raises ConfigError when there is none or `name` matches none, ChooseLocal when there are
    several and no `name`, ChooseTunnel when `name` is a local of several tunnels (the messages
    name them).
    """
    found = smtp_locals(config, tunnel)
    path = str(config.path)
    if not found:
        raise ConfigError(
            'no [[tunnel.local]] with service = "smtp" in this configuration: nothing for the '
            "internal mail server to send through",
            path=path,
        )
    labels = ", ".join(_label(tun, local) for tun, local in found)
    if name is not None:
        found = [(tun, local) for tun, local in found if local.name == name]
        if not found:
            raise ConfigError(f"no smtp local named {name!r}; there are: {labels}", path=path)
    if len(found) > 1:
        several = f"several smtp locals: {', '.join(_label(t, lc) for t, lc in found)}"
        raise (ChooseTunnel if name is not None else ChooseLocal)(several, path=path)
    return found[0]


def dial_host(local: Local) -> str:
    """Where this host's MTA connects to reach the local's listen."""
    return _WILDCARDS.get(local.listen.host, local.listen.host)


def _where(tunnel: Tunnel, local: Local) -> tuple[str, str]:
    return (
        f"{_label(tunnel, local)}: this host's {local.listen},",
        f"carried to {local.target} as seen on the relay {tunnel.host}.",
    )


def sendmail_mc(config: Config, name: str | None = None, tunnel: str | None = None) -> str:
    """The sendmail.mc lines that send all non-local mail to the local's listen port."""
    tun, local = pick_local(config, name, tunnel)
    host = dial_host(local)
    literal = f"IPv6:{host}" if is_ipv6(host) else host
    # m4 drops everything after dnl, so these comments do not reach sendmail.cf.
    lines = [
        "dnl sendmail.mc lines written by tunnelkeeper for the internal mail server: mail that",
        "dnl is not for this host goes out through the SSH tunnel's smarthost",
        *(f"dnl   {line}" for line in _where(tun, local)),
        "dnl Put them before the MAILER lines of /etc/mail/sendmail.mc (they set what",
        "dnl MAILER(smtp) defines), then rebuild sendmail.cf (Debian: sendmailconfig; elsewhere",
        "dnl make -C /etc/mail) and restart sendmail. Remove any other SMART_HOST first.",
        "dnl The relay mailer dials the tunnel port (its A= arguments); SMART_HOST names it",
        "dnl with relay: so that mail to address literals (user@[192.0.2.1]) takes the tunnel",
        "dnl too. MAIL_HUB and LUSER_RELAY, if set, use the relay mailer and this port as well.",
        "dnl Check: echo /parse postmaster@example.net | sendmail -bt ends in",
        f"dnl   mailer relay, host [{literal}], ... and echo =Mrelay | sendmail -bt shows",
        f"dnl   A=TCP $h {local.listen.port}",
        f"define(`SMART_HOST', `relay:[{literal}]')dnl",
        f"define(`RELAY_MAILER_ARGS', `TCP $h {local.listen.port}')dnl",
    ]
    return "\n".join(lines) + "\n"


def postfix_relayhost(config: Config, name: str | None = None, tunnel: str | None = None) -> str:
    """The main.cf `relayhost` line that sends all non-local mail to the local's listen port."""
    tun, local = pick_local(config, name, tunnel)
    value = f"[{dial_host(local)}]:{local.listen.port}"
    lines = [
        "# Postfix main.cf line written by tunnelkeeper for the internal mail server: mail that",
        "# is not for this host goes out through the SSH tunnel's smarthost",
        *(f"#   {line}" for line in _where(tun, local)),
        "# The brackets turn off the MX lookup. Replace any relayhost line in main.cf, or run",
        f"#   postconf -e 'relayhost = {value}' && postfix reload",
        f"relayhost = {value}",
    ]
    return "\n".join(lines) + "\n"
