"""The relay kit README's text for what goes out through the relay: locals, the smarthost,
and tunnelkeeper's DNS NOTIFY."""

from __future__ import annotations

from collections.abc import Sequence

from ..config import Forward, Tunnel
from .bind import notify_source


def locals_intro(tun: Tunnel) -> str:
    """The intro's second table: connections the internal host makes out through this relay."""
    if not tun.local:
        return ""
    rows = "\n".join(
        f"| {local.target} | {local.listen} | {local.service} ({local.name}) |"
        for local in tun.local
    )
    return f"""
The other way, tunnelkeeper opens channels through this relay (no listener here): the relay's
sshd connects to the address below, from 127.0.0.1, for whatever connects to the internal
host's port.

| the relay's sshd connects to | for the internal host's | what |
|---|---|---|
{rows}
"""


def smarthost_section(tun: Tunnel, number: int) -> str:
    """What the relay's MTA needs so that the internal mail server can send out through it."""
    targets = [local for local in tun.local if local.service == "smtp"]
    if not targets:
        return ""
    target = targets[0].target
    return f"""
## {number}. Outgoing mail from the internal host (smarthost)

The internal mail server sends all outgoing mail to tunnelkeeper's port on its own host, and
tunnelkeeper carries each connection through this relay to `{target}`: the relay's MTA sees
mail from 127.0.0.1 and relays it to the world. Nothing to install; check that it accepts it:

- sendmail relays anything that connects from 127.0.0.1 or ::1 without further ado (the
  `Relay_ok` rules of every sendmail.cf built from the .mc), and Debian's `/etc/mail/access`
  also has `Connect:127 RELAY`. It must listen on `{target}`: Debian's
  ``DAEMON_OPTIONS(`..., Addr=127.0.0.1')`` does, and so does a daemon on every address.
- Postfix relays for `mynetworks`, which includes 127.0.0.1 by default (Debian writes
  `mynetworks = 127.0.0.0/8 [::ffff:127.0.0.0]/104 [::1]/128`) through the default
  `smtpd_relay_restrictions = permit_mynetworks, ...`: `postconf mynetworks
  smtpd_relay_restrictions` shows both.

Test it here with `swaks --server {target.host} --port {target.port} --from
postmaster@$(hostname -f) --to someone@example.net`. Mail from the internal domains now
leaves from this relay: their SPF records must name it, and its address should have a PTR
record that names it.

The internal admin writes their side with `tunnelkeeper smarthost` (the sendmail.mc lines) or
`tunnelkeeper smarthost --postfix` (main.cf's `relayhost`); `tunnelkeeper check` there reports
this MTA's banner, as seen through the tunnel.
"""


def notify_paragraph(forwards: Sequence[Forward], zone: str) -> str:
    """How zone changes reach the secondary: tunnelkeeper's NOTIFY, or the refresh timer."""
    notified = [f for f in forwards if f.notify is not None]
    if not notified:
        return f"""\
NOTIFY is UDP and does not travel the tunnel, so changes arrive when the SOA refresh timer
fires; `rndc refresh {zone}` fetches them at once (or the dns forward's `notify` setting makes
tunnelkeeper send NOTIFY over the tunnel). Test:"""
    sources = ", ".join(dict.fromkeys(str(notify_source(f)) for f in notified))
    targets = ", ".join(dict.fromkeys(str(f.notify) for f in notified))
    return f"""\
The primary's own NOTIFY is UDP and does not travel the tunnel; instead tunnelkeeper sends one
over the tunnel (TCP) whenever a zone's serial changes, to {targets}, where named must listen.
It arrives from {sources}, which the stanzas' `allow-notify` names, and named refreshes at once.
`rndc refresh {zone}` fetches changes by hand. Test:"""
