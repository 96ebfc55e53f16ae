"""sendmail mailertable lines for every smtp forward's domains."""

from __future__ import annotations

import argparse
import sys

from ..relaykit.mailertable import mailertable
from . import EXIT_OK, load_config, verb_parser


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = verb_parser(subparsers, "mailertable", run, __doc__)
    parser.add_argument("--tunnel", metavar="NAME", help="only this tunnel's forwards")


def run(args: argparse.Namespace) -> int:
    sys.stdout.write(mailertable(load_config(args), args.tunnel))
    return EXIT_OK
