"""OpenSSH on the relay: the locked-down authorized_keys line and the sshd `Match User` block."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from ..config import Config, Endpoint, Tunnel
from ..pubkey import read_public_key
from .common import select_tunnels


def listens(tunnels: tuple[Tunnel, ...]) -> list[str]:
    """Every relay-side listen of these tunnels, `host:port` as sshd spells them, config order."""
    return list(dict.fromkeys(str(f.listen) for t in tunnels for f in t.forward))


def open_reasons(tunnels: tuple[Tunnel, ...]) -> dict[str, str]:
    """Every direct-tcpip destination these tunnels open, `host:port`, with why; each once.

    Per tunnel: the forwards' listens (the end-to-end probes loop back through them), the
    locals' targets, the dns forwards' notify addresses, and relay_mta when the tunnel has an
    smtp forward (ETRN asks it for held mail; `check --mail` submits its test message there).
    """
    found: dict[str, list[str]] = {}

    def add(endpoint: Endpoint, why: str) -> None:
        reasons = found.setdefault(str(endpoint), [])
        if why not in reasons:
            reasons.append(why)

    for tun in tunnels:
        for forward in tun.forward:
            add(forward.listen, f"end-to-end probe of {forward.name}")
        for local in tun.local:
            add(local.target, f"local {local.name}")
        for forward in tun.forward:
            if forward.notify is not None:
                add(forward.notify, f"DNS NOTIFY for {forward.name}")
        if has_mail(tun):
            add(tun.relay_mta, "relay_mta: ETRN (etrn, flush) and check --mail's test go there")
    return {dest: "; ".join(reasons) for dest, reasons in found.items()}


def opens(tunnels: tuple[Tunnel, ...]) -> list[str]:
    """Every direct-tcpip destination these tunnels open, `host:port`, in a stable order."""
    return list(open_reasons(tunnels))


def has_mail(tunnel: Tunnel) -> bool:
    return any(f.service == "smtp" for f in tunnel.forward)


def open_comments(tunnels: tuple[Tunnel, ...]) -> list[str]:
    """`#` lines: each channel destination and why it is permitted."""
    reasons = open_reasons(tunnels)
    width = max(len(dest) for dest in reasons)
    return [f"#   {dest:<{width}}  {why}" for dest, why in reasons.items()]


def key_options(tunnel: Tunnel) -> str:
    """`restrict` and then exactly what the tunnel needs: its listens, and its channels."""
    options = ["restrict", "port-forwarding"]
    # OpenSSH has no permitlisten="none": a tunnel with locals only gets no permitlisten here,
    # and the Match block's AllowTcpForwarding local refuses every listen of the account.
    options += [f'permitlisten="{listen}"' for listen in listens((tunnel,))]
    options += [f'permitopen="{target}"' for target in opens((tunnel,))]
    options.append('command="/bin/false"')
    if tunnel.from_:
        options.append(f'from="{",".join(tunnel.from_)}"')
    return ",".join(options)


def authorized_keys(config: Config, tunnel: str | None = None) -> str:
    """One locked-down authorized_keys line per tunnel, each after a comment naming its account."""
    header = [
        "# authorized_keys lines written by tunnelkeeper: the key may hold these reverse forwards",
        "# and open channels to the destinations listed, and nothing else (no shell, pty, agent",
        "# or X11). With any permitopen present sshd refuses channels to every other address.",
        "# The sshd Match block (tunnelkeeper sshd-config) is required as well: port-forwarding",
        "# here also allows Unix-socket forwards, which permitlisten does not limit; the block's",
        "# AllowStreamLocalForwarding no refuses them.",
    ]
    return key_lines(select_tunnels(config, tunnel), header, key_options, _notes)


def _notes(tun: Tunnel) -> list[str]:
    notes = ["# channels (permitopen) only to:", *open_comments((tun,))]
    if not tun.forward:
        notes += [
            "# no reverse forwards: a key line cannot say permitlisten none, so the Match",
            "# block's AllowTcpForwarding local is what refuses every listen of this account",
        ]
    return notes


def key_lines(
    tunnels: tuple[Tunnel, ...],
    header: list[str],
    options: Callable[[Tunnel], str],
    notes: Callable[[Tunnel], list[str]],
) -> str:
    """authorized_keys text: `header`, then per tunnel a comment naming its account and key,
    its `notes`, and the key line with its `options`. Shared by the OpenSSH and Dropbear kits."""
    lines = list(header)
    for tun in tunnels:
        key = read_public_key(tun)
        lines.append(
            f"# tunnel {tun.name}: ~{tun.user}/.ssh/authorized_keys on {tun.host}, "
            f"key {key.fingerprint}"
        )
        lines += notes(tun)
        lines.append(f"{options(tun)} {key}")
    return "\n".join(lines) + "\n"


def _seconds(value: float) -> str:
    return f"{value:g}"


@dataclass(frozen=True)
class ClientAlive:
    """sshd's ClientAliveInterval/CountMax for a tunnel, and the arithmetic behind them."""

    interval: int
    count_max: int
    client_budget: float

    @property
    def relay_worst(self) -> int:
        # sshd disconnects on the timeout after count_max unanswered probes.
        return self.interval * (self.count_max + 1)


