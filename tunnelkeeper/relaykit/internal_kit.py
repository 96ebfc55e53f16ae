"""The internal kit: what the INTERNAL host's mail and name servers need so that a tunnelled
connection is never trusted as one of their own host's, with a README that says why."""

from __future__ import annotations

from ..config import Config
from .common import forwards_of
from .internal_files import (
    named_acl,
    postfix_main,
    postfix_master,
    proxied,
    sendmail_access,
    sources,
)
from .smarthost import postfix_relayhost, sendmail_mc, smtp_locals

KERNEL = "the kernel's choice"
README = "README.md"
POSTFIX_MAIN = "postfix-main.cf"
POSTFIX_MASTER = "postfix-master.cf"
SENDMAIL_ACCESS = "sendmail-access"
NAMED_ACL = "named.conf.tunnelkeeper-acl"


def internal_kit(config: Config) -> dict[str, str]:
    """The kit as {file name: text}, for every tunnel (they all end at this one host)."""
    files = {README: ""}  # first in the listing; written last, when the rest is known
    mail = bool(forwards_of(config, "smtp"))
    if mail:
        files[POSTFIX_MAIN] = postfix_main(config)
        if proxied(config):
            files[POSTFIX_MASTER] = postfix_master(config)
        files[SENDMAIL_ACCESS] = sendmail_access(config)
    if forwards_of(config, "dns"):
        files[NAMED_ACL] = named_acl(config)
    files.update(_smarthost_files(config))
    files[README] = _readme(config, files)
    return files


def _smarthost_files(config: Config) -> dict[str, str]:
    """The smarthost lines for each smtp local (named apart when there are several)."""
    found = smtp_locals(config)
    files = {}
    for tunnel, local in found:
        suffix = "" if len(found) == 1 else f"-{tunnel.name}-{local.name}"
        files[f"smarthost{suffix}.mc"] = sendmail_mc(config, local.name, tunnel.name)
        files[f"smarthost-postfix{suffix}.cf"] = postfix_relayhost(config, local.name, tunnel.name)
    return files


_WHAT = {
    POSTFIX_MAIN: "main.cf's `mynetworks`: this host's own loopback addresses, no source",
    POSTFIX_MASTER: "master.cf: an smtpd that reads the PROXY header, per proxied target",
    SENDMAIL_ACCESS: "/etc/mail/access lines: the sources may send mail here, never relay",
    NAMED_ACL: 'BIND\'s `acl "tunnelkeeper"`, and where named.conf uses it',
}


def _readme(config: Config, files: dict[str, str]) -> str:
    ways = [(t, f) for s in ("smtp", "dns", "tcp") for t, f in forwards_of(config, s)]
    rows = "\n".join(
        f"| {t.name}/{f.name} | {f.service} | {f.listen} on {t.host} | {f.target} | "
        f"{f.source_address or KERNEL} |"
        for t, f in ways
    )
    listed = "\n".join(
        f"| `{name}` | {_WHAT.get(name, 'smarthost lines (see `tunnelkeeper smarthost`)')} |"
        for name in files
        if name != README
    )
    dns_sources = ", ".join(sources(forwards_of(config, "dns"))) or "the ACL's addresses"
    sections = [
        f"""\
# tunnelkeeper internal kit

For the admin of the INTERNAL host, where tunnelkeeper runs. The relay is somebody else's
host, with shell users of its own; every one of them can connect to the forwards' listen
ports there, and each such connection reaches the servers below through the tunnel. Those
servers must never take it for one of their own host's: an MTA that trusts it relays spam for
anyone on the relay, and a name server that trusts it hands over internal zones and recursion.

tunnelkeeper connects to each target from the forward's `source` address (127.0.0.2 by
default for a 127.x target), so sendmail and BIND as they come already refuse it what they
keep for 127.0.0.1. This kit is for the sites whose configuration trusts all of 127.0.0.0/8,
or the loopback networks, and for the zone transfers the relay's secondary needs.

| forward | service | listens on the relay | target here | connections come from |
|---|---|---|---|---|
{rows}

| file | what it is |
|---|---|
{listed}
"""
    ]
    if POSTFIX_MAIN in files:
        sections.append(
            """\
## Mail

**sendmail** relays for 127.0.0.1 and ::1 by its own rules, not for 127.0.0.2: as it comes
it needs nothing. An access map with `Connect:127 RELAY` (Debian's /etc/mail/access has it)
lets all of 127.0.0.0/8 relay; add the lines of `sendmail-access` there and rebuild the map.
`Connect:ADDRESS OK` is more specific than `Connect:127`, so it wins: mail for this host's
own domains is taken, relaying to anywhere else is refused ("Relaying denied").

**Postfix** relays for `mynetworks`, and Debian's default `127.0.0.0/8` holds 127.0.0.2. Set
the line of `postfix-main.cf` (your own networks added, never one that holds a source), or
give the forward `proxy_protocol = "v2"` and run the smtpd of `postfix-master.cf` on its
target: Postfix then judges the relay's own address, named in the PROXY header."""
        )
    if NAMED_ACL in files:
        sections.append(
            f"""\
## DNS

The dns forward passes only queries for names at or below its `zones`; tunnelkeeper answers
anything else REFUSED itself. The primary still sees the tunnel's transfers and queries for
those zones, from {dns_sources}:

- **Zone transfers.** The relay's secondary transfers each zone through the tunnel. A primary
  that allows transfers to 127.0.0.1 alone (as the first relay kit advised) refuses them now:
  the secondary serves stale data until the zone expires. Allow the ACL in each zone the relay
  serves: `allow-transfer {{ tunnelkeeper; }};`.
- **Recursion and the cache.** BIND allows recursion to `localnets` and `localhost`, and
  `localnets` holds all of 127.0.0.0/8: put `!tunnelkeeper;` first in allow-recursion and
  allow-query-cache.
- **Views.** The filter cannot tell the two faces of a split-horizon zone apart. Put
  `!tunnelkeeper;` first in every internal view's match-clients, so the tunnel sees the
  external face.

`named.conf.tunnelkeeper-acl` says where each line goes; `named-checkconf` checks the result."""
        )
    sections.append(
        """\
## Proof

`tunnelkeeper check` proves it through the relay, the way a relay user would come: for each
smtp forward it asks the internal MTA to take `RCPT TO:<postmaster@tunnelkeeper-relay-test.invalid>`
and then sends RSET and QUIT (no message is ever sent), and for each dns forward it tries a
transfer of each zone (an IXFR at the serial it just read). It fails, in words, when the MTA
would relay ("the internal mail server relays for anyone on the relay") or the primary refuses
the transfer ("the primary refuses zone transfers from the tunnel"); `check --json` says
`open_relay` per smtp forward and `transfer_ok` per zone."""
    )
    if any(name.startswith("smarthost") for name in files):
        sections.append(
            """\
## Outgoing mail

The `smarthost` files send this host's outgoing mail out through the tunnel's smtp local
(`tunnelkeeper smarthost` writes the same lines): the sendmail.mc lines go before the
MAILER lines, the Postfix line replaces main.cf's relayhost."""
        )
    return "\n\n".join(section.strip("\n") for section in sections) + "\n"
