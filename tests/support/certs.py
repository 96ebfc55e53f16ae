"""OpenSSH user certificates for tests: a user CA, certificates it signs, a relay that trusts it."""

from __future__ import annotations

import subprocess
from pathlib import Path

from .sshd import SSH_KEYGEN, Sshd, keygen


class UserCa:
    """An ed25519 user CA in `root` that signs client keys with `ssh-keygen -s`."""

    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.key = keygen(root / "user_ca", "ed25519")
        self.pub = Path(f"{self.key}.pub")

    def sign(
        self,
        key: Path,
        principal: str,
        validity: str = "-5m:+1h",
        *,
        out: Path | None = None,
        identity: str = "tunnelkeeper-test",
    ) -> Path:
        """Sign `key`.pub for `principal`, valid for `validity` (`ssh-keygen -V`: "-5m:+1h",
        or "20200101:20200102" for one long expired). Writes KEY-cert.pub (ssh-keygen's
        name) and, with `out`, moves it there. Returns the certificate's path."""
        pub = Path(f"{key}.pub")
        argv = [SSH_KEYGEN, "-q", "-s", str(self.key), "-I", identity, "-n", principal]
        subprocess.run(
            [*argv, "-V", validity, str(pub)],
            check=True,
            capture_output=True,
            timeout=30,
        )
        cert = Path(f"{key}-cert.pub")
        if out is not None:
            cert.replace(out)
            cert = out
        return cert

    def trust_in(self, sshd: Sshd) -> None:
        """The relay accepts certificates from this CA whose principals name the account
        (sshd's default with no AuthorizedPrincipalsFile), and no plain key at all: its
        authorized_keys is emptied, so only a certificate can log in. Call before start()."""
        sshd.extra_config += f"TrustedUserCAKeys {self.pub}\n"
        sshd.authorized_keys.write_text("")


def describe(cert: Path) -> str:
    """`ssh-keygen -L -f CERT`: the certificate in words (principals, validity)."""
    return subprocess.run(
        [SSH_KEYGEN, "-L", "-f", str(cert)], capture_output=True, text=True, timeout=30
    ).stdout