def client_alive(tunnel: Tunnel) -> ClientAlive:
    """Settings with which the relay drops a silent client no later than the client gives up.

    The client declares the relay dead after keepalive_interval * keepalive_count_max and, when
    the connection had been stable, reconnects at once; if the relay still held the old session's
    listeners then, the new listen would be refused. sshd gives up after at most
    ClientAliveInterval * (ClientAliveCountMax + 1), so keep the client's count and choose the
    largest whole-second interval that fits; below one second, lower the count instead.
    ClientAliveCountMax 0 would disable the check, so it stays at least 1.
    """
    budget = tunnel.keepalive_interval * tunnel.keepalive_count_max
    count_max = tunnel.keepalive_count_max
    interval = math.floor(budget / (count_max + 1))
    if interval < 1:
        interval, count_max = 1, max(1, math.floor(budget) - 1)
    return ClientAlive(interval=interval, count_max=count_max, client_budget=budget)


def _accounts(config: Config, tunnel: str | None) -> list[tuple[str, str, tuple[Tunnel, ...]]]:
    """Tunnels grouped by relay account: sshd takes the first Match block that sets a keyword."""
    groups: dict[tuple[str, str], list[Tunnel]] = {}
    for tun in select_tunnels(config, tunnel):
        groups.setdefault((tun.host, tun.user), []).append(tun)
    return [(host, user, tuple(tuns)) for (host, user), tuns in groups.items()]


def sshd_config(config: Config, tunnel: str | None = None) -> str:
    """A `Match User` block per relay account, with the keepalive arithmetic in comments."""
    lines = [
        "# sshd_config text written by tunnelkeeper for the relay accounts its tunnels use.",
        "# Put it in /etc/ssh/sshd_config.d/tunnelkeeper.conf where sshd_config includes that",
        "# folder (Debian, Ubuntu), or else at the very end of sshd_config: a Match block lasts",
        "# until the next Match line or the end of the file. Check with `sshd -t` and reload sshd.",
        "# It is required, not optional: the authorized_keys line alone lets the key forward",
        "# Unix sockets (permitlisten limits TCP only); AllowStreamLocalForwarding no stops that.",
    ]
    for host, user, tunnels in _accounts(config, tunnel):
        lines += ["", *_match_block(host, user, tunnels)]
    return "\n".join(lines) + "\n"


def _match_block(host: str, user: str, tunnels: tuple[Tunnel, ...]) -> list[str]:
    names = ", ".join(t.name for t in tunnels)
    tightest = min(tunnels, key=lambda t: client_alive(t).client_budget)
    alive = client_alive(tightest)
    public = any(not f.listen.is_loopback for t in tunnels for f in t.forward)
    forwarding = _forwarding(tunnels)
    lines = [
        f"# Relay account {user} on {host} (tunnel {names}).",
        f"# Keepalive arithmetic (tunnel {tightest.name}). tunnelkeeper gives up on a silent",
        "# relay after",
        f"#   keepalive_interval x keepalive_count_max = {_seconds(tightest.keepalive_interval)}"
        f" x {tightest.keepalive_count_max} = {_seconds(alive.client_budget)} s",
        "# and, when the connection had been stable, reconnects at once. This sshd drops a",
        "# silent client after at most",
        f"#   ClientAliveInterval x (ClientAliveCountMax + 1) = {alive.interval} x "
        f"({alive.count_max} + 1) = {alive.relay_worst} s",
    ]
    if alive.relay_worst <= alive.client_budget:
        lines += [
            "# so the dead session's listeners are free again before the new session asks for",
            "# them. (ClientAliveCountMax 0 would turn the check off.)",
        ]
    else:
        lines += [
            "# which is longer: whole seconds cannot do better, so a reconnect may find the old",
            "# listeners still held; tunnelkeeper retries such a listen every forward_retry = "
            f"{_seconds(tightest.forward_retry)} s.",
        ]
    if forwarding == "yes":
        lines += [
            "# AllowTcpForwarding yes, not remote: the end-to-end probes open direct-tcpip",
            "# channels to the listens. PermitOpen allows exactly these and nothing else:",
        ]
    else:
        lines += [
            "# AllowTcpForwarding local: no reverse forwards, only direct-tcpip channels, and",
            "# PermitOpen allows exactly these:",
        ]
    lines += open_comments(tunnels)
    if public:
        lines.append("# GatewayPorts clientspecified: a forward listens on a public address.")
    lines.append(f"Match User {user}")
    lines += [f"\t{keyword} {value}" for keyword, value in match_settings(tunnels)]
    return lines


def _forwarding(tunnels: tuple[Tunnel, ...]) -> str:
    # direct-tcpip channels are "local" forwarding to sshd; reverse listens are "remote".
    return "yes" if any(t.forward for t in tunnels) else "local"


def match_settings(tunnels: tuple[Tunnel, ...]) -> list[tuple[str, str]]:
    """The keywords and values of one account's Match block, as sshd -T shows them too."""
    alive = client_alive(min(tunnels, key=lambda t: client_alive(t).client_budget))
    public = any(not f.listen.is_loopback for t in tunnels for f in t.forward)
    return [
        ("AllowTcpForwarding", _forwarding(tunnels)),
        ("PermitListen", " ".join(listens(tunnels)) or "none"),
        ("PermitOpen", " ".join(opens(tunnels))),
        ("GatewayPorts", "clientspecified" if public else "no"),
        ("X11Forwarding", "no"),
        ("AllowAgentForwarding", "no"),
        ("AllowStreamLocalForwarding", "no"),
        ("PermitTunnel", "no"),
        ("PermitTTY", "no"),
        ("ForceCommand", "/bin/false"),
        ("AuthenticationMethods", "publickey"),
        ("ClientAliveInterval", str(alive.interval)),
        ("ClientAliveCountMax", str(alive.count_max)),
    ]
