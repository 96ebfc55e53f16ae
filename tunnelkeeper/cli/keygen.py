"""Make a new RSA key pair for the relay account (private file mode 0600, never via a symlink)."""

from __future__ import annotations

import argparse
import getpass
import os
import socket
import sys
from pathlib import Path

from .. import config, safefiles, ssh
from ..errors import ConfigError
from . import EXIT_FAILURE, EXIT_OK, path_text, verb_parser

DEFAULT_BITS = 4096


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = verb_parser(subparsers, "keygen", run, __doc__)
    parser.add_argument(
        "--out",
        metavar="PATH",
        type=path_text,
        help="private key path (default: keys/tunnelkeeper_rsa beside the config)",
    )
    parser.add_argument(
        "--bits",
        type=int,
        default=DEFAULT_BITS,
        metavar="N",
        help=f"RSA key size (default {DEFAULT_BITS}; at least 2048)",
    )
    parser.add_argument(
        "--force", action="store_true", help="replace an existing key (never through a symlink)"
    )
    parser.add_argument(
        "--passphrase-file",
        metavar="PATH",
        type=path_text,
        help="encrypt the private key with the passphrase in this file (mode 0600; one "
        "trailing newline is not part of it)",
    )


def run(args: argparse.Namespace) -> int:
    if args.bits < 2048 or args.bits > 16384:
        print("tunnelkeeper: --bits must be from 2048 to 16384", file=sys.stderr)
        return 2
    passphrase = None
    if args.passphrase_file:
        passphrase = safefiles.read_secret(Path(args.passphrase_file), "passphrase file")
    cfg = _config_if_any(args.config)
    if args.out:
        out = Path(args.out)
    elif cfg is not None:
        out = cfg.path.parent / "keys" / "tunnelkeeper_rsa"
    else:
        out = Path("keys") / "tunnelkeeper_rsa"
    pub = Path(str(out) + ".pub")
    for path in (out, pub):
        # lexists: a dangling symlink is something too, and writing "to" it would create its
        # target wherever it points.
        try:
            is_link = path.is_symlink()
        except OSError as exc:  # a folder on the way we may not look into
            print(f"tunnelkeeper: cannot use {path}: {exc.strerror}", file=sys.stderr)
            return EXIT_FAILURE
        if is_link:
            print(
                f"tunnelkeeper: {path} is a symbolic link; keygen never writes through one: "
                "remove it, or give --out a path of its own",
                file=sys.stderr,
            )
            return EXIT_FAILURE
        if not args.force and os.path.lexists(path):
            print(
                f"tunnelkeeper: {path} already exists; keeping it (use --force to replace it)",
                file=sys.stderr,
            )
            return EXIT_FAILURE
    comment = f"tunnelkeeper@{socket.gethostname()}:{getpass.getuser()}"
    key = ssh.generate_rsa_key(args.bits, comment, passphrase)
    write = safefiles.replace if args.force else safefiles.write_new
    try:
        out.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        write(out, key.private_openssh, 0o600)
        write(pub, (key.public_line + "\n").encode("ascii"), 0o644)
    except OSError as exc:
        print(f"tunnelkeeper: cannot write {exc.filename}: {exc.strerror}", file=sys.stderr)
        return EXIT_FAILURE
    encrypted = ", encrypted" if passphrase is not None else ""
    print(f"private key: {out} (mode 0600{encrypted})")
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


def _authorized_keys(cfg: config.Config, key_path: Path) -> str:
    """The relay kit's authorized_keys text for the tunnels that use this key."""
    from ..relaykit import openssh

    names = [t.name for t in cfg.tunnel if t.identity.resolve() == key_path.resolve()]
    return "".join(openssh.authorized_keys(cfg, name) for name in names)
