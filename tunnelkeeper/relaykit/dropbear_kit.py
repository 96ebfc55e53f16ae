"""The relay kit README's sections for a relay that runs Dropbear instead of OpenSSH."""

from __future__ import annotations

from ..config import Tunnel
from ..pubkey import read_public_key
from .dropbear import KEEPALIVE_LIMIT, flags, keepalive, public_listen
from .openssh import listens


def account(tun: Tunnel, authorized_keys: str) -> str:
    """Section 1: the account, the key line, Dropbear's command line, and how to test them."""
    key = read_public_key(tun)
    alive = keepalive(tun)
    allowed = ", ".join(listens((tun,)))
    args = " ".join(flags(tun))
    source = ""
    if tun.from_:
        source = (
            f"\nThe tunnel is meant to log in only from {', '.join(tun.from_)}, but Dropbear has "
            "no `from=`: allow only those addresses to this SSH port in the relay's firewall.\n"
        )
    through = "".join(_through(tun))
    keep = (
        f"| `-K {alive.interval}` | Dropbear sends a keepalive every {alive.interval} s and drops "
        f"a client that stayed silent for {alive.interval} x {KEEPALIVE_LIMIT} = "
        f"{alive.relay_worst} s, freeing the old session's listeners. tunnelkeeper gives up on "
        "a silent relay after `keepalive_interval` x `keepalive_count_max` = "
        f"{alive.client_budget:g} s and reconnects"
    )
    if alive.relay_worst > alive.client_budget:
        keep += (
            ", sooner than Dropbear can notice: it then retries the refused listens every "
            f"`forward_retry` = {tun.forward_retry:g} s"
        )
    keep += "; without `-K` (the default on Debian) a dead session can hold the ports for hours |"
    if public_listen(tun):
        gateway = (
            "| `-a` | needed here: a listen above is on a public address. Without `-a` Dropbear "
            "binds every remote forward to loopback; with it every account may listen on any "
            "address |"
        )
        uci_gateway = "on"
    else:
        gateway = (
            "| no `-a` | remote forwards then listen on loopback (127.0.0.1 and ::1) whatever "
            "address a client asks for; `-a` would let every account listen on any address |"
        )
        uci_gateway = "off"
    return f"""
## 1. The SSH account (Dropbear)

One unprivileged account that nothing but this key logs in to. Dropbear refuses a key line with
an option it does not know, and knows fewer than OpenSSH: the line in `{authorized_keys}` gives no
pty, agent or X11, runs no command (`/bin/false` replaces whatever the client asks for), and
lets the key open channels only to the destinations tunnelkeeper uses (its end-to-end checks
through the listens, and this relay's own services that its smarthost or `check --mail`
reach; the file's comments name each).
**Dropbear cannot limit which ports a key listens on** (it has no `permitlisten`): whoever holds
the key may listen on any port above 1023, on loopback. That is why the account must be its own,
and why the flags below matter.{source}
Its fingerprint is `{key.fingerprint}`: compare it with what the internal admin tells you.

```sh
useradd --create-home --shell /bin/sh {tun.user}   # a shell from /etc/shells, see below
usermod -p '*' {tun.user}    # no password
install -d -m 700 -o {tun.user} -g {tun.user} ~{tun.user}/.ssh
install -m 600 -o {tun.user} -g {tun.user} {authorized_keys} ~{tun.user}/.ssh/authorized_keys
```

Dropbear refuses an account whose shell is not listed in `/etc/shells` (`/usr/sbin/nologin`
usually is not): the log says "User '{tun.user}' has invalid shell, rejected". The shell never
runs for this key. On OpenWrt, where `useradd` comes with `opkg install shadow-useradd`, accounts
other than root read `~/.ssh/authorized_keys` as above (root's keys are in
`/etc/dropbear/authorized_keys`).

### Dropbear's command line

Dropbear has no per-account settings; these flags are for the whole daemon. This tunnel needs
`{args}`:

| flag | why |
|---|---|
{keep}
{gateway}
| no `-j` | `-j` turns off local forwarding (direct-tcpip): the end-to-end checks fail |
| no `-k` | `-k` turns off remote forwarding: no tunnel at all |
| `-s` | recommended: no password logins |

On Debian (package `dropbear`) put them in `/etc/default/dropbear`, then
`systemctl restart dropbear`:

```sh
DROPBEAR_EXTRA_ARGS="-s {args}"
```

On OpenWrt, in `/etc/config/dropbear` (then `/etc/init.d/dropbear restart`); OpenWrt's default
`SSHKeepAlive` is 300, with which a dead session holds the ports for 15 minutes:

```
config dropbear
	option PasswordAuth 'off'
	option SSHKeepAlive '{alive.interval}'
	option GatewayPorts '{uci_gateway}'
	option LocalPortForward 'on'
	option RemotePortForward 'on'
```

or `uci set dropbear.@dropbear[0].SSHKeepAlive='{alive.interval}' && uci commit dropbear`.

### Test

```sh
dropbear -V                 # the version; the kit was tried against Dropbear 2022.83
journalctl -u dropbear -f   # OpenWrt: logread -f -e dropbear
ss -ltnp | grep dropbear
{through}```

When tunnelkeeper logs in, the log shows "Pubkey auth succeeded for '{tun.user}'", and `ss` lists
dropbear listening on {allowed} (without `-a`, on both 127.0.0.1 and ::1 for each port).
"Bad public key options at .../authorized_keys:1" means the line
written for OpenSSH is installed: use this kit's `{authorized_keys}` (`tunnelkeeper
authorized-keys --sshd dropbear`). The last lines talk through the tunnel itself, as the
sections below explain.
"""


def trouble(tun: Tunnel) -> str:
    """The "when something does not work" list for Dropbear."""
    alive = keepalive(tun)
    return f"""
## When something does not work

- No listener on the ports above: the tunnel is down; `tunnelkeeper status` on the internal
  host says why. `journalctl -u dropbear` (OpenWrt: `logread -e dropbear`) here shows the
  logins of `{tun.user}`.
- "Bad public key options" in the log: the authorized_keys line has an option Dropbear does not
  know; install this kit's line.
- "User '{tun.user}' has invalid shell, rejected": give the account a shell from `/etc/shells`.
- After the internal host lost its connection, Dropbear keeps the old session's listeners until
  its keepalive notices, within {alive.relay_worst} s (`-K {alive.interval}` x {KEEPALIVE_LIMIT});
  tunnelkeeper retries the listens until then. Without `-K` that can take hours.
- "Relaying denied" when mail for the domains arrives: step 3 of section 2 (or
  `relay_domains` for Postfix) is missing.
- Mail stays queued with "Connection refused by [127.0.0.1]": the tunnel was down at that
  moment; the queue run after it is back delivers it.
"""


def _through(tun: Tunnel) -> list[str]:
    """Commands that reach the internal host through the first smtp and dns forwards."""
    lines = []
    smtp = next((f for f in tun.forward if f.service == "smtp" and f.domains), None)
    if smtp is not None:
        lines.append(
            f"swaks --server {smtp.listen.host} --port {smtp.listen.port} "
            f"--to postmaster@{smtp.domains[0]} --quit-after RCPT\n"
        )
    dns = next((f for f in tun.forward if f.service == "dns"), None)
    if dns is not None:
        lines.append(f"dig +tcp -p {dns.listen.port} @{dns.listen.host} {dns.zones[0]} SOA\n")
    return lines
