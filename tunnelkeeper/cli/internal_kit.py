"""The internal host's kit: what its mail and name servers need, one file each, with a README."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..config import find_config, load
from ..relaykit.internal_kit import internal_kit
from ..relaykit.kit import write_kit
from . import EXIT_FAILURE, EXIT_OK, add_config_option, path_text


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "internal-kit",
        description="Write, for the INTERNAL host's admin, what its mail and name servers "
        "need so that a connection through the tunnel is never trusted as their own host's: "
        "Postfix, sendmail and BIND lines, one file each, with a README.",
    )
    add_config_option(parser)
    parser.add_argument(
        "--out",
        metavar="DIR",
        required=True,
        type=lambda t: Path(path_text(t)),
        help="folder to write",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    files = internal_kit(load(find_config(args.config)))
    try:
        written = write_kit(files, args.out)
    except OSError as exc:
        where = exc.filename or args.out
        print(f"tunnelkeeper: cannot write the kit at {where}: {exc.strerror}", file=sys.stderr)
        return EXIT_FAILURE
    for path in written:
        print(path)
    return EXIT_OK
