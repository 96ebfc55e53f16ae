"""Postfix transport lines for the same domains."""

from __future__ import annotations

import argparse
import sys

from ..relaykit.postfix import transport
from . import EXIT_OK, load_config, verb_parser


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = verb_parser(
        subparsers, "transport", run, "Postfix transport(5) lines for every smtp forward's domains."
    )
    parser.add_argument("--tunnel", metavar="NAME", help="only this tunnel's forwards")


def run(args: argparse.Namespace) -> int:
    sys.stdout.write(transport(load_config(args), args.tunnel))
    return EXIT_OK
