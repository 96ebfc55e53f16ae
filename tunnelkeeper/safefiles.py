"""Files that hold secrets: written without following symlinks, replaced whole, read strictly."""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from pathlib import Path

from .errors import KeyFileError

# O_NOFOLLOW: a symlink planted at the path makes the open fail (ELOOP) instead of writing
# wherever it points.
_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def write_new(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Create `path` with `data`; fails (FileExistsError) if anything, a symlink too, is there.

    Raises OSError.
    """
    fd = os.open(path, _NEW, mode)
    try:
        os.fchmod(fd, mode)  # the umask may have taken bits away; never adds any here
        _write_all(fd, data)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            path.unlink()
        raise
    os.close(fd)


def replace(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Replace `path` whole: a temp file in the same folder, then a rename over it.

    A reader sees the old file or the new one, never a truncated one, and a symlink at `path`
    is replaced itself, never followed. Raises OSError.
    """
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    write_new(tmp, data, mode)
    try:
        os.rename(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
    os.fsync(fd)  # the rename must not reach the disk before the data


def read_secret(path: Path, what: str) -> str:
    """The text of a secret file without one trailing newline.

    Raises KeyFileError naming the file when it is missing, not a regular file, accessible by
    group or others, empty, or not UTF-8.
    """
    try:
        # O_NONBLOCK: a FIFO planted there must not hang us (a regular file reads the same).
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise KeyFileError(f"{what} not found", path=str(path)) from None
    except OSError as exc:
        raise KeyFileError(f"cannot read {what}: {exc.strerror}", path=str(path)) from None
    st = os.fstat(fd)  # the file opened, not whatever the path names by now
    if not stat.S_ISREG(st.st_mode):  # a folder, say: fdopen itself would refuse it
        os.close(fd)
        raise KeyFileError(f"{what} is not a regular file", path=str(path))
    with os.fdopen(fd, "rb") as file:
        if st.st_mode & 0o077:
            raise KeyFileError(
                f"{what} is accessible by group or others (mode {stat.S_IMODE(st.st_mode):04o})"
                f"; run: chmod 600 {path}",
                path=str(path),
            )
        raw = file.read(64 * 1024)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise KeyFileError(f"{what} is not UTF-8 text", path=str(path)) from None
    text = text.removesuffix("\n")
    if not text:
        raise KeyFileError(f"{what} is empty", path=str(path))
    return text
