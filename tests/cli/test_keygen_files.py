"""keygen never follows a symlink, replaces keys whole, and encrypts with --passphrase-file."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from tests.conftest import need
from tests.support.sshd import SSH_KEYGEN
from tunnelkeeper.cli import main

BITS = ["--bits", "2048"]


def keygen(*args: str) -> int:
    return main(["keygen", *BITS, *args])


def test_dangling_pub_symlink_is_refused(fdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out, victim = fdir / "id_rsa", fdir / "victim"
    Path(f"{out}.pub").symlink_to(victim)
    assert keygen("--out", str(out)) == 1
    err = capsys.readouterr().err
    assert f"{out}.pub" in err and "symbolic link" in err
    assert not victim.exists() and not out.exists()


def test_dangling_private_symlink_is_refused(
    fdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, victim = fdir / "id_rsa", fdir / "victim"
    out.symlink_to(victim)
    assert keygen("--out", str(out)) == 1
    assert f"{out}" in capsys.readouterr().err
    assert not victim.exists()


@pytest.mark.parametrize("which", ["private", "public"])
def test_force_never_writes_through_a_symlink(
    fdir: Path, which: str, capsys: pytest.CaptureFixture[str]
) -> None:
    out, victim = fdir / "id_rsa", fdir / "victim"
    victim.write_text("precious\n")
    victim.chmod(0o644)
    link = out if which == "private" else Path(f"{out}.pub")
    link.symlink_to(victim)
    assert keygen("--out", str(out), "--force") == 1
    err = capsys.readouterr().err
    assert str(link) in err and "symbolic link" in err
    assert victim.read_text() == "precious\n"
    assert stat.S_IMODE(victim.stat().st_mode) == 0o644
    assert link.is_symlink()


def test_force_replaces_the_key_whole(fdir: Path) -> None:
    """A supervisor reading the key during --force sees the old file or the new, never half."""
    out = fdir / "id_rsa"
    assert keygen("--out", str(out)) == 0
    old_bytes, old_inode = out.read_bytes(), out.stat().st_ino
    with out.open("rb") as reader:  # opened before, read after: what a racing reader gets
        assert keygen("--out", str(out), "--force") == 0
        assert reader.read() == old_bytes
    assert out.stat().st_ino != old_inode and out.read_bytes() != old_bytes
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert sorted(p.name for p in fdir.iterdir()) == ["id_rsa", "id_rsa.pub"]


def test_passphrase_file_encrypts_the_key(fdir: Path) -> None:
    need(SSH_KEYGEN)
    out, secret = fdir / "id_rsa", fdir / "passphrase"
    secret.write_text("correct horse\n")  # one trailing newline is not part of it
    secret.chmod(0o600)
    assert keygen("--out", str(out), "--passphrase-file", str(secret)) == 0
    assert stat.S_IMODE(out.stat().st_mode) == 0o600

    def public(passphrase: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [SSH_KEYGEN, "-y", "-P", passphrase, "-f", str(out)],
            capture_output=True,
            text=True,
            timeout=30,
        )

    good = public("correct horse")
    assert good.returncode == 0, good.stderr
    assert good.stdout.split()[:2] == Path(f"{out}.pub").read_text().split()[:2]
    assert public("").returncode != 0
    assert public("correct horse\n").returncode != 0


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644])
def test_readable_passphrase_file_is_refused(
    fdir: Path, mode: int, capsys: pytest.CaptureFixture[str]
) -> None:
    out, secret = fdir / "id_rsa", fdir / "passphrase"
    secret.write_text("correct horse\n")
    secret.chmod(mode)
    assert keygen("--out", str(out), "--passphrase-file", str(secret)) == 2
    err = capsys.readouterr().err
    assert str(secret) in err and "chmod 600" in err
    assert not out.exists()


@pytest.mark.parametrize("content", [None, b"", b"\n", b"\xff\xfe"])
def test_unusable_passphrase_file_is_refused(
    fdir: Path, content: bytes | None, capsys: pytest.CaptureFixture[str]
) -> None:
    out, secret = fdir / "id_rsa", fdir / "passphrase"
    if content is not None:
        fd = os.open(secret, os.O_WRONLY | os.O_CREAT, 0o600)
        os.write(fd, content)
        os.close(fd)
    assert keygen("--out", str(out), "--passphrase-file", str(secret)) == 2
    assert str(secret) in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("kind", ["folder", "fifo"])
def test_a_passphrase_file_that_is_no_file_is_refused(
    fdir: Path, kind: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A folder or a FIFO where the passphrase should be: exit 2 naming it, no traceback and
    no hang."""
    out, secret = fdir / "id_rsa", fdir / "passphrase"
    if kind == "folder":
        secret.mkdir(mode=0o700)
    else:
        os.mkfifo(secret, 0o600)
    assert keygen("--out", str(out), "--passphrase-file", str(secret)) == 2
    err = capsys.readouterr().err
    assert str(secret) in err and "not a regular file" in err
    assert not out.exists()
