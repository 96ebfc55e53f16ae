"""The relay kit's README, section by section: where each file goes and how to test it.
Only prose lives here; which files a kit holds is decided in kit.py."""

from __future__ import annotations

from dataclasses import dataclass

from ..config import Config, Forward, Tunnel
from ..pubkey import read_public_key
from . import outbound_kit
from .bind import transfer_source
from .common import SshServer, mail_routes
from .mailertable import mailer_name
from .openssh import client_alive, listens, opens
from .postfix import relay_domains
from .sendmail import ports

# File names inside the kit.
AUTHORIZED_KEYS = "authorized_keys"
SSHD_CONFIG = "sshd_config-tunnelkeeper.conf"
MAILERTABLE = "mailertable"
SENDMAIL_MC = "sendmail-mailer.mc"
SENDMAIL_CF = "sendmail-mailer.cf"
TRANSPORT = "transport"
NAMED_CONF = "named.conf.tunnelkeeper"
NAMED_CONF_LEGACY = "named.conf.tunnelkeeper-legacy"
MX_RECORDS = "mx-records.txt"
CHECK_SCRIPT = "check-relay.sh"
README = "README.md"
EXECUTABLE = frozenset({CHECK_SCRIPT})


@dataclass(frozen=True)
class Parts:
    """What one tunnel carries, as the README needs it."""

    tunnel: Tunnel
    mail: bool
    dns: bool
    internal_host: str | None
    relay_host: str
    sshd: SshServer


def intro(parts: Parts) -> str:
    tun = parts.tunnel
    server = "Dropbear" if parts.sshd == "dropbear" else "sshd"
    rows = []
    for forward in tun.forward:
        if forward.service == "smtp" and forward.domains:
            what = "mail for " + ", ".join(forward.domains)
            what += " and their subdomains" if forward.subdomains else ""
        elif forward.service == "dns":
            what = "zone transfers of " + ", ".join(forward.zones) + " (TCP only)"
        else:
            what = f"{forward.service} ({forward.name})"
        rows.append(f"| {forward.listen} | {forward.target} | {what} |")
    table = "\n".join(rows or ["| (none: this tunnel only opens channels) | | |"])
    return f"""
# Relay kit for tunnel {tun.name} ({tun.relay})

Written by `tunnelkeeper relay-kit` on the internal host. This folder is everything the relay
needs; nothing in it needs root on the internal side or a new daemon on the relay.

tunnelkeeper, on a host behind a firewall that lets nothing in, logs in to this relay as
`{tun.user}` with an RSA key and keeps *reverse* SSH forwards open: {server} on the relay listens
on the addresses below, and whatever connects to them is carried back to the internal host.

| the relay listens on | carried to, on the internal host | for |
|---|---|---|
{table}

The listeners exist only while the tunnel is up. When it is down, mail waits in this relay's
queue and is retried, and secondary zones go on being served until their SOA expire time.
{outbound_kit.locals_intro(tun)}"""


def files_table(parts: Parts) -> str:
    tun = parts.tunnel
    rows = [f"| `{AUTHORIZED_KEYS}` | `~{tun.user}/.ssh/authorized_keys` | 1 |"]
    if parts.sshd == "openssh":
        rows.append(f"| `{SSHD_CONFIG}` | `/etc/ssh/sshd_config.d/tunnelkeeper.conf` | 1 |")
    if parts.mail:
        rows += [
            f"| `{SENDMAIL_MC}` | pasted into `/etc/mail/sendmail.mc` (sendmail) | 2 |",
            f"| `{SENDMAIL_CF}` | the same for a sendmail.cf kept without .mc | 2 |",
            f"| `{MAILERTABLE}` | `/etc/mail/mailertable` (sendmail) | 2 |",
            f"| `{TRANSPORT}` | `/etc/postfix/transport` (Postfix instead of sendmail) | 3 |",
        ]
    if parts.dns:
        rows += [
            f"| `{NAMED_CONF}` | `/etc/bind/named.conf.tunnelkeeper` (BIND 9.16 and later) | 4 |",
            f"| `{NAMED_CONF_LEGACY}` | the same for BIND before 9.16 | 4 |",
        ]
    if parts.mail and parts.internal_host is not None:
        rows.append(f"| `{MX_RECORDS}` | the mail domains' zones, on their primary | 5 |")
    rows.append(f"| `{CHECK_SCRIPT}` | run here, from this folder, once the rest is in place | 6 |")
    return (
        "## Files\n\n| file | goes to | section |\n|---|---|---|\n" + "\n".join(rows) + "\n\n"
        "Each file starts with comments that say the same in short. Use only the sections for "
        "the programs this relay runs."
    )


