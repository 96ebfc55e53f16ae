"""Make a new RSA key pair for the relay account (private file mode 0600)."""

from __future__ import annotations

import argparse
import getpass
import os
import socket
import sys
from pathlib import Path

from .. import config, ssh
from ..errors import ConfigError
from . import EXIT_FAILURE, EXIT_OK, add_config_option

DEFAULT_BITS = 4096


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("keygen", description=__doc__)
    add_config_option(parser)
    parser.add_argument(
        "--out",
        metavar="PATH",
        help="private key path (default: keys/tunnelkeeper_rsa beside the config)",
    )
    parser.add_argument(
        "--bits",
        type=int,
        default=DEFAULT_BITS,
        metavar="N",
        help=f"RSA key size (default {DEFAULT_BITS}; at least 2048)",
    )
    parser.add_argument("--force", action="store_true", help="overwrite an existing key")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.bits < 2048 or args.bits > 16384:
        print("tunnelkeeper: --bits must be from 2048 to 16384", file=sys.stderr)
        return 2
    cfg = _config_if_any(args.config)
    if args.out:
        out = Path(args.out)
    elif cfg is not None:
        out = cfg.path.parent / "keys" / "tunnelkeeper_rsa"
    else:
        out = Path("keys") / "tunnelkeeper_rsa"
    pub = Path(str(out) + ".pub")
    if not args.force and (out.exists() or pub.exists()):
        print(
            f"tunnelkeeper: {out} already exists; keeping it (use --force to replace it)",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    comment = f"tunnelkeeper@{socket.gethostname()}:{getpass.getuser()}"
    key = ssh.generate_rsa_key(args.bits, comment)
    try:
        _write_private(out, key.private_openssh, args.force)
        pub.write_text(key.public_line + "\n", encoding="ascii")
    except OSError as exc:
        print(f"tunnelkeeper: cannot write {exc.filename}: {exc.strerror}", file=sys.stderr)
        return EXIT_FAILURE
    print(f"private key: {out} (mode 0600)")
    print(f"public key:  {pub}")
    print(f"fingerprint: {key.fingerprint}")
    if cfg is not None:
        text = _authorized_keys(cfg, out)
        if text:
            print("for the relay account's ~/.ssh/authorized_keys:")
            print(text, end="")
    return EXIT_OK


def _config_if_any(explicit: str | None) -> config.Config | None:
    try:
        path = config.find_config(explicit)
    except ConfigError:
        if explicit:
            raise
        return None
    return config.load(path)


def _write_private(path: Path, data: bytes, force: bool) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if force else os.O_EXCL)
    fd = os.open(path, flags, 0o600)
    try:
        os.fchmod(fd, 0o600)  # an overwritten file keeps its old mode otherwise
        os.write(fd, data)
    finally:
        os.close(fd)


def _authorized_keys(cfg: config.Config, key_path: Path) -> str:
    """The relay kit's authorized_keys text for the tunnels that use this key."""
    from ..relaykit import openssh

    names = [t.name for t in cfg.tunnel if t.identity.resolve() == key_path.resolve()]
    return "".join(openssh.authorized_keys(cfg, name) for name in names)
