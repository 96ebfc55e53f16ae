"""Dropbear on the relay: the tightest authorized_keys line it accepts, and its daemon flags."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..config import Config, Tunnel
from .common import select_tunnels
from .openssh import key_lines, listens, open_comments, opens

# Dropbear ends a session once this many -K periods pass without a packet from the client
# (a compile-time constant there; 2022.83 dropped a frozen client 2.6 s after it froze at -K 1).
KEEPALIVE_LIMIT = 3

# What Dropbear 2022.83 does with the OpenSSH options, tried against the daemon:
#   restrict           accepted, but it also turns off port forwarding: no tunnel
#   port-forwarding    unknown: "Bad public key options", the whole line is refused
#   permitlisten, from unknown: the same
#   permitopen         accepted, and it limits direct-tcpip channels (others are prohibited)
#   command=           accepted; it replaces exec, shell and subsystem requests, and a client
#                      that opens no session (tunnelkeeper, ssh -N) is not affected
# Remote forwards bind loopback (127.0.0.1 and ::1) whatever address the client asks for,
# unless dropbear runs with -a; Unix-socket forwards are refused outright.


def key_options(tunnel: Tunnel) -> str:
    """No pty, agent or X11; channels only where tunnelkeeper opens them; no command.
    Listens are unlimited."""
    options = ["no-pty", "no-agent-forwarding", "no-X11-forwarding"]
    options += [f'permitopen="{target}"' for target in opens((tunnel,))]
    options.append('command="/bin/false"')
    return ",".join(options)


def authorized_keys(config: Config, tunnel: str | None = None) -> str:
    """One authorized_keys line per tunnel for a Dropbear relay, with what it cannot limit."""
    header = [
        "# authorized_keys lines for a Dropbear relay, written by tunnelkeeper. Dropbear refuses",
        "# a whole line with an option it does not know (port-forwarding, permitlisten, from),",
        "# so each line has only what Dropbear understands: no pty, agent or X11, no command",
        "# (/bin/false), and channels only to the destinations tunnelkeeper opens (permitopen).",
        "# Dropbear cannot limit listen ports per key: this key may listen on ANY port (above",
        "# 1023 unless the account is root), on loopback unless dropbear runs with -a.",
        "# Instead: give the key an account of its own that nothing else uses; run dropbear",
        "# without -a unless a listen is public (-a lets every account listen on any address),",
        "# and without -k (no remote forwards: no tunnel) or -j (no channels: the end-to-end",
        "# checks fail). The relay kit's README (relay-kit --sshd dropbear) says more.",
    ]
    return key_lines(select_tunnels(config, tunnel), header, key_options, _notes)


def _notes(tun: Tunnel) -> list[str]:
    notes = [
        (
            f"# it listens on {', '.join(listens((tun,)))} (not enforced by Dropbear)"
            if tun.forward
            else "# it holds no reverse forwards (Dropbear would still let it listen)"
        ),
        "# channels (permitopen) only to:",
        *open_comments((tun,)),
    ]
    if tun.from_:
        notes.append(
            f"# from = {', '.join(tun.from_)} is not in the line (Dropbear has no from=): "
            f"allow only those to port {tun.port} in the relay's firewall"
        )
    return notes


@dataclass(frozen=True)
class Keepalive:
    """Dropbear's -K for a tunnel, and the arithmetic behind it."""

    interval: int
    client_budget: float

    @property
    def relay_worst(self) -> int:
        return self.interval * KEEPALIVE_LIMIT


def keepalive(tunnel: Tunnel) -> Keepalive:
    """The largest whole-second -K with which Dropbear drops a silent client in time.

    The client declares the relay dead after keepalive_interval * keepalive_count_max and then
    reconnects; Dropbear frees the old session's listeners after -K * 3 silent seconds at most.
    """
    budget = tunnel.keepalive_interval * tunnel.keepalive_count_max
    return Keepalive(max(1, math.floor(budget / KEEPALIVE_LIMIT)), budget)


def public_listen(tunnel: Tunnel) -> bool:
    return any(not f.listen.is_loopback for f in tunnel.forward)


def flags(tunnel: Tunnel) -> list[str]:
    """The dropbear flags the tunnel needs: -K, and -a only for a public listen."""
    return ["-K", str(keepalive(tunnel).interval), *(["-a"] if public_listen(tunnel) else [])]