def account(tun: Tunnel) -> str:
    key = read_public_key(tun)
    alive = client_alive(tun)
    allowed = " ".join(listens((tun,))) or "none"
    destinations = " ".join(opens((tun,)))
    forwarding = "yes" if tun.forward else "local"
    listening = (
        f"`ss -ltnp | grep sshd` lists sshd listening on {allowed.replace(' ', ', ')}."
        if tun.forward
        else "sshd listens on nothing for it: the tunnel only opens channels."
    )
    source = f" The key is accepted only from {', '.join(tun.from_)}." if tun.from_ else ""
    return f"""
## 1. The SSH account

One unprivileged account; the key may hold exactly the listens above and open channels only to
the destinations tunnelkeeper uses (the end-to-end checks through the listens, and this relay's
own services that its smarthost or `check --mail` reach; the files' comments name each), and
nothing else: no shell, pty, agent or X11.{source}
Its fingerprint is `{key.fingerprint}`: compare it with what the internal admin tells you.

```sh
useradd --create-home --shell /usr/sbin/nologin {tun.user}
usermod -p '*' {tun.user}    # no password, yet not locked: without PAM sshd refuses locked accounts
install -d -m 700 -o {tun.user} -g {tun.user} ~{tun.user}/.ssh
install -m 600 -o {tun.user} -g {tun.user} {AUTHORIZED_KEYS} ~{tun.user}/.ssh/authorized_keys
install -m 644 {SSHD_CONFIG} /etc/ssh/sshd_config.d/tunnelkeeper.conf
sshd -t && systemctl reload ssh    # the unit is "sshd" on some systems
```

Both files are required. The key line alone still lets the key forward Unix sockets
(`ssh -R /some/path.sock:...` creates a socket on this relay: `permitlisten` limits TCP
listens only); the `Match` block's `AllowStreamLocalForwarding no` refuses them, and it turns
off X11 and agent forwarding, tunnel devices and ttys for the account as well.

If `/etc/ssh/sshd_config` has no `Include /etc/ssh/sshd_config.d/*.conf` line at its top, append
the file's text to the very end of `sshd_config` instead: a `Match` block runs to the end of the
file. Check what sshd will apply to the account:

```sh
sshd -T -C user={tun.user},host=internal,addr=127.0.0.1 |
    grep -Ei 'permit(listen|open)|tcpforwarding|clientalive'
```

It should show `permitlisten {allowed}`, `permitopen {destinations}`,
`allowtcpforwarding {forwarding}`, `clientaliveinterval {alive.interval}` and
`clientalivecountmax {alive.count_max}`; the comments in `{SSHD_CONFIG}` explain the keepalive
numbers. Once the internal side runs tunnelkeeper, {listening}
"""


