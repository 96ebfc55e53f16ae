"""The relay kit: every relay-side file for a tunnel, plus a README that says where each goes."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from .. import safefiles
from ..config import Config, Tunnel
from . import dropbear, dropbear_kit, kit_readme, outbound_kit
from .bind import named_conf
from .check_script import check_relay, readme_section
from .common import SshServer, select_tunnels
from .kit_readme import (
    AUTHORIZED_KEYS,
    CHECK_SCRIPT,
    EXECUTABLE,
    MAILERTABLE,
    MX_RECORDS,
    NAMED_CONF,
    NAMED_CONF_LEGACY,
    README,
    SENDMAIL_CF,
    SENDMAIL_MC,
    SSHD_CONFIG,
    TRANSPORT,
    Parts,
)
from .mailertable import mailertable
from .mx import mx_records
from .openssh import (
    authorized_keys,
    sshd_config,
)
from .postfix import transport
from .sendmail import mailer_definitions, mailer_definitions_m4


def relay_kit(
    config: Config,
    tunnel: str | None = None,
    *,
    internal_host: str | None = None,
    relay_host: str | None = None,
    sshd: SshServer = "openssh",
) -> dict[str, str]:
    """The kit as {relative file name: text}; one subfolder per tunnel when there are several.

    MX records are included when `internal_host` is given; the relay host defaults to the
    tunnel's SSH host. `sshd` is the relay's SSH server: a Dropbear relay gets its own key line
    and no sshd_config file. Raises ConfigError (a missing public key, say) like the generators.
    """
    tunnels = select_tunnels(config, tunnel)
    if len(tunnels) == 1:
        return _tunnel_kit(config, tunnels[0], internal_host, relay_host, sshd)
    files: dict[str, str] = {}
    for tun in tunnels:
        for name, text in _tunnel_kit(config, tun, internal_host, relay_host, sshd).items():
            files[f"{tun.name}/{name}"] = text
    files[README] = _index(tunnels)
    return files


def write_kit(files: Mapping[str, str], out: Path) -> list[Path]:
    """Write the kit under `out` (created if needed; files of the same name are replaced).

    Raises OSError."""
    written = []
    for name, text in files.items():
        path = out / name
        path.parent.mkdir(parents=True, exist_ok=True)
        # Replaced whole, never through a symlink someone left in the folder.
        mode = 0o755 if path.name in EXECUTABLE else 0o644
        safefiles.replace(path, text.encode("utf-8"), mode)
        written.append(path)
    return written


def _tunnel_kit(
    config: Config,
    tun: Tunnel,
    internal_host: str | None,
    relay_host: str | None,
    sshd: SshServer,
) -> dict[str, str]:
    name = tun.name
    parts = Parts(
        tunnel=tun,
        mail=any(f.service == "smtp" and f.domains for f in tun.forward),
        dns=any(f.service == "dns" for f in tun.forward),
        internal_host=internal_host,
        relay_host=relay_host or tun.host,
        sshd=sshd,
    )
    files = {README: ""}  # first in the folder listing; written last, when the rest is known
    if sshd == "dropbear":
        # Dropbear has no per-account configuration file: its flags are in the README.
        files[AUTHORIZED_KEYS] = dropbear.authorized_keys(config, name)
    else:
        files[AUTHORIZED_KEYS] = authorized_keys(config, name)
        files[SSHD_CONFIG] = sshd_config(config, name)
    if parts.mail:
        files[MAILERTABLE] = mailertable(config, name)
        files[SENDMAIL_MC] = mailer_definitions_m4(config, name)
        files[SENDMAIL_CF] = mailer_definitions(config, name)
        files[TRANSPORT] = transport(config, name)
    if parts.dns:
        files[NAMED_CONF] = named_conf(config, name)
        files[NAMED_CONF_LEGACY] = named_conf(config, name, legacy=True)
    if parts.mail and internal_host is not None:
        files[MX_RECORDS] = mx_records(config, internal_host, parts.relay_host, name)
    files[CHECK_SCRIPT] = check_relay(config, tun, sshd, mail=parts.mail, dns=parts.dns)
    files[README] = _readme(config, parts)
    return files


def _index(tunnels: tuple[Tunnel, ...]) -> str:
    lines = [
        "# tunnelkeeper relay kits",
        "",
        "One folder per tunnel; each has its own README. Give each relay's admin their folder.",
        "",
        "| folder | relay account |",
        "|---|---|",
    ]
    lines += [f"| {t.name}/ | {t.relay} |" for t in tunnels]
    return "\n".join(lines) + "\n"


def _readme(config: Config, parts: Parts) -> str:
    tun = parts.tunnel
    sections = [
        kit_readme.intro(parts),
        kit_readme.files_table(parts),
        dropbear_kit.account(tun, AUTHORIZED_KEYS)
        if parts.sshd == "dropbear"
        else kit_readme.account(tun),
    ]
    if parts.mail:
        sections += [kit_readme.sendmail(config, tun), kit_readme.postfix(config, tun)]
    if parts.dns:
        sections.append(kit_readme.bind(tun))
    if parts.mail:
        sections.append(kit_readme.mx(parts))
    sections.append(readme_section(CHECK_SCRIPT, mail=parts.mail))
    sections.append(outbound_kit.smarthost_section(tun, 7))
    sections.append(
        dropbear_kit.trouble(tun) if parts.sshd == "dropbear" else kit_readme.trouble(tun)
    )
    return "\n\n".join(section.strip("\n") for section in sections if section) + "\n"
