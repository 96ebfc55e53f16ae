"""Postfix for the tests, from the Debian package unpacked beside sendmail, and its postmap.

Postfix and sendmail cannot both be installed from Debian packages, so unless a postmap is on
PATH the package is fetched with `apt-get download` and unpacked with `dpkg-deb -x` into a cache
folder; LD_LIBRARY_PATH finds its libraries there. The `postmap` fixture is offered to every test
by tests/conftest.py.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.relaykit.conftest import need_tool, run

CACHE = Path(tempfile.gettempdir()) / "tunnelkeeper-test-postfix"


@dataclass
class Postmap:
    binary: Path
    env: dict[str, str] | None
    config_dir: Path

    def build(self, table: Path) -> None:
        run([self.binary, "-c", self.config_dir, f"hash:{table}"], env=self.env)

    def query(self, key: str, table: Path) -> str | None:
        proc = run(
            [self.binary, "-c", self.config_dir, "-q", key, f"hash:{table}"],
            env=self.env,
            check=False,
        )
        assert proc.returncode in (0, 1), proc.stderr  # 1: not found
        return proc.stdout.strip() if proc.returncode == 0 else None


def unpacked_postfix() -> Path:
    """The root of an unpacked postfix .deb, fetched once per machine."""
    root = CACHE / "root"
    if (root / "usr" / "sbin" / "postmap").exists():
        return root
    apt_get, dpkg_deb = need_tool("apt-get"), need_tool("dpkg-deb")
    download = CACHE / "download"
    shutil.rmtree(download, ignore_errors=True)
    download.mkdir(parents=True)
    proc = run([apt_get, "download", "postfix"], cwd=download, timeout=180, check=False)
    debs = sorted(download.glob("postfix_*.deb"))
    if proc.returncode != 0 or not debs:
        message = f"could not fetch the postfix package: {proc.stderr.strip()[-300:]}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    staging = CACHE / "staging"
    shutil.rmtree(staging, ignore_errors=True)
    run([dpkg_deb, "-x", debs[-1], staging], timeout=120)
    shutil.rmtree(root, ignore_errors=True)
    staging.rename(root)  # whole or not at all, for the next run's existence check
    return root


@pytest.fixture(scope="session")
def postmap(tmp_path_factory: pytest.TempPathFactory) -> Postmap:
    config_dir = tmp_path_factory.mktemp("postfix-etc")
    # postmap reads main.cf and insists on existing, distinct owner and group names.
    main_cf = config_dir / "main.cf"
    main_cf.write_text("compatibility_level = 3.6\nmail_owner = daemon\nsetgid_group = mail\n")
    # postmap pauses about 2 s on a main.cf written a moment ago (measured); back-date it.
    os.utime(main_cf, (time.time() - 3600, time.time() - 3600))
    installed = shutil.which("postmap")
    if installed:
        return Postmap(Path(installed), None, config_dir)
    root = unpacked_postfix()
    env = {**os.environ, "LD_LIBRARY_PATH": str(root / "usr" / "lib" / "postfix")}
    return Postmap(root / "usr" / "sbin" / "postmap", env, config_dir)