def sendmail(config: Config, tun: Tunnel) -> str:
    routes = mail_routes(config, tun.name)
    first = routes[0].domain
    mailers = ", ".join(f"`{mailer_name(port)}`" for port in ports(config, tun.name))
    port = routes[0].port
    domains = list(dict.fromkeys(route.domain for route in routes))
    access = "\n".join(f"To:{domain}\tRELAY" for domain in domains)
    listed = "\n".join(domains)
    return f"""
## 2. Mail with sendmail

Mail for the domains goes to the mailer(s) {mailers}: copies of sendmail's `esmtp` mailer whose
`A=TCP $h {port}` dials the tunnel port (`F=0`: no MX lookup). The mailertable names them; it
has no port syntax of its own.

1. Paste `{SENDMAIL_MC}` at the end of `/etc/mail/sendmail.mc`, after the `MAILER(...)` lines,
   and make sure ``FEATURE(`mailertable')dnl`` is there (before the MAILER lines). Rebuild and
   restart: `sendmailconfig` on Debian, elsewhere `make -C /etc/mail && systemctl restart
   sendmail`. (A `sendmail.cf` kept by hand gets `{SENDMAIL_CF}` appended at its end instead.)
2. Add the lines of `{MAILERTABLE}` to `/etc/mail/mailertable`, then build the map:
   `makemap hash /etc/mail/mailertable < /etc/mail/mailertable`.
3. Let sendmail accept the mail for relaying: add to `/etc/mail/access` (then `makemap hash
   /etc/mail/access < /etc/mail/access`)

   ```
{_indent(access, "   ")}
   ```

   or list the domains in `/etc/mail/relay-domains` (read at start: restart sendmail):

   ```
{_indent(listed, "   ")}
   ```

   None of these domains may be in `local-host-names` (class w): for local domains the
   mailertable is not consulted.
4. Test. The first command must end in `mailer {mailer_name(port)}, host [...], user ...`:

   ```sh
   printf '/parse postmaster@{first}\\n' | sendmail -bt
   swaks --server 127.0.0.1 --port {port} --to postmaster@{first} --quit-after RCPT
   swaks --server 127.0.0.1 --to postmaster@{first}
   mailq
   ```

   The second talks straight down the tunnel to the internal mail server (its 220 banner). After
   the third, the mail log shows `mailer={mailer_name(port)}` and `stat=Sent`.
{_sendmail_etrn(tun)}"""


def _etrn_args(tun: Tunnel) -> list[str]:
    return list(dict.fromkeys(a for f in tun.forward if f.flushes for _, a in f.etrn_arguments))


def _sendmail_etrn(tun: Tunnel) -> str:
    args = _etrn_args(tun)
    if not args:
        return ""
    example = args[0]
    return f"""5. Leave ETRN on. Whenever the tunnel is whole again, tunnelkeeper asks this
   sendmail, from 127.0.0.1 through the tunnel's SSH connection, to deliver at once what it
   holds for the domains (`ETRN {example}`; the `@` form covers the subdomains too), instead
   of at the next queue run, up to `-q` minutes later (Debian: 10). ETRN is on unless it was
   turned off, so make sure none of these is there: `noetrn` in `confPRIVACY_FLAGS` (`O
   PrivacyOptions` in sendmail.cf), the flag `E` in the port-25 daemon's `Modifiers=`
   (`DAEMON_OPTIONS`), or a `check_etrn` ruleset that refuses 127.0.0.1:

   ```sh
   grep -E '^O (PrivacyOptions|DaemonPortOptions)|^Scheck_etrn' /etc/mail/sendmail.cf
   ```

   sendmail answers `250 2.0.0 Queuing for node {example} started`; `502 5.7.0 Sorry, we do
   not allow this operation` means ETRN is off. `check-relay.sh` asks it for every domain.
"""


def postfix(config: Config, tun: Tunnel) -> str:
    first = mail_routes(config, tun.name)[0].domain
    return f"""
## 3. Mail with Postfix (instead of sendmail)

```sh
install -m 644 {TRANSPORT} /etc/postfix/transport
postconf -e 'transport_maps = hash:/etc/postfix/transport'
postconf -e 'relay_domains = {relay_domains(config, tun.name)}'
postmap /etc/postfix/transport && postfix reload
postmap -q {first} hash:/etc/postfix/transport
```

The last command prints the nexthop `smtp:[...]:port`. If `transport_maps` or `relay_domains`
already have values, add to them rather than replace. Test with `swaks` as in section 2.
{_postfix_etrn(tun)}"""


def _postfix_etrn(tun: Tunnel) -> str:
    domains = list(dict.fromkeys(d for f in tun.forward if f.flushes for d in f.domains))
    if not domains:
        return ""
    return f"""
Whenever the tunnel is whole again, tunnelkeeper sends `ETRN` for each domain from 127.0.0.1,
through its SSH connection, so that Postfix delivers what it holds for them at once instead of
at its next queue run (up to `maximal_backoff_time` later). Postfix flushes only the domains in
`fast_flush_domains` (default `$relay_domains`, which has them after the lines above), and
`smtpd_etrn_restrictions` must permit 127.0.0.1 (empty, the default, permits everyone; else
e.g. `permit_mynetworks, reject` with 127.0.0.0/8 in `mynetworks`):

```sh
postconf fast_flush_domains smtpd_etrn_restrictions
postconf -e 'fast_flush_domains = $relay_domains'   # only if it was set to something else
```

Postfix keeps one flush list per destination: `ETRN {domains[0]}` delivers mail held for
`{domains[0]}` itself; mail held for a subdomain waits for the next queue run (or
`postqueue -s SUBDOMAIN`). `check-relay.sh` (with `TK_MTA=postfix`) asks for every domain.
"""


