"""The relay account's locked-down authorized_keys line."""

from __future__ import annotations

import argparse
import sys

from ..config import find_config, load
from ..relaykit.openssh import authorized_keys
from . import EXIT_OK, add_config_option


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "authorized-keys",
        description="The line for the relay account's authorized_keys: restrict, the "
        "configured listens and nothing else, then the public key from IDENTITY.pub.",
    )
    add_config_option(parser)
    parser.add_argument("--tunnel", metavar="NAME", help="only this tunnel")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    sys.stdout.write(authorized_keys(load(find_config(args.config)), args.tunnel))
    return EXIT_OK
