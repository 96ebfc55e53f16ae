"""Jump hosts for tests: sshds that only let the tunnel's key open a channel to the next hop."""

from __future__ import annotations

from pathlib import Path

from .sshd import Sshd


def host_line(sshd: Sshd, name: str = "127.0.0.1") -> str:
    """The `[NAME]:PORT kind key` line that pins this sshd's host key."""
    kind, body = Path(f"{sshd.host_key}.pub").read_text().split()[:2]
    return f"[{name}]:{sshd.port} {kind} {body}"


def make_bastion(
    root: Path,
    client_key: Path,
    onward: Sshd,
    *,
    names: tuple[str, ...] = ("127.0.0.1",),
    start: bool = True,
) -> Sshd:
    """An sshd whose authorized_keys holds `client_key` limited to direct-tcpip towards
    `onward` (`restrict,port-forwarding,permitopen="127.0.0.1:PORT"`, and `PermitListen
    none`: no shell, no listens, no other destination). sshd matches permitopen against the
    name the client asked for, so `names` lists each spelling of the onward host allowed."""
    bastion = Sshd(root, client_key=client_key, extra_config="PermitListen none\n")
    pub = Path(f"{client_key}.pub").read_text().strip()
    opens = ",".join(f'permitopen="{name}:{onward.port}"' for name in names)
    bastion.authorized_keys.write_text(f"restrict,port-forwarding,{opens} {pub}\n")
    if start:
        bastion.start()
    return bastion


def hop(sshd: Sshd) -> str:
    """The `jump` entry that names this sshd: `user@127.0.0.1:PORT`."""
    return f"{sshd.user}@127.0.0.1:{sshd.port}"


def chain_known_hosts(path: Path, *hosts: Sshd) -> Path:
    """One known_hosts file pinning every host of a chain (hops and relay)."""
    path.write_text("".join(host_line(h) + "\n" for h in hosts))
    return path
