"""The internal host's kit: what its mail and name servers need, one file each, with a README."""

from __future__ import annotations

import argparse

from ..relaykit.internal_kit import internal_kit
from . import load_config, verb_parser
from .relay_kit import add_out_option, write_files


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = verb_parser(
        subparsers,
        "internal-kit",
        run,
        "Write, for the INTERNAL host's admin, what its mail and name servers need so that a "
        "connection through the tunnel is never trusted as their own host's: Postfix, "
        "sendmail and BIND lines, one file each, with a README.",
    )
    add_out_option(parser)


def run(args: argparse.Namespace) -> int:
    files = internal_kit(load_config(args))
    return write_files(files, args.out)
