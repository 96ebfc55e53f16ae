"""Refuse files that another user could change (or read, for secrets), like OpenSSH StrictModes.

The config names commands to run and where the control socket lives, the keys log in to the
relay, known_hosts decides whom to trust: a user who can write any of them, or replace them
through a folder on the way, can make tunnelkeeper act for them. A file or folder passes when it
is owned by the effective user or root and no one else may write it; a folder another user may
write passes only when it is sticky (/tmp), where nobody can rename or delete a file they do
not own. `TUNNELKEEPER_STRICT_MODES=no` turns the ownership and write checks off for setups
that share files on purpose (a group that keeps the config); the read check of secrets stays.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator, Mapping
from pathlib import Path

from .errors import ConfigError

STRICT_MODES_ENV = "TUNNELKEEPER_STRICT_MODES"
_OFF = ("no", "false", "off", "0")
_HINT = f"(or set {STRICT_MODES_ENV}=no to trust files that other users may change)"


def is_credential_name(path: Path) -> bool:
    """A secret file given as a bare name ("passphrase"): a systemd credential."""
    return not path.is_absolute() and len(path.parts) == 1


def secret_path(path: Path, key: str, env: Mapping[str, str] | None = None) -> Path:
    """Where a secret file is: a bare name means $CREDENTIALS_DIRECTORY/NAME.

    Raises ConfigError when it is a bare name and that variable is unset.
    """
    if not is_credential_name(path):
        return path
    env = os.environ if env is None else env
    folder = env.get("CREDENTIALS_DIRECTORY")
    if not folder:
        raise ConfigError(
            f"{path} is a bare name, which means a systemd credential, but "
            "$CREDENTIALS_DIRECTORY is not set (give a path, or LoadCredential= in the unit)",
            key=key,
        )
    return Path(folder) / path


def strict_modes(env: Mapping[str, str] | None = None) -> bool:
    """False only when the user turned the checks off by name."""
    value = (os.environ if env is None else env).get(STRICT_MODES_ENV, "")
    return value.strip().lower() not in _OFF


def check_file(
    path: Path, what: str, *, secret: bool = False, env: Mapping[str, str] | None = None
) -> None:
    """Refuse `path` when another user could write it, or replace it through a folder on the
    way (or, when `secret`, read it). A file that cannot be looked at is left to whoever
    reads it next, which reports that better.

    Raises ConfigError naming the file or folder at fault.
    """
    try:
        st = os.stat(path)
    except OSError:
        return
    if secret and st.st_mode & 0o077:
        raise ConfigError(
            f"{what} is accessible by group or others (mode {stat.S_IMODE(st.st_mode):04o}); "
            f"run: chmod 600 {path}",
            path=str(path),
        )
    if not strict_modes(env):
        return
    fault = _fault(st, folder=False)
    if fault:
        raise ConfigError(f"{what} {fault}; {_fix(path, st)} {_HINT}", path=str(path))
    for folder in _folders(path):
        _check_folder(folder, f"the folder holding the {what}", path)


def check_private_folder(folder: Path, what: str, env: Mapping[str, str] | None = None) -> None:
    """Refuse a folder that is not the effective user's own, closed to others' writes (and
    the folders above it, as for `check_file`). A folder not there yet is not checked; the
    folders above it are.

    Raises ConfigError naming the folder at fault.
    """
    if not strict_modes(env):
        return
    try:
        st = os.stat(folder)
    except FileNotFoundError:
        st = None
    except OSError:
        return
    if st is not None:
        euid = os.geteuid()
        if st.st_uid != euid:
            raise ConfigError(
                f"{what} belongs to uid {st.st_uid}, not to this user (uid {euid}); use a "
                f"folder of your own {_HINT}",
                path=str(folder),
            )
        if st.st_mode & 0o022:
            raise ConfigError(
                f"{what} is writable by group or others (mode {stat.S_IMODE(st.st_mode):04o}); "
                f"run: chmod go-w {folder} {_HINT}",
                path=str(folder),
            )
    for parent in _folders(folder):
        _check_folder(parent, f"a folder above the {what}", folder)


def _check_folder(folder: Path, what: str, for_path: Path) -> None:
    try:
        st = os.stat(folder)
    except OSError:
        return
    fault = _fault(st, folder=True)
    if fault:
        raise ConfigError(
            f"{what} {for_path}, {folder}, {fault}; {_fix(folder, st)} {_HINT}", path=str(for_path)
        )


def _fault(st: os.stat_result, *, folder: bool) -> str | None:
    euid = os.geteuid()
    if st.st_uid not in (euid, 0):
        return f"belongs to uid {st.st_uid}, neither this user (uid {euid}) nor root"
    if st.st_mode & 0o022 and not (folder and st.st_mode & stat.S_ISVTX):
        return f"is writable by group or others (mode {stat.S_IMODE(st.st_mode):04o})"
    return None


def _fix(path: Path, st: os.stat_result) -> str:
    if st.st_uid not in (os.geteuid(), 0):
        return "move it to a folder of your own, or have root chown it"
    return f"run: chmod go-w {path}"


def _folders(path: Path) -> Iterator[Path]:
    """Every folder on the way to `path` as written and, when symlinks lead elsewhere, on the
    way to where it really is: whoever can write one of them can swap what lies below."""
    written = Path(os.path.abspath(path))
    real = Path(os.path.realpath(path))
    seen: set[Path] = set()
    for start in (written, real):
        for folder in start.parents:
            if folder not in seen:
                seen.add(folder)
                yield folder
