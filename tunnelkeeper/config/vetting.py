"""The files a loaded configuration names, vetted before they are used: secrets given as
systemd credentials must be findable, and every file a tunnel reads must pass filetrust."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from ..errors import ConfigError
from ..filetrust import check_file, is_credential_name, secret_path
from .models import Config

# Tunnel settings naming a file that not every tunnel has: (setting, what it is, secret).
_OPTIONAL_FILES = (
    ("certificate", "certificate", False),
    ("passphrase_file", "passphrase file", True),
    ("proxy_auth_file", "proxy-auth file", True),
)


def check_credential_names(config: Config, env: Mapping[str, str] | None = None) -> None:
    """A secret given as a bare name is a systemd credential: refused, naming the config
    file and the key, when $CREDENTIALS_DIRECTORY is not set. Run it first, before anything
    reads a secret."""
    for index, tunnel in enumerate(config.tunnel):
        for name, _what, _secret in _OPTIONAL_FILES:
            value = getattr(tunnel, name, None)
            if isinstance(value, Path) and is_credential_name(value):
                try:
                    secret_path(value, name, env)
                except ConfigError as exc:
                    key = f"tunnel[{index}].{name}"
                    raise ConfigError(exc.detail, path=str(config.path), key=key) from None


def check_tunnel_files(config: Config, env: Mapping[str, str] | None = None) -> None:
    """`filetrust.check_file` for every file a tunnel reads: keys, known_hosts, certificates,
    secrets (a credential name is looked for where systemd put it).

    Raises ConfigError naming the first file or folder at fault.
    """
    for tunnel in config.tunnel:
        check_file(tunnel.identity, "private key", secret=True, env=env)
        check_file(Path(f"{tunnel.identity}.pub"), "public key", env=env)
        check_file(tunnel.known_hosts, "known_hosts file", env=env)
        for name, what, secret in _OPTIONAL_FILES:
            value = getattr(tunnel, name, None)
            if isinstance(value, Path):
                if is_credential_name(value):
                    value = secret_path(value, name, env)
                check_file(value, what, secret=secret, env=env)
