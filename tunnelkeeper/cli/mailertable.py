"""sendmail mailertable lines for every smtp forward's domains."""

from __future__ import annotations

import argparse
import sys

from ..config import find_config, load
from ..relaykit.mailertable import mailertable
from . import EXIT_OK, add_config_option


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("mailertable", description=__doc__)
    add_config_option(parser)
    parser.add_argument("--tunnel", metavar="NAME", help="only this tunnel's forwards")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    sys.stdout.write(mailertable(load(find_config(args.config)), args.tunnel))
    return EXIT_OK
