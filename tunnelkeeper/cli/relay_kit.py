"""All relay files and a README, into a folder."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import ConfigError
from ..relaykit.kit import relay_kit, write_kit
from . import EXIT_FAILURE, EXIT_OK, load_config, path_text, verb_parser
from .authorized_keys import add_sshd_option
from .mx_records import FLAGS


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = verb_parser(
        subparsers,
        "relay-kit",
        run,
        "Write every file the relay's admin needs, one each, with a README that "
        "says where each goes and how to test it.",
    )
    add_out_option(parser)
    parser.add_argument("--tunnel", metavar="NAME", help="only this tunnel")
    parser.add_argument(
        "--internal-host", metavar="NAME", help="also write MX records with this internal host"
    )
    parser.add_argument(
        "--relay-host", metavar="NAME", help="the relay's MX name (default: its SSH host)"
    )
    add_sshd_option(parser)


def run(args: argparse.Namespace) -> int:
    config = load_config(args)
    try:
        files = relay_kit(
            config,
            args.tunnel,
            internal_host=args.internal_host,
            relay_host=args.relay_host,
            sshd=args.sshd,
        )
    except ConfigError as exc:
        if exc.key not in FLAGS:
            raise
        if exc.key == "relay_host" and args.relay_host is None:  # it came from the tunnel
            raise ConfigError(
                f"the MX records name the relay by its tunnel's host, and {exc.detail}: "
                "give --relay-host NAME"
            ) from None
        raise ConfigError(f"{FLAGS[exc.key]}: {exc.detail}") from None
    return write_files(files, args.out)


def add_out_option(parser: argparse.ArgumentParser) -> None:
    """`--out DIR`, the folder a kit is written into."""
    parser.add_argument(
        "--out",
        metavar="DIR",
        required=True,
        type=lambda t: Path(path_text(t)),
        help="folder to write",
    )


def write_files(files: dict[str, str], out: Path) -> int:
    """Write a kit's files into `out` and list them; a folder that cannot be written is one
    line on stderr (exit 1)."""
    try:
        written = write_kit(files, out)
    except OSError as exc:
        where = exc.filename or out
        print(f"tunnelkeeper: cannot write the kit at {where}: {exc.strerror}", file=sys.stderr)
        return EXIT_FAILURE
    for path in written:
        print(path)
    return EXIT_OK
