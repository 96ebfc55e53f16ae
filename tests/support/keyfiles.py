"""Encrypted copies of a client key and the passphrase files that open them."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from .sshd import SSH_KEYGEN


def encrypted_copy(key: Path, dest: Path, passphrase: str) -> Path:
    """`dest` (and `dest`.pub): `key` re-encrypted with `ssh-keygen -p -N PASSPHRASE`."""
    shutil.copyfile(key, dest)
    dest.chmod(0o600)
    shutil.copyfile(Path(f"{key}.pub"), Path(f"{dest}.pub"))
    subprocess.run(
        [SSH_KEYGEN, "-q", "-p", "-P", "", "-N", passphrase, "-f", str(dest)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return dest


def is_encrypted(key: Path) -> bool:
    """True when `ssh-keygen -y` cannot read the key without a passphrase."""
    proc = subprocess.run(
        [SSH_KEYGEN, "-y", "-P", "", "-f", str(key)], capture_output=True, timeout=30
    )
    return proc.returncode != 0


def passphrase_file(path: Path, passphrase: str, *, newline: bool = True) -> Path:
    """The passphrase in a 0600 file, with the trailing newline an editor leaves."""
    path.write_text(passphrase + ("\n" if newline else ""))
    path.chmod(0o600)
    return path
