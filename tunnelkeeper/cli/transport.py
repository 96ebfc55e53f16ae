"""Postfix transport lines for the same domains."""

from __future__ import annotations

import argparse
import sys

from ..config import find_config, load
from ..relaykit.postfix import transport
from . import EXIT_OK, add_config_option


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "transport", description="Postfix transport(5) lines for every smtp forward's domains."
    )
    add_config_option(parser)
    parser.add_argument("--tunnel", metavar="NAME", help="only this tunnel's forwards")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    sys.stdout.write(transport(load(find_config(args.config)), args.tunnel))
    return EXIT_OK
