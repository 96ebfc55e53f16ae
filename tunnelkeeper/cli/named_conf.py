"""BIND secondary-zone stanzas for every dns forward's zones."""

from __future__ import annotations

import argparse
import sys

from ..relaykit.bind import named_conf
from . import EXIT_OK, load_config, verb_parser


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = verb_parser(
        subparsers,
        "named-conf",
        run,
        "BIND secondary-zone stanzas that pull every dns forward's zones through "
        "the tunnel (BIND 9.16 and later).",
    )
    parser.add_argument(
        "--legacy", action="store_true", help="write type slave / masters for BIND before 9.16"
    )
    parser.add_argument("--tunnel", metavar="NAME", help="only this tunnel's forwards")


def run(args: argparse.Namespace) -> int:
    config = load_config(args)
    sys.stdout.write(named_conf(config, args.tunnel, legacy=args.legacy))
    return EXIT_OK
