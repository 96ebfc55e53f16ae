"""sendmail mailertable lines for every smtp forward's domains."""

from __future__ import annotations

import argparse

from . import add_config_option


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("mailertable", description=__doc__)
    add_config_option(parser)
    parser.add_argument("--tunnel", metavar="NAME", help="only this tunnel's forwards")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    raise NotImplementedError  # relay kit: see issue 4
