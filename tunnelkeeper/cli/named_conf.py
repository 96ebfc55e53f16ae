"""BIND secondary-zone stanzas for every dns forward's zones."""

from __future__ import annotations

import argparse
import sys

from ..config import find_config, load
from ..relaykit.bind import named_conf
from . import EXIT_OK, add_config_option


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "named-conf",
        description="BIND secondary-zone stanzas that pull every dns forward's zones through "
        "the tunnel (BIND 9.16 and later).",
    )
    add_config_option(parser)
    parser.add_argument(
        "--legacy", action="store_true", help="write type slave / masters for BIND before 9.16"
    )
    parser.add_argument("--tunnel", metavar="NAME", help="only this tunnel's forwards")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    config = load(find_config(args.config))
    sys.stdout.write(named_conf(config, args.tunnel, legacy=args.legacy))
    return EXIT_OK