def _allow_transfer(forwards: list[Forward]) -> str:
    sources = sorted({f.source_address for f in forwards if f.source_address is not None})
    if not sources:
        return ""
    return ": `allow-transfer { " + " ".join(f"{s};" for s in sources) + " };`"


def bind(tun: Tunnel) -> str:
    forwards = [f for f in tun.forward if f.service == "dns"]
    zone = forwards[0].zones[0]
    listen = forwards[0].listen
    return f"""
## 4. Secondary DNS with BIND

```sh
install -m 644 {NAMED_CONF} /etc/bind/named.conf.tunnelkeeper   # or {NAMED_CONF_LEGACY}
echo 'include "/etc/bind/named.conf.tunnelkeeper";' >> /etc/bind/named.conf.local
named-checkconf && rndc reconfig
```

The zones are copied from the internal primary through the tunnel, which carries TCP only: the
file's `server ... {{ tcp-only yes; }};` makes named send its SOA queries over TCP too. If
named.conf already has a `server` statement for that address, merge the line into it. The zone
files are named relative to named's `directory` (`/var/cache/bind` on Debian), which named must
be able to write.

The internal primary sees the transfers arrive from {transfer_source(forwards)} (the forward's
`source`: tunnelkeeper connects from there, so that a relay user is never taken for the
primary's own host) and must allow them{_allow_transfer(forwards)}, better with a TSIG key. A
primary set up by an older kit allows `127.0.0.1` alone: allow the source too, or its transfers
through the tunnel fail.
{outbound_kit.notify_paragraph(forwards, zone)}

```sh
dig +tcp -p {listen.port} @{listen.host} {zone} SOA   # the tunnel alone: the primary answers
rndc zonestatus {zone}
dig @127.0.0.1 {zone} SOA +norecurse        # this relay answers, with the aa flag
```
"""


def mx(parts: Parts) -> str:
    if parts.internal_host is None:
        how = (
            "The internal admin writes them with `tunnelkeeper mx-records --internal-host NAME "
            f"--relay-host {parts.relay_host}`."
        )
    else:
        how = f"`{MX_RECORDS}` has them, for the zones on their primary."
    return f"""
## 5. MX records (the domains' DNS, not this relay)

The classic recipe: the internal mail host at preference 0, which hosts inside the firewall
reach directly, and this relay at 10, which everyone else reaches. {how} Every name in them
ends with a dot; a target must be a host name with address records, never a CNAME.
"""


def trouble(tun: Tunnel) -> str:
    alive = client_alive(tun)
    return f"""
## When something does not work

- No listener on the ports above: the tunnel is down; `tunnelkeeper status` on the internal
  host says why. `journalctl -u ssh` here shows the logins of `{tun.user}`.
- "... to remote forward to host H port P, but the request was denied" in the sshd log: that
  listen is not in `permitlisten`/`PermitListen`; regenerate the kit after a change of ports.
- After the internal host lost its connection, sshd keeps the old session's listeners until it
  notices, within {alive.relay_worst} s (`ClientAliveInterval` x (`ClientAliveCountMax` + 1));
  tunnelkeeper retries the listens until then.
- "Relaying denied" when mail for the domains arrives: step 3 of section 2 (or
  `relay_domains` for Postfix) is missing.
- Mail stays queued with "Connection refused by [127.0.0.1]": the tunnel was down at that
  moment. tunnelkeeper sends ETRN as soon as it is back (its log and `tunnelkeeper status
  --json`'s `last_flush` say what this MTA answered); with ETRN refused or `etrn = false`, the
  next queue run delivers it. `tunnelkeeper flush` on the internal host asks again at once.
"""


def _indent(text: str, prefix: str) -> str:
    return "\n".join(prefix + line for line in text.splitlines())
